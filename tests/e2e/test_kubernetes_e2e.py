"""`caliban cluster job submit` end to end against the Kubernetes emulator, as a user types it.

The real `kubernetes` client in `caliban` reads a kubeconfig that points at
`devtools.k8s_emulator` on loopback. With run_containers=True the emulator pulls the pushed
image from the local registry and runs each Job's pod on the local dockerd, so a Job's
conditions come from a real program's exit code. Prefect is the real embedded server.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from devtools.k8s_emulator import K8sEmulator
from tests.conftest import BIN, caliban_runner, wait_for
from tests.e2e.test_vertex_e2e import api_url, flow_run_state, status
from tests.prefect_http import auth_headers

TRAIN = """\
import sys, time
args = sys.argv[1:]
print("training with", args, flush=True)
if "--sleep" in args:
    time.sleep(float(args[args.index("--sleep") + 1]))
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
IMAGE = "127.0.0.1:5000/caliban-tests/k8s-prebuilt:1"  # never pulled in simulated mode
SUBMIT = ("cluster", "job", "submit", "--nogpu")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (tmp_path / "requirements.txt").write_text("")
    return tmp_path


def make_cli(project: Path, home: Path, emulator: K8sEmulator):
    kubeconfig = emulator.write_kubeconfig(project.parent / "kubeconfig", namespace="research")
    env = {
        **os.environ,
        "CALIBAN_HOME": str(home),
        "HOME": str(project.parent / "home"),
        "KUBECONFIG": str(kubeconfig),
        "CALIBAN_POLL_SECONDS": "0.2",
        "CALIBAN_REGISTRY": "127.0.0.1:5000",
        "PROJECT_ID": "",
    }
    env.pop("PREFECT_API_URL", None)
    return caliban_runner(project, env)


@pytest.fixture
def simulated(caliban_home, project):
    with K8sEmulator(run_containers=False, sim_step=0.05, seed=7) as emulator:
        yield emulator, make_cli(project, caliban_home, emulator)


@pytest.fixture
def real(caliban_home, project):
    with K8sEmulator(run_containers=True, workers=4) as emulator:
        yield emulator, make_cli(project, caliban_home, emulator)


def sweep(project: Path, n: int) -> None:
    (project / "exp.json").write_text(json.dumps({"i": list(range(n))}))


def submit_held(simulated, project: Path, n: int, prefix: str, *flags: str):
    """A sweep of `n` jobs submitted while the emulator holds Jobs running: (xgroup, result)."""
    emulator, cli = simulated
    emulator.hold(True)
    sweep(project, n)
    xgroup = f"{prefix}-{uuid.uuid4().hex[:8]}"
    done = cli(*SUBMIT, "--image_tag", IMAGE, "--xgroup", xgroup, *flags, "--experiment_config",
               "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return xgroup, done


def group_jobs(emulator: K8sEmulator, xgroup: str) -> list[dict]:
    from caliban_flows.spec import k8s_job as kj

    mine = kj.xgroup_id(xgroup)
    return [j for j in emulator.jobs() if j["metadata"]["labels"].get(kj.XGROUP_ID_LABEL) == mine]


def ended(job: dict, kind: str = "Complete") -> bool:
    """The Job controller's condition is set (it comes after the pod's own end)."""
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conditions)


