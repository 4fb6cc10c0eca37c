"""The Prefect UI as a control surface: Retry on a group's run is `caliban resubmit`, Cancel is
`caliban stop`.

Each test makes its group with the CLI, then makes the very REST call the UI's button makes
(read from Prefect's own UI bundles), and checks what the user would: `caliban status`, the
run's state, the containers and the emulator's CustomJobs. Nobody runs a caliban command in
between: the embedded server's runner carries out Retry. Local jobs run on the real dockerd;
Vertex jobs on the emulator, which pulls the pushed image and runs it there too. Headless
Chromium checks that the UI offers Retry on a failed group.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import pytest

from devtools import browser, cdp
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, wait_for
from tests.e2e.test_vertex_e2e import api_url, make_cli, status
from tests.prefect_http import auth_headers, auth_string

SCRIPT = """\
import sys, time
args = sys.argv[1:]
print("first version with", args, flush=True)
if "--sleep" in args:
    time.sleep(float(args[args.index("--sleep") + 1]))
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
FIXED = "import sys\nprint('fixed with', sys.argv[1:], flush=True)\n"
# What the buttons send (prefect/server/ui*/assets): the classic UI's Retry is not forced,
# the new one's is; Cancel is forced in both.
RETRY_CLASSIC = {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"}
CANCEL = {"type": "CANCELLING", "name": "Cancelling"}
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
WAIT = 200.0  # seconds, well inside pytest's timeout, so a wait that fails says why


@pytest.fixture
def world(tmp_path, docker_client):
    project = tmp_path / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(SCRIPT)
    (project / "requirements.txt").write_text("")
    home = tmp_path / "caliban-home"
    with VertexEmulator(run_containers=True, workers=2) as emulator:
        cli = make_cli(project, home, emulator)
        yield emulator, cli, project
        subprocess.run([str(BIN / "python"), "-m", "caliban_flows.server.backend", "stop"],
                       env=cli.env, timeout=60)  # fmt: skip


def _set_state(cli, run_id: str, state: dict, *, force: bool) -> dict:
    body = {"state": state, "force": force}
    answer = httpx.post(f"{api_url(cli)}/flow_runs/{run_id}/set_state", json=body, timeout=30,
                        headers=auth_headers(cli))  # fmt: skip
    answer.raise_for_status()
    return answer.json()


def _run(cli, run_id: str) -> dict:
    url = f"{api_url(cli)}/flow_runs/{run_id}"
    return httpx.get(url, timeout=10, headers=auth_headers(cli)).json()


def _ended_after(cli, run_id: str, runs: int, xgroup: str) -> dict:
    """The run once its `runs`-th run has ended, as `caliban status` leaves it."""

    def ended():
        status(cli, xgroup)
        run = _run(cli, run_id)
        return run if run["run_count"] >= runs and run["state"]["type"] in ENDED else None

    return wait_for(ended, timeout=WAIT)


def _failed_group(cli, xgroup: str, command: str) -> tuple[str, list[dict]]:
    (cli.cwd / "exp.json").write_text('{"exit": [0, 3]}')
    done = cli(command, "--nogpu", "--xgroup", xgroup, "--experiment_config", "exp.json",
               "trainer.train")  # fmt: skip
    assert done.returncode == (1 if command == "run" else 0), done.stdout + done.stderr

    def settled():
        rows = status(cli, xgroup)
        (run_id,) = {r["flow_run_id"] for r in rows}
        return (run_id, rows) if _run(cli, run_id)["state"]["type"] == "FAILED" else None

    return wait_for(settled, timeout=WAIT)


@pytest.mark.parametrize("command", ["run", "cloud"])
def test_retry_in_the_ui_reruns_the_failed_jobs_as_attempt_2(world, command, docker_client):
    emulator, cli, project = world
    xgroup = f"retry-{command}-{uuid.uuid4().hex[:6]}"
    run_id, rows = _failed_group(cli, xgroup, command)
    failed = {r["key"] for r in rows if r["state"] == "FAILED"}
    assert len(failed) == 1 and len(rows) == 2, rows

    (project / "trainer" / "train.py").write_text(FIXED)
    answer = _set_state(cli, run_id, RETRY_CLASSIC, force=False)
    assert answer["status"] == "ACCEPT", answer

    seen: list[list[dict]] = []

    def all_succeeded():
        seen.append(status(cli, xgroup))
        return seen[-1] if all(r["state"] == "SUCCEEDED" for r in seen[-1]) else None

    try:  # Vertex: status settles the run, as ever
        rows = wait_for(all_succeeded, timeout=WAIT)
    except AssertionError:
        raise AssertionError(f"not all SUCCEEDED: {seen[-1:]}; run {_run(cli, run_id)}") from None
    run = _ended_after(cli, run_id, 2, xgroup)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    for r in rows:  # the failed job reran as attempt 2, in the same run; the other did not
        assert r["flow_run_id"] == run_id
        assert (r["attempt"], r["attempts"]) == ((2, 2) if r["key"] in failed else (1, 1)), r
    (key,) = failed
    everything = status_all(cli, xgroup)
    first = next(r for r in everything if r["key"] == key and r["attempt"] == 1)
    assert first["state"] == "FAILED"  # attempt 1 kept as it was
    assert first["exit_code"] == 3  # Vertex says it too: "non-zero status of 3"
    if command == "run":
        [container] = docker_client.containers.list(
            all=True, filters={"label": [f"caliban.job_key={key}", "caliban.attempt=2"]}
        )
        assert "fixed with" in container.logs().decode()  # rebuilt from the current code
    else:
        attempts = sorted(
            int(j.labels["caliban_attempt"])
            for j in emulator.jobs()
            if j.labels.get("caliban_job_key") == key
        )
        assert attempts == [1, 2]
        images = {r["attempt"]: r["image"] for r in everything if r["key"] == key}
        assert images[1] != images[2] and images[2].startswith("127.0.0.1:5000/")


def status_all(cli, xgroup: str) -> list[dict]:
    done = cli("status", "--xgroup", xgroup, "--max_jobs", "0", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _running(cli, xgroup: str) -> list[dict] | None:
    """The group's rows once its job runs (before the run exists, status says so: exit 2)."""
    done = cli("status", "--xgroup", xgroup, "--format", "json")
    rows = json.loads(done.stdout) if done.returncode == 0 else []
    return rows if rows and rows[0]["state"] == "RUNNING" else None


def _run_in_background(cli, xgroup: str, stdout) -> subprocess.Popen:
    """`caliban run` of exp.json in the project, left running."""
    argv = [str(BIN / "caliban"), "run", "--nogpu", "--xgroup", xgroup,
            "--experiment_config", "exp.json", "trainer.train"]  # fmt: skip
    return subprocess.Popen(argv, cwd=cli.cwd, env=cli.env, stdout=stdout,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def test_cancel_in_the_ui_stops_a_local_groups_containers(world, docker_client):
    _, cli, project = world
    xgroup = f"cancel-{uuid.uuid4().hex[:6]}"
    (project / "exp.json").write_text('{"sleep": [600]}')
    running = _run_in_background(cli, xgroup, stdout=subprocess.PIPE)
    try:
        rows = wait_for(lambda: _running(cli, xgroup))
        run_id = rows[0]["flow_run_id"]
        _set_state(cli, run_id, CANCEL, force=True)
        output, _ = running.communicate(timeout=120)  # the caliban run ends by itself
    finally:
        if running.poll() is None:
            running.kill()
            running.wait()
    assert running.returncode == 1, output
    assert _run(cli, run_id)["state"]["type"] == "CANCELLED"
    assert [r["state"] for r in status(cli, xgroup)] == ["STOPPED"]
    live = docker_client.containers.list(filters={"label": [f"caliban.xgroup={xgroup}"]})
    assert live == []


def test_resubmit_refuses_a_run_still_at_work_in_one_line(world):
    _, cli, project = world
    xgroup = f"busy-{uuid.uuid4().hex[:6]}"
    (project / "exp.json").write_text('{"sleep": [600], "exit": [3]}')
    running = _run_in_background(cli, xgroup, stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: _running(cli, xgroup))
        done = cli("resubmit", "--xgroup", xgroup, "--all_jobs", "--yes")
    finally:
        stop = cli("stop", "--xgroup", xgroup, "--yes")
        running.wait(timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "still at work" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_the_ui_offers_retry_on_a_failed_group(world):
    _, cli, _ = world
    chromium = browser.ensure_chromium()
    assert chromium
    xgroup = f"button-{uuid.uuid4().hex[:6]}"
    run_id, _ = _failed_group(cli, xgroup, "run")
    ui = api_url(cli).rstrip("/").removesuffix("/api")
    url = f"{ui}/flow-runs/flow-run/{run_id}"  # the classic UI's page of the run
    login = cdp.prefect_login(auth_string(cli) or "")  # what the UI's login form keeps
    dom = browser.dump_dom_until(url, [xgroup, "Retry"], timeout=90, local_storage=login)
    lines = browser.visible_text(dom).splitlines()
    assert "Retry" in lines and "caliban-group" in lines, "\n".join(lines[:60])
