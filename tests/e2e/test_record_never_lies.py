"""The group's record tells the truth after a crash, and when a platform cannot be reached.

`caliban run`, `caliban cloud` and `caliban cluster job submit` are SIGKILLed at seeded random
points; once the platform's jobs have ended, one `caliban status` must leave every run of the
group in the state its jobs call for, none RUNNING. Local jobs run on the real dockerd;
Vertex and Kubernetes jobs on the emulators (simulate mode: they end by themselves).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid

import httpx
import pytest
import yaml

from devtools.k8s_emulator import K8sEmulator
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, caliban_runner, wait_for
from tests.prefect_http import auth_headers

TRAIN = """\
import sys, time
args = sys.argv[1:]
time.sleep(float(args[args.index("--sleep") + 1]) if "--sleep" in args else 0)
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
IMAGE = "127.0.0.1:5000/caliban-tests/prebuilt:1"  # never pulled in simulate mode
COMMANDS = {
    "local": ("run", "--nogpu"),
    # 300 a minute: the pace these tests were written at (the old 5 QPS), not the 60 default.
    "vertex": ("cloud", "--nogpu", "--image_tag", IMAGE, "--submit_quota", "300"),
    "kubernetes": ("cluster", "job", "submit", "--nogpu", "--image_tag", IMAGE),
}
START_WAIT_SECONDS = 60.0  # platforms.local.adapter: a container not started by then failed


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client):
    root = tmp_path_factory.mktemp("never-lies")
    project, home = root / "project", root / "home"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (project / "requirements.txt").write_text("")
    (project / "exp.json").write_text('{"sleep": [1, 1.5], "exit": [0, 3]}')
    with (
        VertexEmulator(run_containers=False, sim_step=0.3, seed=3) as vertex,
        K8sEmulator(run_containers=False, sim_step=0.3, seed=3) as kube,
    ):
        kubeconfig = kube.write_kubeconfig(root / "kubeconfig")
        env = {
            **os.environ,
            "CALIBAN_HOME": str(home),
            "HOME": str(root / "user"),
            **vertex.client_env(vertex.new_key()),
            "CALIBAN_VERTEX_POLL_SECONDS": "0.2",
            "CALIBAN_REGISTRY": "127.0.0.1:5000",
            "PROJECT_ID": "caliban-test",
            "KUBECONFIG": str(kubeconfig),
        }
        env.pop("PREFECT_API_URL", None)
        cli = caliban_runner(project, env)
        warm = cli("build", "--nogpu", "trainer.train")  # later builds are cache hits
        assert warm.returncode == 0, warm.stderr
        try:
            yield {"cli": cli, "vertex": vertex, "kube": kube, "root": root,
                   "kubeconfig": kubeconfig, "docker": docker_client}  # fmt: skip
        finally:
            stop = "from caliban_flows.server import backend; backend.stop()"
            subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)


