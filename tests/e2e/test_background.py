"""Large sweeps leave the terminal: `caliban cloud` records the jobs and returns, the embedded
server's runner submits them at the quota's pace, and a SIGKILLed submitter is resumed
without a job made twice."""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from caliban_flows.flows.group_runs import DEPLOYMENT
from caliban_flows.state.groups import FLOW_NAME
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import wait_for
from tests.e2e.test_vertex_e2e import (
    IMAGE,
    api_url,
    make_cli,
    sweep,
)
from tests.prefect_http import auth_headers

QUOTA = "600"  # creates a minute: 300 jobs take 30 s, over the 30 s a terminal waits


@pytest.fixture(scope="module")
def world(caliban_home, tmp_path_factory):
    """One emulator for the module: the embedded server's runner, started by the first
    command, keeps the environment it was started with (the emulator's address)."""
    project = tmp_path_factory.mktemp("bg-project")
    (project / "trainer").mkdir()
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text("print('training')\n")
    (project / "requirements.txt").write_text("")
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=3) as emulator:
        emulator.hold(True)  # jobs stay RUNNING: the test looks at the submission only
        cli = make_cli(project, caliban_home, emulator)
        sweep(project, 1)
        warm = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup",
                   f"warm-{uuid.uuid4().hex[:6]}", "--experiment_config", "exp.json",
                   "trainer.train")  # fmt: skip
        assert warm.returncode == 0, warm.stderr
        url = api_url(cli)

        def runner_ready() -> bool:
            got = httpx.get(f"{url}/deployments/name/{FLOW_NAME}/{DEPLOYMENT}", timeout=10,
                            headers=auth_headers(cli))  # fmt: skip
            return got.status_code == 200 and got.json().get("status") == "READY"

        wait_for(runner_ready)
        yield emulator, cli, project


def created(emulator, xgroup: str) -> list[tuple[str, str]]:
    from caliban_flows.spec import vertex_job as vj

    wanted = vj.xgroup_id(xgroup)
    return [(j.labels[vj.JOB_KEY_LABEL], j.labels[vj.ATTEMPT_LABEL]) for j in emulator.jobs()
            if j.labels.get(vj.XGROUP_ID_LABEL) == wanted]  # fmt: skip


def submit(cli, project: Path, n: int) -> tuple[str, str]:
    sweep(project, n)
    xgroup = f"bg-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup, "--submit_quota",
               QUOTA, "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    return xgroup, done.stderr


def flow_run_id(stderr: str) -> str:
    return re.search(r"/runs/flow-run/([0-9a-f-]{36})", stderr).group(1)


def status_text(cli, xgroup: str) -> str:
    done = cli("status", "--xgroup", xgroup)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_a_large_sweep_is_submitted_in_the_background(world):
    emulator, cli, project = world
    xgroup, said = submit(cli, project, 400)
    assert f"400 jobs queued: submitting in the background at {QUOTA}/min, done by about" in said
    assert "/runs/flow-run/" in said and f"caliban status --xgroup {xgroup}" in said
    assert len(created(emulator, xgroup)) < 400  # the terminal did not wait for them
    # while it goes on, status says how far it is
    line = wait_for(lambda: re.search(r"(\d+) queued, (\d+) submitted \(\d+ running\): "
                                      r"submitting in the background",
                                      status_text(cli, xgroup)))  # fmt: skip
    assert int(line.group(1)) + int(line.group(2)) == 400
    wait_for(lambda: len(created(emulator, xgroup)) == 400, timeout=240)
    jobs = json.loads(cli("status", "--xgroup", xgroup, "--format", "json").stdout)
    assert len(jobs) == 400 and all(j["state"] == "RUNNING" for j in jobs)
    assert len(set(created(emulator, xgroup))) == 400


def test_a_killed_submitter_is_resumed_without_duplicates(world):
    emulator, cli, project = world
    xgroup, said = submit(cli, project, 400)
    run_id = flow_run_id(said)
    wait_for(lambda: len(created(emulator, xgroup)) >= 60, timeout=120)
    killed = _kill_flow_run_process(run_id)
    before = len(created(emulator, xgroup))
    assert killed and before < 400
    # Whoever reads the group next (here: status) queues it again; the runner resumes it.
    wait_for(lambda: status_text(cli, xgroup) is not None
             and len(created(emulator, xgroup)) == 400, timeout=300, interval=2)  # fmt: skip
    made = created(emulator, xgroup)
    print(f"\nbackground submitter SIGKILLed after {before} of 400 creates, then resumed: "
          f"{len(made)} jobs, {len(made) - len(set(made))} duplicates")  # fmt: skip
    assert len(made) == len(set(made)) == 400  # every job once: 0 duplicates
    assert emulator.duplicates() == 0


def _flow_run_process(run_id: str) -> int | None:
    """The process the runner started for this flow run, if it is still there."""
    wanted = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except (OSError, IndexError):
            continue
        if wanted in env and state != "Z":  # a zombie has ended
            return int(pid)
    return None


def _kill_flow_run_process(run_id: str) -> bool:
    """SIGKILL the process the runner started for this flow run."""
    pid = _flow_run_process(run_id)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    return pid is not None


def test_stop_ends_a_background_submission(world):
    emulator, cli, project = world
    xgroup, said = submit(cli, project, 400)
    wait_for(lambda: len(created(emulator, xgroup)) >= 20, timeout=120)
    done = cli("stop", "--xgroup", xgroup, "--yes")
    assert done.returncode == 0, done.stderr

    def all_cancelled() -> bool:
        from caliban_flows.spec import vertex_job as vj

        mine = [j for j in emulator.jobs()
                if j.labels.get(vj.XGROUP_ID_LABEL) == vj.xgroup_id(xgroup)]  # fmt: skip
        return bool(mine) and all(j.state.name == "JOB_STATE_CANCELLED" for j in mine)

    # the submitter stops within its piece and ends; what it made by then is cancelled too
    run_id = flow_run_id(said)
    wait_for(lambda: _flow_run_process(run_id) is None, timeout=180, interval=1)
    wait_for(all_cancelled, timeout=180, interval=1)
    assert len(created(emulator, xgroup)) < 400
    rows = json.loads(cli("status", "--xgroup", xgroup, "--format", "json").stdout)
    assert {r["state"] for r in rows} == {"STOPPED"}
