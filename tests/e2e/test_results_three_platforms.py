"""The demo's scikit-learn sweep on three platforms gives one results table.

The repository's demo project (demo/experiment.json: 3 x 2 = 6 jobs, each writing the accuracy
it measured to `$CALIBAN_OUTPUT_DIR/metrics.json`) is built once and pushed to the local
registry, then run at the same time, as a user types it:

- `caliban run` on the local dockerd (each job's output folder on the host);
- `caliban cloud --output_bucket gs://BUCKET/runs` on the Vertex AI emulator, which runs the
  pushed image on the local dockerd with the buckets folder at /gcs;
- `caliban cluster job submit --output_bucket gs://BUCKET/runs` on the Kubernetes emulator,
  whose pods get the same folder through the GKE Cloud Storage FUSE CSI volume.

`caliban results` reads the two remote groups' metrics through google-cloud-storage from the
storage emulator serving that buckets folder, with a key every Google stand-in trusts. The three
tables are equal once the columns that say where a job ran are dropped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from caliban_flows.state.results import PLATFORM_COLUMNS
from devtools.k8s_emulator import K8sEmulator
from devtools.storage_emulator import StorageEmulator
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, caliban_runner
from tests.e2e.test_vertex_e2e import make_cli

CHECKOUT = Path(__file__).resolve().parents[2]
BUCKET = "sweeps"
JOBS = 6  # demo/experiment.json: C x seed = 3 x 2
SWEEP = ("--experiment_config", "experiment.json", "trainer.train")
PLATFORMS = ("local", "vertex", "kubernetes")


@pytest.fixture(scope="module")
def cli(tmp_path_factory, caliban_home, docker_client):
    """`caliban ...` typed in a copy of demo/, reaching the three emulators: Vertex AI and the
    Kubernetes cluster run real containers; both, and the storage emulator, share one folder
    of buckets."""
    root = tmp_path_factory.mktemp("three-platforms")
    project = root / "demo"
    shutil.copytree(CHECKOUT / "demo", project)
    buckets = root / "buckets"
    (buckets / BUCKET).mkdir(parents=True)  # a bucket exists before jobs write to it
    with (
        StorageEmulator(buckets) as storage,
        VertexEmulator(run_containers=True, workers=JOBS, buckets=buckets) as vertex,
        K8sEmulator(run_containers=True, workers=JOBS, buckets=buckets) as cluster,
    ):
        key = storage.new_key(root / "key.json")
        vertex.trust(key)  # one service account for Vertex AI and Cloud Storage, as on Google
        env = {
            **make_cli(project, caliban_home, vertex).env,
            **storage.client_env(key),
            "KUBECONFIG": str(cluster.write_kubeconfig(root / "kubeconfig")),
            # --wait asks each platform how its jobs are every second (default 10 s)
            "CALIBAN_POLL_SECONDS": "1",
            "CALIBAN_VERTEX_POLL_SECONDS": "1",
        }
        run = caliban_runner(project, env)
        run.storage, run.key = storage, key
        yield run


@pytest.fixture(scope="module")
def groups(cli) -> dict[str, str]:
    """The sweep submitted to each platform, in a group of its own, each followed to its end."""
    built = cli("build", "--nogpu", "--push", "trainer.train", timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    image = built.stdout.strip().splitlines()[-1]
    tag = uuid.uuid4().hex[:6]
    xgroups = {platform: f"three-{tag}-{platform}" for platform in PLATFORMS}
    bucket = ("--output_bucket", f"gs://{BUCKET}/runs")
    commands = {
        "local": ("run", "--image_id", image, "--parallel", str(JOBS)),
        "vertex": ("cloud", "--image_tag", image, "--wait", *bucket),
        "kubernetes": ("cluster", "job", "submit", "--image_tag", image, "--wait", *bucket),
    }

    def start(platform: str) -> subprocess.Popen:
        argv = [*commands[platform], "--nogpu", "--xgroup", xgroups[platform], *SWEEP]
        pipe = subprocess.PIPE
        return subprocess.Popen([str(BIN / "caliban"), *argv], cwd=cli.cwd, env=cli.env,
                                stdout=pipe, stderr=pipe, text=True)  # fmt: skip

    running = {platform: start(platform) for platform in PLATFORMS}  # all at once
    for platform, process in running.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, f"{platform}: {out}{err}"
        assert f"{JOBS} jobs succeeded" in err, f"{platform}: {err}"
    return xgroups


def results(cli, xgroup: str) -> list[dict]:
    done = cli("results", "--xgroup", xgroup, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def tables(cli, groups) -> dict[str, list[dict]]:
    return {platform: results(cli, xgroup) for platform, xgroup in groups.items()}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_remote_metrics_come_from_cloud_storage(cli, groups, tables, platform):
    """The demo prints no CALIBAN_METRICS line: a remote job's accuracy can only come from the
    bucket. Once the group is settled (the first `caliban results` after the jobs end, in
    `tables`, also publishes its artifacts), reading it is one list call and one download per
    job."""
    before = cli.storage.calls()
    rows = results(cli, groups[platform])
    served = cli.storage.calls() - before
    assert {r["accuracy"] is not None for r in rows} == {True}
    if platform == "local":
        assert not served, served
    else:
        assert (served["objects.list"], served["objects.media"]) == (1, JOBS), served


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_platform_reports_the_sweeps_args_and_the_accuracy_its_jobs_measured(
    cli, tables, platform
):
    rows = tables[platform]
    assert len(rows) == JOBS
    assert {(r["state"], r["metrics"], r["attempt"]) for r in rows} == {("SUCCEEDED", "final", 1)}
    assert sorted((r["C"], r["seed"]) for r in rows) == [
        (c, s) for c in (0.01, 0.1, 1.0) for s in (0, 1)
    ]
    for row in rows:  # typed as in experiment.json, not the strings on the command line
        assert isinstance(row["C"], float) and isinstance(row["seed"], int)
        assert row["max_iter"] == 300 and isinstance(row["max_iter"], int)
        assert 0.5 < row["accuracy"] <= 1.0  # a real classifier's score on the digits
        assert 0.5 < row["train_accuracy"] <= 1.0
        assert row["platform"] == platform
    local = str(Path(cli.env["CALIBAN_HOME"]) / "outputs")  # `caliban run`'s default root
    where = local if platform == "local" else f"gs://{BUCKET}/runs/"
    assert all(r["output"].startswith(where) for r in rows), [r["output"] for r in rows]


def test_the_three_tables_are_one_table_without_the_platform_columns(tables):
    """Names too: each platform numbers the sweep's jobs in experiment.json's order."""

    def plain(rows: list[dict]) -> list[dict]:
        kept = [{k: v for k, v in r.items() if k not in PLATFORM_COLUMNS} for r in rows]
        return sorted(kept, key=lambda r: (r["C"], r["seed"]))

    local, vertex, kubernetes = (plain(tables[p]) for p in PLATFORMS)
    assert local == vertex == kubernetes
    assert len({r["accuracy"] for r in local}) > 1  # the args changed what the jobs found


def test_pull_copies_the_vertex_jobs_metrics_through_cloud_storage(cli, groups, tables, tmp_path):
    dest = tmp_path / "pulled"
    before = cli.storage.calls()
    done = cli("pull", "--xgroup", groups["vertex"], str(dest))
    assert done.returncode == 0, done.stderr
    served = cli.storage.calls() - before
    assert served["objects.list"] >= 1 and served["objects.media"] >= JOBS, served
    pulled = sorted(dest.glob("*/1/metrics.json"))
    assert len(pulled) == JOBS
    accuracies = sorted(json.loads(p.read_text())["accuracy"] for p in pulled)
    assert accuracies == sorted(r["accuracy"] for r in tables["vertex"])


def test_a_bucket_that_refuses_caliban_hides_only_its_jobs_metrics(cli, groups, tables):
    cli.storage.revoke(cli.key)  # the service account lost its access to the bucket
    try:
        done = cli("results", "--xgroup", groups["vertex"], "--format", "json")
    finally:
        cli.storage.trust(cli.key)
    assert done.returncode == 1, done.stderr  # after the whole table, as for a platform down
    rows = json.loads(done.stdout)
    assert [r["state"] for r in rows] == ["SUCCEEDED"] * JOBS  # Vertex still answered
    assert all(r["metrics"] == "" and "accuracy" not in r for r in rows)
    warning = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"gs://{BUCKET}" in warning[0], done.stderr
    assert "those jobs show no metrics" in warning[0] and "Traceback" not in done.stderr