def test_a_sweep_runs_the_pushed_image_on_the_cluster_then_status_settles(real, project):
    emulator, cli = real
    xgroup = f"kx-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"exit": [0, 3]}')
    done = cli(*SUBMIT, "--xgroup", xgroup, "--experiment_config", "exp.json",
               "trainer.train", "--", "--tag", "x")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 jobs submitted to Kubernetes" in done.stderr
    jobs = group_jobs(emulator, xgroup)
    [image] = {j["spec"]["template"]["spec"]["containers"][0]["image"] for j in jobs}
    assert image.startswith("127.0.0.1:5000/caliban/")  # built here, pushed, pulled by the pod
    assert {j["metadata"]["namespace"] for j in jobs} == {"research"}  # the context's namespace

    rows = wait_for(lambda: (r := status(cli, xgroup)) and all(
        x["state"] in ("SUCCEEDED", "FAILED") for x in r) and r, timeout=180)  # fmt: skip
    assert [r["args"] for r in rows] == [
        ["--tag", "x", "--exit", "0"],
        ["--tag", "x", "--exit", "3"],
    ]
    assert [r["state"] for r in rows] == ["SUCCEEDED", "FAILED"]
    assert [r["exit_code"] for r in rows] == [0, 3]
    assert rows[1]["detail"].startswith("exit code 3")
    assert all(
        r["platform"] == "kubernetes" and r["remote_id"].startswith("research/") for r in rows
    )
    assert flow_run_state(cli, rows[0]["flow_run_id"]) == "FAILED"  # settled: one job failed

    logs = cli("cluster", "job", "logs", rows[1]["remote_id"])
    assert logs.returncode == 0, logs.stderr
    assert "training with ['--tag', 'x', '--exit', '3']" in logs.stdout

    again = cli(*SUBMIT, "--xgroup", xgroup, "--experiment_config", "exp.json",
                "trainer.train", "--", "--tag", "x")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert sorted(emulator.creates_by_key().values()) == [1, 1]  # nothing submitted twice

    (project / "trainer" / "train.py").write_text("print('fixed')\n")
    redo = cli("resubmit", "--xgroup", xgroup, "--yes")
    assert redo.returncode == 0, redo.stdout + redo.stderr
    rows = wait_for(lambda: (r := status(cli, xgroup)) and all(
        x["state"] == "SUCCEEDED" for x in r) and r, timeout=180)  # fmt: skip
    assert [(r["attempt"], r["attempts"]) for r in rows] == [(1, 1), (2, 2)]


def test_dry_run_prints_the_job_manifests_and_export_writes_them(simulated, project):
    emulator, cli = simulated
    sweep(project, 2)
    done = cli(*SUBMIT, "--dry_run", "--image_tag", IMAGE, "--min_mem", "2048", "--export",
               "job.yaml", "--experiment_config", "exp.json", "trainer.train", "--",
               "--hf-token", "tok-3x")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tok-3x" not in done.stdout  # printed: a reference; the exported files hold it
    # Each job's lines, then its manifest as a YAML document after "---".
    chunks = done.stdout.split("\n---\n")[1:]
    manifests = [yaml.safe_load(chunk.split("\n\n", 1)[0]) for chunk in chunks]
    assert [m["kind"] for m in manifests] == ["Job", "Job"]
    assert [m["spec"]["template"]["spec"]["containers"][0]["image"] for m in manifests] == [
        IMAGE, IMAGE]  # fmt: skip
    assert "Nothing was" in done.stdout and emulator.jobs() == []
    exported = [yaml.safe_load((project / f"job_{i}.yaml").read_text()) for i in (0, 1)]
    assert [m["spec"]["template"]["spec"]["containers"][0]["args"] for m in exported] == [
        ["--hf-token", "tok-3x", "--i", "0"], ["--hf-token", "tok-3x", "--i", "1"]]  # fmt: skip
    resources = exported[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "31000m", "memory": "2048Mi"}}

    # An exported manifest goes back in through submit_file, checked first.
    sent = cli("cluster", "job", "submit_file", "job_0.yaml")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("submitted job: research/")
    assert len(emulator.jobs()) == 1
    bad = dict(exported[1])
    bad["metadata"] = {**bad["metadata"], "labels": {"bad": "-not a value-"}}
    (project / "bad.yaml").write_text(yaml.safe_dump(bad))
    refused = cli("cluster", "job", "submit_file", "bad.yaml")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "422" in refused.stderr
    assert len(emulator.jobs()) == 1  # nothing half-submitted


