"""`caliban serve` keeps Prefect true with nobody running `caliban status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import httpx
import pytest

from caliban_flows.plan.inputs import current_user
from caliban_flows.spec import vertex_job as vj
from caliban_flows.state.limits import limit_name
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, wait_for
from tests.e2e.test_vertex_e2e import IMAGE, api_url, make_cli, status
from tests.prefect_http import auth_headers


@pytest.fixture
def served(caliban_home, tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text("print('hi')\n")
    with VertexEmulator(run_containers=False, sim_step=0.05) as emulator:
        emulator.hold(True)  # jobs stay RUNNING until a test ends them
        cli = make_cli(tmp_path, caliban_home, emulator)
        # Its output goes to a file: an undrained pipe fills (64 KiB) and blocks the service.
        log = (tmp_path / "serve.log").open("w")
        service = subprocess.Popen([str(BIN / "caliban"), "serve", "--interval", "3"],
                                   cwd=tmp_path, env=cli.env, stdout=log,
                                   stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            yield emulator, cli
        finally:
            log.close()
            print(f"caliban serve wrote {(tmp_path / 'serve.log').stat().st_size} bytes")
            service.send_signal(signal.SIGINT)
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                service.wait()
            log.close()


def artifacts(api: str, run_id: str, auth: dict[str, str]) -> dict[str, dict]:
    """The newest artifact of each type on the run (a reconcile adds a new version)."""
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC"}
    found = httpx.post(f"{api}/artifacts/filter", json=body, timeout=10, headers=auth).json()
    newest: dict[str, dict] = {}
    for artifact in found:
        newest.setdefault(artifact["type"], artifact)
    return newest


def test_the_service_settles_ended_jobs_and_carries_ui_cancels(served, tmp_path):
    emulator, cli = served
    (tmp_path / "exp.json").write_text('{"i": [1, 2]}')
    ended, cancelled = f"se-{uuid.uuid4().hex[:6]}", f"sc-{uuid.uuid4().hex[:6]}"
    for xgroup in (ended, cancelled):
        done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup,
                   "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
        assert done.returncode == 0, done.stderr
    rows = status(cli, ended)
    run_id = rows[0]["flow_run_id"]
    api, auth = api_url(cli), auth_headers(cli)

    # The run carries its job table and summary, kept current by the service.
    table = wait_for(lambda: artifacts(api, run_id, auth).get("table"))
    assert sorted(r["name"] for r in json.loads(table["data"])) == sorted(r["name"] for r in rows)
    summary = artifacts(api, run_id, auth)["markdown"]["data"]
    assert f"# xgroup `{ended}`" in summary and "console.cloud.google.com" in summary

    for row in rows:  # the jobs end; nobody of ours is looking
        emulator.finish(row["remote_id"], "JOB_STATE_SUCCEEDED")
    run_state = f"{api}/flow_runs/{run_id}"
    wait_for(lambda: httpx.get(run_state, timeout=10, headers=auth).json()["state"]["type"]
             == "COMPLETED", timeout=60)  # fmt: skip
    final = wait_for(lambda: (t := artifacts(api, run_id, auth)["table"]) and all(
        r["state"] == "SUCCEEDED" for r in json.loads(t["data"])))  # fmt: skip
    assert final

    # Cancel in the UI; the service cancels the remote jobs.
    before = status(cli, cancelled)
    names = {r["remote_id"] for r in before}
    body = {"state": {"type": "CANCELLING"}, "force": True}
    httpx.post(f"{api}/flow_runs/{before[0]['flow_run_id']}/set_state", json=body, timeout=10,
               headers=auth)  # fmt: skip
    wait_for(lambda: {j.state.name for j in emulator.jobs() if j.name in names}
             == {"JOB_STATE_CANCELLED"}, timeout=60)  # fmt: skip


def concurrency_limit(api: str, name: str, auth: dict[str, str]) -> dict:
    return httpx.get(f"{api}/v2/concurrency_limits/{name}", timeout=10, headers=auth).json()


def test_the_service_submits_queued_jobs_as_max_running_slots_free(served, tmp_path):
    """The submitting process has exited; the service frees each slot and fills it."""
    emulator, cli = served
    (tmp_path / "exp.json").write_text('{"i": [1, 2, 3]}')
    xgroup = f"sq-{uuid.uuid4().hex[:6]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup, "--max_running",
               "1", "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 jobs submitted to Vertex AI, 2 queued behind --max_running 1" in done.stderr
    api, auth = api_url(cli), auth_headers(cli)
    limit = limit_name("vertex", xgroup, user=current_user())
    assert concurrency_limit(api, limit, auth)["limit"] == 1
    assert concurrency_limit(api, limit, auth)["active_slots"] == 1

    group_id = vj.xgroup_id(xgroup)
    mine = lambda: [j for j in emulator.jobs() if j.labels[vj.XGROUP_ID_LABEL] == group_id]  # noqa: E731
    for n in (1, 2, 3):
        [job] = wait_for(lambda n=n: len(mine()) == n and [j for j in mine()
                         if j.state.name == "JOB_STATE_RUNNING"], timeout=60)  # fmt: skip
        assert concurrency_limit(api, limit, auth)["active_slots"] == 1
        emulator.finish(job.name, "JOB_STATE_SUCCEEDED")
    wait_for(lambda: concurrency_limit(api, limit, auth)["active_slots"] == 0, timeout=60)
    assert len(mine()) == 3 and {j.state.name for j in mine()} == {"JOB_STATE_SUCCEEDED"}
    assert max(emulator.creates_by_key().values()) == 1


def rounds(api: str, auth: dict[str, str], *states: str) -> list[dict]:
    """The reconcile deployment's runs in these states, newest first."""
    body = {"deployments": {"name": {"any_": ["caliban-reconcile"]}},
            "flow_runs": {"state": {"type": {"any_": list(states)}}},
            "sort": "EXPECTED_START_TIME_DESC"}  # fmt: skip
    return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10, headers=auth).json()


