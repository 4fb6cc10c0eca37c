"""`caliban run --docker_run_args` with the flags people use on their own machine, on the real
Docker engine: the job itself reports what it got."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.conftest import BIN, caliban_runner

PROBE = """\
import resource
print("nofile", *resource.getrlimit(resource.RLIMIT_NOFILE), flush=True)
hosts = open("/etc/hosts").read().split()
print("foo at", hosts[hosts.index("foo") - 1] if "foo" in hosts else None)
mounts = {line.split()[1]: line.split()[2] for line in open("/proc/mounts")}
print("scratch", mounts.get("/scratch"), "data", mounts.get("/data"))
caps = int(next(l for l in open("/proc/self/status") if l.startswith("CapEff")).split()[1], 16)
print("ptrace", bool(caps & (1 << 19)), "chown", bool(caps & (1 << 0)))
print("pid1", open("/proc/1/comm").read().strip())
"""


@pytest.fixture(scope="module")
def cli(tmp_path_factory, docker_client):
    root = tmp_path_factory.mktemp("run-args")
    project = root / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "probe.py").write_text(PROBE + f"# {uuid.uuid4()}\n")
    (project / "requirements.txt").write_text("")
    (root / "data").mkdir()
    env = {**os.environ, "CALIBAN_HOME": str(root / "home"), "HOME": str(root / "user")}
    for name in ("PREFECT_API_URL", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    run = caliban_runner(project, env)
    run.root = root
    try:
        yield run
    finally:
        stop = "from caliban_flows.server import backend; backend.stop()"
        subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)


def test_run_args_reach_the_container(cli, docker_client):
    xgroup = f"args-{uuid.uuid4().hex[:8]}"
    data = cli.root / "data"
    args = (
        "--ulimit nofile=1024:2048 --cap-add SYS_PTRACE --cap-drop=CHOWN --add-host foo:1.2.3.4 "
        f"--tmpfs /scratch --mount type=bind,source={data},target=/data,readonly "
        "--init --ipc=private --pids-limit 64"
    )
    done = cli("run", "-v", "0", "--nogpu", "--xgroup", xgroup, "--docker_run_args", args,
               "trainer.probe")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "INFO    | Flow run" in done.stderr  # -v 0: Prefect's log lines, quiet by default
    out = done.stdout
    assert "nofile 1024 2048" in out
    assert "foo at 1.2.3.4" in out
    assert "scratch tmpfs data" in out
    assert "ptrace True chown False" in out
    assert "pid1 docker-init" in out
    [container] = docker_client.containers.list(
        all=True, filters={"label": f"caliban.xgroup={xgroup}"}
    )
    host = container.attrs["HostConfig"]
    assert host["PidsLimit"] == 64 and host["IpcMode"] == "private"
    assert host["Mounts"][0]["ReadOnly"] is True


def test_unknown_flag_is_refused_by_name_before_anything_runs(cli):
    done = cli("run", "--nogpu", "--docker_run_args", "--ulimit nofile=1 --oom-kill-disable",
               "trainer.probe")  # fmt: skip
    assert done.returncode == 2
    assert "'--oom-kill-disable' is not a flag caliban passes to docker" in done.stderr
    assert done.stderr.count("\n") == 1


def test_gpus_become_the_device_request_docker_means():
    from caliban_flows.platforms.local.run_kwargs import run_kwargs
    from caliban_flows.spec.docker_run_args import parse_run_args

    def request(text: str) -> dict:
        [device] = run_kwargs(parse_run_args(f"--gpus {text}"))["device_requests"]
        return {"count": device["Count"], "ids": device["DeviceIDs"]}

    assert request("2") == {"count": 2, "ids": []}
    assert request("all") == {"count": -1, "ids": []}
    assert request("device=2") == {"count": 0, "ids": ["2"]}
    assert request("'\"device=0,2\"'") == {"count": 0, "ids": ["0", "2"]}
    assert request("device=0,2") == {"count": 0, "ids": ["0", "2"]}