def test_a_job_that_ended_while_nothing_watched_shows_its_truth(simulated, project):
    emulator, cli = simulated
    emulator.hold(True)
    xgroup = f"kn-{uuid.uuid4().hex[:8]}"
    done = cli(*SUBMIT, "--image_tag", IMAGE, "--xgroup", xgroup, "trainer.train")
    assert done.returncode == 0, done.stderr
    row = wait_for(lambda: (r := status(cli, xgroup)[0])["state"] == "RUNNING" and r)
    assert flow_run_state(cli, row["flow_run_id"]) == "RUNNING"
    emulator.set_outcome(row["remote_id"], "Failed", exit_code=7)
    emulator.hold(False)  # the job ends; nothing of ours is watching
    wait_for(lambda: ended(group_jobs(emulator, xgroup)[0], "Failed"))
    after = status(cli, xgroup)[0]
    assert (after["state"], after["exit_code"]) == ("FAILED", 7)
    assert flow_run_state(cli, row["flow_run_id"]) == "FAILED"


def test_stop_deletes_the_jobs(simulated, project):
    emulator, cli = simulated
    xgroup, _ = submit_held(simulated, project, 3, "ks")
    assert len(group_jobs(emulator, xgroup)) == 3
    stop = cli("stop", "--xgroup", xgroup, "--yes")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    wait_for(lambda: group_jobs(emulator, xgroup) == [])  # the Jobs, their pods with them
    assert {r["state"] for r in status(cli, xgroup)} == {"STOPPED"}
    assert flow_run_state(cli, status(cli, xgroup)[0]["flow_run_id"]) == "CANCELLED"


def test_cancelling_the_flow_run_in_prefect_deletes_the_jobs(simulated, project):
    emulator, cli = simulated
    xgroup, _ = submit_held(simulated, project, 2, "ku")
    run_id = status(cli, xgroup)[0]["flow_run_id"]
    body = {"state": {"type": "CANCELLING", "message": "cancelled in the UI"}, "force": True}
    httpx.post(f"{api_url(cli)}/flow_runs/{run_id}/set_state", json=body, timeout=10,
               headers=auth_headers(cli))  # fmt: skip
    status(cli, xgroup)  # the next reconcile (caliban serve does the same on its own)
    wait_for(lambda: group_jobs(emulator, xgroup) == [])
    assert {r["state"] for r in status(cli, xgroup)} == {"STOPPED"}
    assert flow_run_state(cli, run_id) == "CANCELLED"


def test_a_thousand_submissions_under_injected_faults_make_no_duplicates(simulated, project):
    emulator, cli = simulated
    emulator.error_rate, emulator.lost_response_rate = 0.1, 0.1
    emulator.error_calls = {"create jobs"}
    sweep(project, 1000)
    xgroup = f"kf-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    done = cli(*SUBMIT, "--image_tag", IMAGE, "--xgroup", xgroup, "--max_qps", "500",
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    took = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    creates = emulator.creates_by_key()
    attempts = sum(emulator.attempts_by_key().values())
    print(
        f"\nk8s faults: 1,000 jobs in {took:.1f} s, {attempts} create calls, "
        f"{len(creates)} created, {emulator.duplicates()} duplicates"
    )
    assert len(creates) == 1000 and emulator.duplicates() == 0
    assert attempts > 1000  # faults were injected and ridden out


def test_a_submission_killed_at_a_random_point_then_rerun_makes_each_job_once(simulated, project):
    emulator, cli = simulated
    emulator.latency = 0.005
    sweep(project, 300)
    xgroup = f"kk-{uuid.uuid4().hex[:8]}"
    args = [str(BIN / "caliban"), *SUBMIT, "--image_tag", IMAGE, "--xgroup", xgroup,
            "--experiment_config", "exp.json", "trainer.train"]  # fmt: skip
    proc = subprocess.Popen(args, cwd=project, env=cli.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(lambda: len(emulator.creates_by_key()) >= random.Random(3).randint(20, 200),
             timeout=120, interval=0.01)  # fmt: skip
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    made = len(emulator.creates_by_key())
    assert made < 300, made
    again = cli(*SUBMIT, "--image_tag", IMAGE, "--xgroup", xgroup,
                "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert Counter(emulator.creates_by_key().values()) == Counter({1: 300})
    assert len(status(cli, xgroup)) == 300


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--context", "nowhere"], "no context 'nowhere'"),
        (["--tpu_spec", "8xV4_POD"], "single-host V4 slice: 4xV4"),
        (["--cluster_name", "prod"], "get-credentials prod"),
        (["--pool", "gpus"], "--max_running"),
    ],
)
def test_bad_cluster_input_is_one_line_exit_2(simulated, project, args, needle):
    _, cli = simulated
    done = cli(*SUBMIT[:3], *args, "--image_tag", IMAGE, "trainer.train")
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr, done.stderr


