"""`caliban` end to end on a real Docker engine and a real Prefect server, as a user types it."""

from __future__ import annotations

import io
import itertools
import json
import os
import re
import signal
import subprocess
import tarfile
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import BIN, caliban_runner, wait_for

TRAIN = """\
import sys, time
args = sys.argv[1:]
print("training with", args, flush=True)
if "--sleep" in args:
    time.sleep(float(args[args.index("--sleep") + 1]))
code = int(args[args.index("--exit") + 1]) if "--exit" in args else 0
sys.exit(code)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (tmp_path / "requirements.txt").write_text("six\n")
    return tmp_path


@pytest.fixture
def cli(project: Path, caliban_home: Path):
    env = {
        **os.environ,
        "CALIBAN_HOME": str(caliban_home),
        "PREFECT_API_URL": "",
        "HOME": str(project.parent / "home"),
    }
    env.pop("PREFECT_API_URL")
    return caliban_runner(project, env)


def status(cli, xgroup: str) -> list[dict]:
    done = cli("status", "--xgroup", xgroup, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def start_long_job(cli, project: Path, xgroup: str) -> subprocess.Popen:
    """`caliban run` of a 10-minute job in the background, returned once it is RUNNING."""
    running = subprocess.Popen(
        [str(BIN / "caliban"), "run", "--nogpu", "--xgroup", xgroup, "trainer.train",
         "--", "--sleep", "600"],
        cwd=project, env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def job_running() -> bool:  # the group exists, with no job recorded yet, for a moment
        done = cli("status", "--xgroup", xgroup, "--format", "json")
        rows = json.loads(done.stdout) if done.returncode == 0 else []
        return bool(rows) and rows[0]["state"] == "RUNNING"

    wait_for(job_running)
    return running


def test_build_then_cache_hit_then_code_only_rebuild(cli, project):
    first = cli("build", "--nogpu", "trainer.train")
    assert first.returncode == 0, first.stderr
    tag = first.stdout.strip()
    assert tag.startswith("caliban/")

    again = cli("build", "--nogpu", "trainer.train")
    assert again.stdout.strip() == tag
    assert "Step" not in again.stderr  # nothing was built

    (project / "trainer" / "train.py").write_text(TRAIN + f"# a code-only change {uuid.uuid4()}\n")
    changed = cli("build", "--nogpu", "trainer.train")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() != tag
    # The dependency steps came from the cache: no pip install ran.
    assert "Collecting six" not in changed.stderr
    assert "Using cache" in changed.stderr


def test_sweep_with_a_failing_job_then_status(cli, project):
    xgroup = f"sweep-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"exit": [0, 3, 0]}')
    done = cli("run", "--nogpu", "--xgroup", xgroup, "--experiment_config", "exp.json",
               "trainer.train", "--", "--tag", "x")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "training with ['--tag', 'x', '--exit', '3']" in done.stdout

    jobs = status(cli, xgroup)
    assert [j["args"] for j in jobs] == [
        ["--tag", "x", "--exit", "0"],
        ["--tag", "x", "--exit", "3"],
        ["--tag", "x", "--exit", "0"],
    ]
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED"]
    assert [j["exit_code"] for j in jobs] == [0, 3, 0]
    assert all(j["platform"] == "local" and j["attempt"] == 1 and j["remote_id"] for j in jobs)

    text = cli("status", "--xgroup", xgroup)
    assert text.returncode == 0
    assert f"xgroup {xgroup}:" in text.stdout
    assert "python -m trainer.train --tag x --exit 3" in text.stdout


def test_resubmit_after_fixing_the_code(cli, project):
    xgroup = f"fix-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"exit": [0, 5]}')
    assert cli("run", "--nogpu", "--xgroup", xgroup, "--experiment_config", "exp.json",
               "trainer.train").returncode == 1  # fmt: skip
    (project / "trainer" / "train.py").write_text(TRAIN.replace("sys.exit(code)", "sys.exit(0)"))

    done = cli("resubmit", "--xgroup", xgroup, "--yes")
    assert done.returncode == 0, done.stderr
    jobs = {tuple(j["args"]): j for j in status(cli, xgroup)}
    fixed = jobs[("--exit", "5")]
    assert fixed["state"] == "SUCCEEDED" and fixed["attempt"] == 2 and fixed["attempts"] == 2
    assert jobs[("--exit", "0")]["attempt"] == 1  # only the failed one ran again


def test_stop_a_long_job(cli, project):
    xgroup = f"stop-{uuid.uuid4().hex[:8]}"
    running = start_long_job(cli, project, xgroup)
    try:
        dry = cli("stop", "--xgroup", xgroup, "--dry_run")
        assert "would be stopped" in dry.stdout and status(cli, xgroup)[0]["state"] == "RUNNING"
        declined = cli("stop", "--xgroup", xgroup, input="n\n")
        assert status(cli, xgroup)[0]["state"] == "RUNNING", declined.stdout
        stopped = cli("stop", "--xgroup", xgroup, input="y\n")
        assert stopped.returncode == 0, stopped.stderr
        assert wait_for(lambda: status(cli, xgroup)[0]["state"] == "STOPPED")
        assert running.wait(timeout=60) != 0
    finally:
        running.kill()


def test_container_killed_behind_callers_back_shows_failed(cli, project, docker_client):
    xgroup = f"kill-{uuid.uuid4().hex[:8]}"
    running = subprocess.Popen(
        [str(BIN / "caliban"), "run", "--nogpu", "--xgroup", xgroup, "trainer.train",
         "--", "--sleep", "600"],
        cwd=project, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        container = wait_for(
            lambda: docker_client.containers.list(filters={"label": f"caliban.xgroup={xgroup}"})
        )[0]
        running.kill()  # nothing watches the job any more
        running.wait(timeout=30)
        container.kill()
        job = wait_for(lambda: [j for j in status(cli, xgroup) if j["state"] != "RUNNING"])[0]
        assert job["state"] == "FAILED" and job["exit_code"] == 137
    finally:
        running.kill()


def test_no_credentials_in_any_image_layer(cli, project, docker_client, tmp_path):
    secret = f"secret-{uuid.uuid4().hex}"
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"private_key": secret}))
    adc = Path(cli.env["HOME"]) / ".config" / "gcloud"
    adc.mkdir(parents=True)
    (adc / "application_default_credentials.json").write_text(json.dumps({"token": secret}))
    built = cli("build", "--nogpu", "--cloud_key", str(key), "trainer.train",
                env={**cli.env, "GOOGLE_APPLICATION_CREDENTIALS": str(key)})  # fmt: skip
    assert built.returncode == 0, built.stderr
    image = docker_client.images.get(built.stdout.strip())
    archive = io.BytesIO(b"".join(image.save()))
    with tarfile.open(fileobj=archive) as outer:
        layers = [m for m in outer.getmembers() if m.name.endswith("layer.tar")]
        assert layers
        for member in layers:
            with tarfile.open(fileobj=outer.extractfile(member)) as layer:
                for item in layer.getmembers():
                    assert "credentials" not in item.name and not item.name.endswith("key.json")
                    if item.isfile():
                        assert secret.encode() not in layer.extractfile(item).read()
    env = image.attrs["Config"].get("Env") or []
    assert not any(v.startswith("GOOGLE_APPLICATION_CREDENTIALS") for v in env)


def test_ctrl_c_stops_the_container_and_marks_the_job_stopped(cli, project, docker_client):
    xgroup = f"ctrlc-{uuid.uuid4().hex[:8]}"
    running = start_long_job(cli, project, xgroup)
    try:
        running.send_signal(signal.SIGINT)
        assert running.wait(timeout=60) == 130
        said = running.stderr.read()
        assert f"stopped: the running jobs of xgroup {xgroup!r} were stopped" in said
        job = status(cli, xgroup)[0]
        assert job["state"] == "STOPPED"
        labels = {"label": f"caliban.xgroup={xgroup}"}
        assert docker_client.containers.list(filters=labels) == []  # none left running
    finally:
        running.kill()


def test_parallel_sweep_runs_every_job(cli, project):
    xgroup = f"par-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"exit": [0, 0, 4, 0]}')
    done = cli("run", "--nogpu", "--parallel", "3", "--xgroup", xgroup,
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stdout.count("succeeded!") == 3 and done.stdout.count("failed") == 1
    states = sorted(j["state"] for j in status(cli, xgroup))
    assert states == ["FAILED", "SUCCEEDED", "SUCCEEDED", "SUCCEEDED"]


def test_status_before_any_group_starts_no_server(tmp_path, project):
    home = tmp_path / "never-used"
    env = {**os.environ, "CALIBAN_HOME": str(home), "HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([str(BIN / "caliban"), "status"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no jobs yet"
    assert not (home / "server.json").exists()


def test_unknown_image_id_is_bad_input(cli):
    done = cli("run", "--nogpu", "--image_id", f"no-such-image:{uuid.uuid4().hex[:6]}",
               "trainer.train")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "is not an image on this Docker engine" in done.stderr


def registry_tags(repository: str) -> list[str]:
    url = f"http://127.0.0.1:5000/v2/{repository}/tags/list"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)["tags"] or []
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return []
        raise


def test_push_to_the_registry_named_in_calibanconfig(cli, project):
    space = f"cfg{uuid.uuid4().hex[:8]}"
    config = {"registry": f"127.0.0.1:5000/{space}"}
    (project / ".calibanconfig.json").write_text(json.dumps(config))
    done = cli("build", "--nogpu", "--push", "trainer.train")
    assert done.returncode == 0, done.stderr
    reference = done.stdout.strip()
    assert reference.startswith(f"127.0.0.1:5000/{space}/caliban/")
    repository, tag = reference.removeprefix("127.0.0.1:5000/").rsplit(":", 1)
    assert registry_tags(repository) == [tag]


def test_push_with_a_prefect_registry_block_never_shows_its_password(cli, project):
    space = f"blk{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    save = (
        "from caliban_flows.server import backend; backend.use_backend()\n"
        "from prefect_docker.credentials import DockerRegistryCredentials as D\n"
        f"D(username='ci', password={password!r}, registry_url='127.0.0.1:5000/{space}')"
        f".save({space!r}, overwrite=True)\n"
    )
    saved = subprocess.run([str(BIN / "python"), "-c", save], env=cli.env, cwd=project,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    done = cli("build", "--nogpu", "--push", "--registry_block", space, "trainer.train")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(f"127.0.0.1:5000/{space}/caliban/")
    assert password not in done.stdout + done.stderr
    repository, tag = done.stdout.strip().removeprefix("127.0.0.1:5000/").rsplit(":", 1)
    assert registry_tags(repository) == [tag]
    # Loaded, the password is still a SecretStr: only the push unwraps it, for the engine.
    load = (
        "from caliban_flows.server import backend; backend.use_backend()\n"
        "from caliban_flows.plan.push_target import from_block\n"
        f"t = from_block({space!r}); p = t.auth['password']\n"
        "print(type(p).__name__, repr(t), repr(t.auth), str(p))\n"
    )
    loaded = subprocess.run([str(BIN / "python"), "-c", load], env=cli.env, cwd=project,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("SecretStr ") and password not in loaded.stdout

    missing = cli("build", "--nogpu", "--push", "--registry_block", "no-such-block",
                  "trainer.train")  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no-such-block" in missing.stderr


def test_push_without_any_registry_is_bad_input(cli, project):
    done = cli("build", "--nogpu", "--push", "trainer.train",
               env={k: v for k, v in cli.env.items() if k != "CALIBAN_REGISTRY"})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--push needs a registry" in done.stderr


def test_build_shows_a_progress_bar_on_a_terminal(cli, project):
    import pexpect

    child = pexpect.spawn(str(BIN / "caliban"), ["build", "--nogpu", "--no_cache", "trainer.train"],
                          cwd=str(project), env=cli.env, encoding="utf-8", timeout=300)  # fmt: skip
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert re.search(r"building .*\d+/\d+", child.before), child.before[-2000:]


STAMP = """\
import sys, time
out = f"/out/{sys.argv[sys.argv.index('--i') + 1]}.txt"
start = time.time()
time.sleep(1.5)
open(out, "w").write(f"{start} {time.time()}")
"""


def test_max_running_caps_a_parallel_sweep_through_a_prefect_limit(cli, project, tmp_path):
    """--parallel 3 would overlap the jobs; --max_running 1 makes them take turns."""
    (project / "trainer" / "stamp.py").write_text(STAMP)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    xgroup = f"cap-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"i": [1, 2, 3]}')
    done = cli("run", "--nogpu", "--parallel", "3", "--max_running", "1", "--xgroup", xgroup,
               "--docker_run_args", f"-v {out}:/out", "--experiment_config", "exp.json",
               "trainer.stamp")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    spans = sorted(tuple(map(float, f.read_text().split())) for f in out.glob("*.txt"))
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans  # no two jobs ran at once
    assert sorted(j["state"] for j in status(cli, xgroup)) == ["SUCCEEDED"] * 3


WRITES_METRICS = """\
import json, os, sys
lr = float(sys.argv[sys.argv.index("--lr") + 1])
with open(os.path.join(os.environ["CALIBAN_OUTPUT_DIR"], "metrics.json"), "w") as f:
    json.dump({"lr": lr, "attempt_seen": os.environ["CALIBAN_OUTPUT_DIR"]}, f)