def _api(cli) -> str:
    code = "from caliban_flows.server import backend; print(backend.api_url())"
    out = subprocess.run([str(BIN / "python"), "-c", code], env=cli.env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout.strip()


def _runs(cli, xgroup: str) -> list[dict]:
    body = {"flow_runs": {"tags": {"all_": ["caliban", f"xgroup:{xgroup}"]}}, "limit": 200}
    response = httpx.post(
        f"{_api(cli)}/flow_runs/filter", json=body, timeout=30, headers=auth_headers(cli)
    )
    response.raise_for_status()
    return response.json()


def _platform_jobs(world, platform: str, xgroup: str) -> dict[str, bool]:
    """The group's jobs on the platform now: id -> ended."""
    if platform == "local":
        now = time.time()
        return {
            c["Id"]: c["State"] not in ("running", "restarting", "paused")
            and not (c["State"] == "created" and now - c["Created"] < START_WAIT_SECONDS + 1)
            for c in world["docker"].api.containers(
                all=True, filters={"label": f"caliban.xgroup={xgroup}"}
            )
        }
    if platform == "vertex":
        from caliban_flows.spec import vertex_job as vj

        ended = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
        return {j.name: j.state.name in ended for j in world["vertex"].jobs()
                if j.labels.get(vj.XGROUP_ID_LABEL) == vj.xgroup_id(xgroup)}  # fmt: skip
    from caliban_flows.spec import k8s_job as kj

    done = ("Complete", "Failed")
    return {
        j["metadata"]["name"]: any(
            c["type"] in done and c["status"] == "True"
            for c in (j.get("status") or {}).get("conditions") or []
        )
        for j in world["kube"].jobs()
        if j["metadata"]["labels"].get(kj.XGROUP_ID_LABEL) == kj.xgroup_id(xgroup)
    }


def _platform_jobs_ended(world, platform: str, xgroup: str) -> bool:
    return all(_platform_jobs(world, platform, xgroup).values())


def _settled_on_the_platform(world, platform: str, xgroup: str) -> None:
    """Wait until every job of the group ended and none appeared or changed for a second:
    a request the killed process had already sent (a create) still lands after its death."""
    seen: list[dict] = []

    def quiet() -> bool:
        now = _platform_jobs(world, platform, xgroup)
        seen.append(now)
        recent = seen[-6:]  # wait_for polls every 0.2 s
        return len(recent) == 6 and all(r == now for r in recent) and all(now.values())

    wait_for(quiet, timeout=180)


KILLS = [(platform, seed) for platform in COMMANDS for seed in (1, 2, 3)]


@pytest.mark.parametrize(("platform", "seed"), KILLS, ids=[f"{p}-{s}" for p, s in KILLS])
def test_a_killed_submission_is_settled_by_the_next_status(world, platform, seed):
    cli = world["cli"]
    xgroup = f"kill-{platform[:3]}-{seed}-{uuid.uuid4().hex[:6]}"
    argv = [str(BIN / "caliban"), *COMMANDS[platform], "--xgroup", xgroup,
            "--experiment_config", "exp.json", "trainer.train"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=world["root"] / "project", env=cli.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # The kill point: random, but the same for a seed. Each command takes a few seconds.
    killed_after = random.Random(f"{platform}{seed}").uniform(0.5, 6.0)
    try:
        proc.wait(timeout=killed_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _settled_on_the_platform(world, platform, xgroup)

    done = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "0")
    runs = _runs(cli, xgroup)
    states = [(r["state"]["type"], r["state"]["message"]) for r in runs]
    print(f"\n{platform} seed {seed}: killed after {killed_after:.2f} s, runs: {states}")
    if not runs:  # killed before the group was recorded: nothing may have been submitted
        assert done.returncode == 2, done.stderr
        assert _platform_jobs_ended(world, platform, xgroup)
        return
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    for run in runs:
        state = run["state"]["type"]
        assert state not in ("PENDING", "RUNNING"), run["state"]
        mine = [r for r in rows if r["flow_run_id"] == run["id"]]
        assert all(r["state"] not in ("SUBMITTED", "RUNNING", "QUEUED") for r in mine), mine
        if state == "COMPLETED":
            assert mine and all(r["state"] == "SUCCEEDED" for r in mine), (run["state"], mine)
        else:
            assert state in ("FAILED", "CANCELLED"), run["state"]
            assert not mine or any(r["state"] != "SUCCEEDED" for r in mine), mine


OVERLAPS = [(platform, n) for platform in COMMANDS for n in (1, 2, 3)]


@pytest.mark.parametrize(("platform", "n"), OVERLAPS, ids=[f"{p}-{n}" for p, n in OVERLAPS])
def test_two_submissions_of_one_group_make_each_job_once(world, platform, n):
    """Both at once (a double Enter), under 20% injected 429/503 on the remote platforms:
    every job exactly once, none lost."""
    cli, project = world["cli"], world["root"] / "project"
    jobs = 2 if platform == "local" else 30
    (project / f"overlap{n}.json").write_text(json.dumps({"i": list(range(jobs))}))
    xgroup = f"twice-{platform[:3]}-{n}-{uuid.uuid4().hex[:6]}"
    argv = [str(BIN / "caliban"), *COMMANDS[platform], "--xgroup", xgroup,
            "--experiment_config", f"overlap{n}.json", "trainer.train"]  # fmt: skip
    emulator = {"vertex": world["vertex"], "kubernetes": world["kube"]}.get(platform)
    if emulator is not None:
        emulator.error_rate = 0.2
    try:
        both = [subprocess.Popen(argv, cwd=project, env=cli.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        errors = [p.communicate(timeout=300)[1] for p in both]
    finally:
        if emulator is not None:
            emulator.error_rate = 0.0
    assert [p.returncode for p in both] == [0, 0], errors
    done = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "0")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    keys = {r["key"] for r in rows}
    if platform == "local":
        made = [c["Labels"]["caliban.job_key"] for c in world["docker"].api.containers(
            all=True, filters={"label": f"caliban.xgroup={xgroup}"})]  # fmt: skip
        created = {key: made.count(key) for key in keys}
    else:
        created = {k: v for k, v in emulator.creates_by_key().items() if k in keys}
    duplicates = sum(1 for count in created.values() if count > 1)
    lost = jobs - len([k for k in keys if created.get(k)])
    print(
        f"\n{platform} #{n}: two submissions of {jobs} jobs: {sum(created.values())} "
        f"created, {duplicates} duplicates, {lost} lost"
    )
    assert len(keys) == jobs and duplicates == 0 and lost == 0


def test_duplicate_remote_jobs_are_listed_and_all_stopped(world):
    """Two CustomJobs for one job (made by an older version, or by hand): status shows the
    extra one beside its job, and stop cancels both."""
    from google.cloud import aiplatform_v1

    from tests.integration.test_vertex_emulator import sync_client

    cli, vertex = world["cli"], world["vertex"]
    xgroup = f"dup-{uuid.uuid4().hex[:6]}"
    (world["root"] / "project" / "two.json").write_text('{"sleep": [1, 2]}')
    vertex.hold(True)
    try:
        done = cli(*COMMANDS["vertex"], "--xgroup", xgroup, "--experiment_config", "two.json",
                   "trainer.train")  # fmt: skip
        assert done.returncode == 0, done.stderr
        from caliban_flows.spec import vertex_job as vj

        mine = [
            j for j in vertex.jobs() if j.labels.get(vj.XGROUP_ID_LABEL) == vj.xgroup_id(xgroup)
        ]
        assert len(mine) == 2
        first = mine[0]
        copy = aiplatform_v1.CustomJob(display_name=first.display_name, labels=dict(first.labels),
                                       job_spec=first.job_spec)  # fmt: skip
        parent = mine[0].name.rsplit("/customJobs/", 1)[0]
        extra = sync_client(vertex).create_custom_job(parent=parent, custom_job=copy)
        status = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "0")
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)
        assert sorted(len(r["duplicates"]) for r in rows) == [0, 1], rows
        assert extra.name in [d for r in rows for d in r["duplicates"]]
        text = cli("status", "--xgroup", xgroup)
        assert "+1 duplicate" in text.stdout, text.stdout
        stopped = cli("stop", "--xgroup", xgroup, "--yes")
        assert stopped.returncode == 0, stopped.stderr
        ended = wait_for(lambda: (js := [j for j in vertex.jobs() if j.labels.get(
            vj.XGROUP_ID_LABEL) == vj.xgroup_id(xgroup)]) and all(
            j.state.name == "JOB_STATE_CANCELLED" for j in js) and js)  # fmt: skip
        assert len(ended) == 3
    finally:
        vertex.hold(False)


class _Silent:
    """A TCP server that accepts connections and never answers: a cluster gone quiet."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_an_unreachable_cluster_makes_only_its_jobs_unknown(world):
    cli, root = world["cli"], world["root"]
    local, cluster = f"ok-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:6]}"
    (root / "project" / "one.json").write_text('{"sleep": [0]}')
    assert cli("run", "--nogpu", "--xgroup", local, "--experiment_config", "one.json",
               "trainer.train").returncode == 0  # fmt: skip
    private = root / f"{cluster}.kubeconfig"
    private.write_text(world["kubeconfig"].read_text())
    done = cli(*COMMANDS["kubernetes"], "--kubeconfig", str(private), "--xgroup", cluster,
               "--experiment_config", "one.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    silent = _Silent()
    try:  # the recorded kubeconfig now points at a server that never answers
        config = yaml.safe_load(private.read_text())
        config["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{silent.port}"
        private.write_text(yaml.safe_dump(config))
        status = cli("status", "--format", "json", "--max_jobs", "0")
    finally:
        silent.close()
    assert status.returncode == 1, status.stderr
    rows = json.loads(status.stdout)
    local_states = [r["state"] for r in rows if r["xgroup"] == local]
    assert local_states == ["SUCCEEDED"], (status.stderr, rows)
    gone = [r for r in rows if r["xgroup"] == cluster]
    assert [r["state"] for r in gone] == ["UNKNOWN"]
    assert "did not answer within 10 s" in gone[0]["detail"]
    unknown = [line for line in status.stderr.splitlines() if line.endswith("show as UNKNOWN")]
    assert len(unknown) == 1 and "kubernetes" in unknown[0], status.stderr


def test_a_container_that_cannot_start_fails_with_dockers_reason(world):
    cli = world["cli"]
    xgroup = f"nostart-{uuid.uuid4().hex[:6]}"
    (world["root"] / "project" / "one.json").write_text('{"sleep": [0]}')
    done = cli("run", "--nogpu", "--docker_run_args", "--user no-such-user", "--xgroup", xgroup,
               "--experiment_config", "one.json", "trainer.train")  # fmt: skip
    assert done.returncode == 1
    status = cli("status", "--xgroup", xgroup, "--format", "json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["state"] == "FAILED", row
    assert row["detail"].startswith("never started:") and "no-such-user" in row["detail"], row
    [run] = _runs(cli, xgroup)
    assert run["state"]["type"] == "FAILED"


def test_a_local_run_whose_process_died_lets_the_server_idle(world):
    """The embedded server's idle check does not count a run whose process is gone."""
    from caliban_flows.server.owner import alive, owner_of
    from caliban_flows.server.supervisor import keeps_server_up

    cli = world["cli"]
    xgroup = f"idle-{uuid.uuid4().hex[:6]}"
    argv = [str(BIN / "caliban"), "run", "--nogpu", "--xgroup", xgroup, "--experiment_config",
            "exp.json", "trainer.train"]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=world["root"] / "project", env=cli.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    docker = world["docker"]
    wait_for(lambda: docker.api.containers(filters={"label": f"caliban.xgroup={xgroup}",
                                                    "status": "running"}))  # fmt: skip
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    [run] = _runs(cli, xgroup)
    assert run["state"]["type"] == "RUNNING"  # as the kill left it
    assert alive(owner_of(run["tags"])) is False
    assert not keeps_server_up(run)
    wait_for(lambda: _platform_jobs_ended(world, "local", xgroup), timeout=120)
    assert cli("status", "--xgroup", xgroup).returncode == 0
    [run] = _runs(cli, xgroup)
    assert run["state"]["type"] == "FAILED"  # jobs that never started, one with --exit 3