def test_a_kubeconfig_kept_in_a_prefect_block_is_used_and_never_shown(simulated, project):
    emulator, cli = simulated
    name = f"kb-{uuid.uuid4().hex[:8]}"
    config = yaml.safe_load(Path(cli.env["KUBECONFIG"]).read_text())
    token = config["users"][0]["user"]["token"]
    save = (
        "import json, sys\n"
        "from caliban_flows.server import backend; backend.use_backend()\n"
        "from prefect_kubernetes.credentials import KubernetesClusterConfig\n"
        "from caliban_flows.blocks.kubernetes import ClusterSettings\n"
        "kube = json.loads(sys.argv[1])\n"
        "config = KubernetesClusterConfig(config=kube, context_name='emulator')\n"
        f"ClusterSettings(namespace='from-block', backoff_limit=2, cluster_config=config)"
        f".save({name!r})\n"
    )
    saved = subprocess.run([str(BIN / "python"), "-c", save, json.dumps(config)], env=cli.env,
                           cwd=project, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    env = {k: v for k, v in cli.env.items() if k != "KUBECONFIG"}
    env["KUBECONFIG"] = str(project / "no-such-kubeconfig")  # only the block knows the cluster
    xgroup = f"kb-{uuid.uuid4().hex[:6]}"
    done = cli(*SUBMIT, "--cluster_block", name, "--image_tag", IMAGE, "--xgroup", xgroup,
               "trainer.train", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [job] = group_jobs(emulator, xgroup)
    assert job["metadata"]["namespace"] == "from-block" and job["spec"]["backoffLimit"] == 2
    rows = status(caliban_runner(project, env), xgroup)
    assert rows[0]["remote_id"].startswith("from-block/")
    run = httpx.get(f"{api_url(cli)}/flow_runs/{rows[0]['flow_run_id']}", timeout=10,
                    headers=auth_headers(cli)).json()  # fmt: skip
    assert token not in json.dumps(run)  # the group's record names the block, not its secret


def test_max_running_caps_a_cluster_group(simulated, project):
    emulator, cli = simulated
    xgroup, done = submit_held(simulated, project, 3, "kc", "--max_running", "2")
    assert "2 jobs submitted to Kubernetes, 1 queued behind --max_running 2" in done.stderr
    assert len(group_jobs(emulator, xgroup)) == 2
    assert sorted(r["state"] for r in status(cli, xgroup))[0] == "QUEUED"
    emulator.hold(False)
    wait_for(lambda: all(ended(j) for j in group_jobs(emulator, xgroup)))
    assert len(group_jobs(emulator, xgroup)) == 2  # nobody has reconciled: the third waits
    status(cli, xgroup)  # one reconcile round frees the ended jobs' slots and fills one
    assert len(group_jobs(emulator, xgroup)) == 3
    rows = wait_for(lambda: (r := status(cli, xgroup)) and all(
        x["state"] == "SUCCEEDED" for x in r) and r)  # fmt: skip
    assert len(rows) == 3 and Counter(emulator.creates_by_key().values()) == Counter({1: 3})


def test_no_registry_the_cluster_can_pull_from_is_bad_input(simulated, project):
    emulator, cli = simulated
    env = {k: v for k, v in cli.env.items() if k != "CALIBAN_REGISTRY"}
    done = cli(*SUBMIT, "trainer.train", env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "no registry Kubernetes can pull from" in done.stderr
    assert emulator.jobs() == []