"""


def test_each_job_writes_to_its_own_host_folder_and_a_rerun_to_the_next(
    cli, project, tmp_path_factory
):
    """`--output_dir`: every job attempt finds its own folder at $CALIBAN_OUTPUT_DIR, made on
    the host by caliban and mounted read-write; a resubmit, which reads the run's recorded
    placement, writes the next attempt's folder beside it."""
    from caliban_flows.spec.outputs import job_folder

    outputs = tmp_path_factory.mktemp("outputs")  # outside the project: not in the image
    xgroup = f"outputs-{uuid.uuid4().hex[:8]}"
    (project / "trainer" / "train.py").write_text(WRITES_METRICS + f"# {uuid.uuid4()}\n")
    (project / "exp.json").write_text('{"lr": [0.1, 0.2]}')
    done = cli("run", "--nogpu", "--xgroup", xgroup, "--output_dir", str(outputs),
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = status(cli, xgroup)
    assert len(jobs) == 2
    for job in jobs:
        folder = outputs / job_folder(xgroup, job["name"], job["key"], 1)
        assert folder.parent.parent.parent == outputs  # <root>/<xgroup>/<name>-<key8>/1
        written = json.loads((folder / "metrics.json").read_text())
        assert written == {"lr": float(job["args"][-1]), "attempt_seen": "/caliban/output"}

    again = cli("resubmit", "--xgroup", xgroup, "--all_jobs", "--yes")
    assert again.returncode == 0, again.stderr
    for job in jobs:
        rerun = outputs / job_folder(xgroup, job["name"], job["key"], 2) / "metrics.json"
        assert json.loads(rerun.read_text())["lr"] == float(job["args"][-1])