def state_of(api: str, auth: dict[str, str], flow_run_id: str) -> dict:
    return httpx.get(f"{api}/flow_runs/{flow_run_id}", timeout=10, headers=auth).json()["state"]


def test_a_service_killed_mid_round_is_restarted_and_rounds_go_on(tmp_path):
    """kill -9 of the service and its round leaves the one-round slot held (for the lease's
    300 s); the next `caliban serve` frees it at once, and its rounds go on.

    A home of its own: no group of another test (whose emulator is gone) slows the rounds."""
    home = tmp_path / "home"
    with VertexEmulator(run_containers=False) as emulator:
        cli = make_cli(tmp_path, home, emulator)
        try:
            assert cli("status").returncode == 0  # starts the local Prefect server
            api, auth = api_url(cli), auth_headers(cli)
            argv = [str(BIN / "caliban"), "serve", "--interval", "2"]
            log = (tmp_path / "serve.log").open("w")

            def serve() -> subprocess.Popen:  # in a session of its own, as in a terminal
                return subprocess.Popen(argv, cwd=tmp_path, env=cli.env, stdout=log,
                                        stderr=log, start_new_session=True)  # fmt: skip

            def killed_mid_round() -> list[dict]:
                """Kill a service and its round as soon as a round runs; the rounds left
                held (none if the round ended between the look and the kill)."""
                first = serve()
                try:
                    wait_for(lambda: rounds(api, auth, "PENDING", "RUNNING"))
                finally:
                    os.killpg(first.pid, signal.SIGKILL)
                    first.wait()
                return rounds(api, auth, "PENDING", "RUNNING")

            held = wait_for(killed_mid_round)
            before = {r["id"] for r in rounds(api, auth, "COMPLETED")}
            second = serve()
            try:
                wait_for(lambda: {r["id"] for r in rounds(api, auth, "COMPLETED")} - before)
                for run in held:
                    state = state_of(api, auth, run["id"])
                    assert state["type"] == "CANCELLED", state
                    assert state["message"] == "caliban serve stopped before this round ended"
            finally:
                # ^C to the service and its round, as a terminal sends it. Under heavy load
                # Prefect's runner has been seen to go on serving after it, while it started a
                # round: then the service is killed, as the first one was.
                os.killpg(second.pid, signal.SIGINT)
                try:
                    second.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(second.pid, signal.SIGKILL)
                    second.wait()
                log.close()
        finally:
            stop = [str(BIN / "python"), "-m", "caliban_flows.server.backend", "stop"]
            subprocess.run(stop, env={**os.environ, "CALIBAN_HOME": str(home)}, timeout=60)
