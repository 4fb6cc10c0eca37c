"""`caliban cloud` end to end against the Vertex AI emulator, as a user types it.

The real `aiplatform_v1` client in `caliban` speaks gRPC to `devtools.vertex_emulator` on
loopback ($CALIBAN_VERTEX_ENDPOINT). With run_containers=True the emulator pulls the pushed
image from the local registry and runs it on the local dockerd, so a job's state is a real
program's exit code. Prefect is the real embedded server.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, caliban_runner, wait_for
from tests.prefect_http import auth_headers

TRAIN = """\
import sys, time
args = sys.argv[1:]
print("training with", args, flush=True)
if "--sleep" in args:
    time.sleep(float(args[args.index("--sleep") + 1]))
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
IMAGE = "127.0.0.1:5000/caliban-tests/prebuilt:1"  # never pulled in simulated mode


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (tmp_path / "requirements.txt").write_text("")
    return tmp_path


def make_cli(project: Path, home: Path, emulator: VertexEmulator):
    env = {
        **os.environ,
        "CALIBAN_HOME": str(home),
        "HOME": str(project.parent / "home"),
        **emulator.client_env(emulator.new_key()),
        "CALIBAN_VERTEX_POLL_SECONDS": "0.2",
        "CALIBAN_REGISTRY": "127.0.0.1:5000",
        "PROJECT_ID": "caliban-test",
    }
    env.pop("PREFECT_API_URL", None)
    return caliban_runner(project, env)


@pytest.fixture
def simulated(caliban_home, project):
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=7) as emulator:
        yield emulator, make_cli(project, caliban_home, emulator)


@pytest.fixture
def real(caliban_home, project):
    with VertexEmulator(run_containers=True, workers=4) as emulator:
        yield emulator, make_cli(project, caliban_home, emulator)


def status(cli, xgroup: str) -> list[dict]:
    done = cli("status", "--xgroup", xgroup, "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def api_url(cli) -> str:
    code = "from caliban_flows.server import backend; print(backend.api_url())"
    out = subprocess.run([str(BIN / "python"), "-c", code], env=cli.env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout.strip()


def flow_run(cli, flow_run_id: str) -> dict:
    url = f"{api_url(cli)}/flow_runs/{flow_run_id}"
    return httpx.get(url, timeout=10, headers=auth_headers(cli)).json()


def flow_run_state(cli, flow_run_id: str) -> str:
    return flow_run(cli, flow_run_id)["state"]["type"]


def run_events(cli, flow_run_id: str) -> list[str]:
    """The event names Prefect recorded for one flow run."""
    body = {"filter": {"resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                       "occurred": {"since": "2020-01-01T00:00:00Z"}}, "limit": 50}  # fmt: skip
    page = httpx.post(f"{api_url(cli)}/events/filter", json=body, timeout=10,
                      headers=auth_headers(cli)).json()  # fmt: skip
    return [e["event"] for e in page["events"]]


def sweep(project: Path, n: int) -> None:
    (project / "exp.json").write_text(json.dumps({"i": list(range(n))}))


def test_cloud_sweep_runs_the_pushed_image_then_status_settles(real, project):
    emulator, cli = real
    xgroup = f"vx-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"exit": [0, 3]}')
    done = cli("cloud", "--nogpu", "--xgroup", xgroup, "--experiment_config", "exp.json",
               "trainer.train", "--", "--tag", "x")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 jobs submitted to Vertex AI" in done.stderr
    [job] = {j.job_spec.worker_pool_specs[0].container_spec.image_uri for j in emulator.jobs()}
    assert job.startswith("127.0.0.1:5000/caliban/")  # built here, pushed, pulled by "Vertex"

    rows = wait_for(lambda: (r := status(cli, xgroup)) and all(
        x["state"] in ("SUCCEEDED", "FAILED") for x in r) and r)  # fmt: skip
    assert [r["args"] for r in rows] == [
        ["--tag", "x", "--exit", "0"],
        ["--tag", "x", "--exit", "3"],
    ]
    assert [r["state"] for r in rows] == ["SUCCEEDED", "FAILED"]
    assert "exit code 3" in rows[1]["detail"]
    assert all(r["platform"] == "vertex" and r["remote_id"].startswith("projects/caliban-test/")
               for r in rows)  # fmt: skip
    assert all(r["console_url"].startswith("https://console.cloud.google.com/") for r in rows)
    # Status settled the group's run: its jobs ended, one failed.
    assert flow_run_state(cli, rows[0]["flow_run_id"]) == "FAILED"

    again = cli("cloud", "--nogpu", "--xgroup", xgroup, "--experiment_config", "exp.json",
                "trainer.train", "--", "--tag", "x")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert sorted(emulator.creates_by_key().values()) == [1, 1]  # nothing submitted twice

    # Fix the code and resubmit the failed job: attempt 2 succeeds.
    (project / "trainer" / "train.py").write_text("import sys\nprint('fixed')\n")
    redo = cli("resubmit", "--xgroup", xgroup, "--yes")
    assert redo.returncode == 0, redo.stdout + redo.stderr
    rows = wait_for(lambda: (r := status(cli, xgroup)) and all(
        x["state"] == "SUCCEEDED" for x in r) and r)  # fmt: skip
    assert [(r["attempt"], r["attempts"]) for r in rows] == [(1, 1), (2, 2)]


def test_wait_follows_the_jobs_and_stop_cancels_them(real, project):
    emulator, cli = real
    xgroup = f"vw-{uuid.uuid4().hex[:8]}"
    (project / "exp.json").write_text('{"exit": [0, 4]}')
    done = cli("cloud", "--nogpu", "--wait", "--xgroup", xgroup, "--experiment_config",
               "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "1 succeeded, 1 failed" in done.stderr and "1 of 2 jobs failed" in done.stderr

    long = f"vs-{uuid.uuid4().hex[:8]}"
    started = cli("cloud", "--nogpu", "--xgroup", long, "trainer.train", "--", "--sleep", "600")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: status(cli, long)[0]["state"] == "RUNNING")
    stopped = cli("stop", "--xgroup", long, "--yes")
    assert stopped.returncode == 0, stopped.stderr

    def long_job_states() -> list[str]:
        pools = [(j, j.job_spec.worker_pool_specs[0]) for j in emulator.jobs()]
        return [j.state.name for j, pool in pools if "600" in list(pool.container_spec.args)]

    wait_for(lambda: long_job_states() == ["JOB_STATE_CANCELLED"])
    assert status(cli, long)[0]["state"] == "STOPPED"


def test_a_thousand_submissions_under_injected_errors_make_no_duplicates(simulated, project):
    emulator, cli = simulated
    emulator.error_rate = 0.2  # 429 and 503 answers; half of those on creates lose the response
    sweep(project, 1000)
    xgroup = f"v1k-{uuid.uuid4().hex[:8]}"
    start = time.perf_counter()
    # A project whose quota was raised: the injected errors, not the pace, are under test.
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--max_qps", "500", "--submit_quota",
               "30000", "--manage_quota", "30000", "--xgroup", xgroup, "--experiment_config",
               "exp.json", "trainer.train")  # fmt: skip
    took = time.perf_counter() - start
    creates = emulator.creates_by_key()
    calls = emulator.calls()
    print(f"\n1,000 jobs under 20% injected 429/503: {took:.1f} s, "
          f"{calls['CreateCustomJob']} create calls, {len(creates)} keys created, "
          f"{emulator.duplicates()} duplicates")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(creates) == 1000 and emulator.duplicates() == 0
    assert calls["CreateCustomJob"] > 1000  # errors really happened and were retried
    assert len(status(cli, xgroup)) == 1000


def test_a_submission_killed_at_a_random_point_then_rerun_makes_each_job_once(simulated, project):
    emulator, cli = simulated
    emulator.latency = 0.02
    n = 300
    sweep(project, n)
    xgroup = f"vk-{uuid.uuid4().hex[:8]}"
    argv = ["cloud", "--nogpu", "--image_tag", IMAGE, "--max_qps", "100", "--submit_quota", "6000",
            "--xgroup", xgroup, "--experiment_config", "exp.json", "trainer.train"]  # fmt: skip
    kill_after = random.randint(1, n - 50)
    first = subprocess.Popen([str(BIN / "caliban"), *argv], cwd=project, env=cli.env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        wait_for(lambda: len(emulator.creates_by_key()) >= kill_after)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = len(emulator.creates_by_key())
    again = cli(*argv)
    creates = emulator.creates_by_key()
    print(f"\nSIGKILL after {before} of {n} creates, then rerun: {len(creates)} jobs, "
          f"{emulator.duplicates()} duplicates")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(creates) == n and emulator.duplicates() == 0
    assert before < n  # it really was killed part-way


def test_a_job_that_ended_while_nothing_watched_shows_its_truth(simulated, project):
    emulator, cli = simulated
    emulator.hold(True)
    xgroup = f"vn-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup, "trainer.train")
    assert done.returncode == 0, done.stderr
    row = wait_for(lambda: (r := status(cli, xgroup)[0])["state"] == "RUNNING" and r)
    assert flow_run_state(cli, row["flow_run_id"]) == "RUNNING"
    emulator.finish(row["remote_id"], "JOB_STATE_FAILED")  # nothing of ours is running now
    after = status(cli, xgroup)[0]
    assert after["state"] == "FAILED"
    assert flow_run_state(cli, row["flow_run_id"]) == "FAILED"

    # Settled with every job ended: the run records them, so status asks Vertex no more.
    from caliban_flows.state import records

    with httpx.Client(base_url=api_url(cli), timeout=10, headers=auth_headers(cli)) as http:
        recorded = records.read(http, [row["flow_run_id"]])[1][row["flow_run_id"]]
    assert [(j["remote_id"], j["state"]) for j in recorded] == [(row["remote_id"], "FAILED")]
    lists = emulator.calls()["ListCustomJobs"]
    again = status(cli, xgroup)[0]
    assert emulator.calls()["ListCustomJobs"] == lists
    assert {k: again[k] for k in ("state", "remote_id", "detail", "console_url")} == {
        k: after[k] for k in ("state", "remote_id", "detail", "console_url")
    }


def test_a_vertex_group_says_completed_once_when_its_jobs_end(simulated, project):
    """Triggers on prefect.flow-run.Completed must not fire when the jobs are only submitted."""
    emulator, cli = simulated
    emulator.hold(True)
    xgroup = f"ve-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup, "trainer.train")
    assert done.returncode == 0, done.stderr
    row = status(cli, xgroup)[0]
    events = lambda: run_events(cli, row["flow_run_id"])  # noqa: E731
    wait_for(lambda: "prefect.flow-run.Submitted" in events())
    assert "prefect.flow-run.Completed" not in events()
    emulator.finish(row["remote_id"], "JOB_STATE_SUCCEEDED")
    assert status(cli, xgroup)[0]["state"] == "SUCCEEDED"
    wait_for(lambda: "prefect.flow-run.Completed" in events())
    assert events().count("prefect.flow-run.Completed") == 1


def state_history(cli, flow_run_id: str) -> list[tuple[str, str]]:
    """Every state the run entered, oldest first, as (type, name)."""
    got = httpx.get(f"{api_url(cli)}/flow_run_states/", params={"flow_run_id": flow_run_id},
                    timeout=10, headers=auth_headers(cli)).json()  # fmt: skip
    ordered = sorted(got, key=lambda s: s["timestamp"])
    return [(s["type"], s["name"]) for s in ordered]


def test_a_live_vertex_group_is_never_recorded_as_ended(simulated, project):
    """Submitted is one write, RUNNING to RUNNING: no moment says ended while a job runs."""
    emulator, cli = simulated
    emulator.hold(True)
    sweep(project, 2)
    xgroup = f"vs-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup,
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = status(cli, xgroup)
    assert [r["state"] for r in rows] == ["RUNNING", "RUNNING"], rows
    run_id = rows[0]["flow_run_id"]
    assert state_history(cli, run_id) == [
        ("PENDING", "Pending"),
        ("RUNNING", "Running"),
        ("RUNNING", "Submitted"),
    ]
    for row in rows:
        emulator.finish(row["remote_id"], "JOB_STATE_SUCCEEDED")
    assert {r["state"] for r in status(cli, xgroup)} == {"SUCCEEDED"}
    assert state_history(cli, run_id)[3:] == [("COMPLETED", "Completed")]


def test_cancelling_the_flow_run_in_prefect_cancels_the_remote_jobs(simulated, project):
    emulator, cli = simulated
    emulator.hold(True)
    sweep(project, 3)
    xgroup = f"vc-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup,
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id = status(cli, xgroup)[0]["flow_run_id"]
    # What the UI's Cancel button does.
    body = {"state": {"type": "CANCELLING", "message": "cancelled in the UI"}, "force": True}
    httpx.post(f"{api_url(cli)}/flow_runs/{run_id}/set_state", json=body, timeout=10,
               headers=auth_headers(cli))  # fmt: skip
    status(cli, xgroup)  # the next reconcile
    wait_for(lambda: {j.state.name for j in emulator.jobs()} == {"JOB_STATE_CANCELLED"})
    assert {r["state"] for r in status(cli, xgroup)} == {"STOPPED"}
    assert flow_run_state(cli, run_id) == "CANCELLED"


def test_an_unreachable_prefect_api_fails_fast_and_submits_nothing(simulated, project):
    emulator, cli = simulated
    env = {**cli.env, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    start = time.perf_counter()
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "trainer.train", env=env)
    took = time.perf_counter() - start
    print(f"\nunreachable Prefect API: exit {done.returncode} after {took:.2f} s")
    assert done.returncode == 1  # how fast: the printed figure, not a threshold here
    assert done.stderr.count("\n") == 1 and "is not answering" in done.stderr
    assert emulator.calls()["CreateCustomJob"] == 0


def test_defaults_from_a_prefect_vertex_settings_block(simulated, project):
    emulator, cli = simulated
    name = f"vb-{uuid.uuid4().hex[:8]}"
    save = (
        "from caliban_flows.server import backend; backend.use_backend()\n"
        "from caliban_flows.blocks.vertex import VertexSettings\n"
        f"VertexSettings(project='from-block', region='europe-west4', max_qps=50,"
        f" service_account='jobs@from-block.iam.gserviceaccount.com').save({name!r})\n"
    )
    saved = subprocess.run([str(BIN / "python"), "-c", save], env=cli.env, cwd=project,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    env = {k: v for k, v in cli.env.items() if k != "PROJECT_ID"}
    done = cli("cloud", "--nogpu", "--vertex_block", name, "--image_tag", IMAGE, "--xgroup", name,
               "trainer.train", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    [job] = emulator.jobs()
    assert job.name.startswith("projects/from-block/locations/europe-west4/")
    assert job.job_spec.service_account == "jobs@from-block.iam.gserviceaccount.com"

    missing = cli("cloud", "--nogpu", "--vertex_block", "no-such", "--image_tag", IMAGE,
                  "trainer.train")  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no-such" in missing.stderr


def test_a_pool_caps_running_jobs_across_groups_and_stop_frees_its_slots(simulated, project):
    emulator, cli = simulated
    emulator.hold(True)
    pool = f"p{uuid.uuid4().hex[:6]}"
    first, second = f"vp-{uuid.uuid4().hex[:6]}", f"vq-{uuid.uuid4().hex[:6]}"
    sweep(project, 2)
    for xgroup, config in ((first, ["--experiment_config", "exp.json"]), (second, [])):
        done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup, "--pool", pool,
                   "--max_running", "1", *config, "trainer.train")  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert len(emulator.jobs()) == 1  # one slot in the pool: the first group's first job
    assert [r["state"] for r in status(cli, second)] == ["QUEUED"]
    [started, queued] = [r["state"] for r in status(cli, first)]
    assert started in ("SUBMITTED", "RUNNING") and queued == "QUEUED"

    stop = cli("stop", "--xgroup", first, "--yes")
    assert stop.returncode == 0, stop.stdout + stop.stderr
    # The stopped job's slot goes to the next in line: the second group's job, not the
    # first group's queued one.
    row = wait_for(lambda: (r := status(cli, second)[0])["state"] == "RUNNING" and r)
    assert len(emulator.jobs()) == 2
    assert {r["state"] for r in status(cli, first)} == {"STOPPED"}
    limit = httpx.get(f"{api_url(cli)}/v2/concurrency_limits/caliban-vertex-pool-{pool}",
                      timeout=10, headers=auth_headers(cli)).json()  # fmt: skip
    assert (limit["limit"], limit["active_slots"]) == (1, 1)
    emulator.finish(row["remote_id"], "JOB_STATE_SUCCEEDED")
    assert status(cli, second)[0]["state"] == "SUCCEEDED"
    limit = httpx.get(f"{api_url(cli)}/v2/concurrency_limits/caliban-vertex-pool-{pool}",
                      timeout=10, headers=auth_headers(cli)).json()  # fmt: skip
    assert limit["active_slots"] == 0


def test_cloud_key_is_the_identity_jobs_are_submitted_with(simulated, project, tmp_path):
    """The emulator checks every call's credentials, as Vertex does: a key it refuses stops
    the submission in one line, before any job; --cloud_key wins over the environment's key."""
    emulator, cli = simulated
    emulator.hold(True)
    refused = emulator.new_key(tmp_path / "refused.json", trusted=False)
    accepted = emulator.new_key(tmp_path / "accepted.json")
    created = len(emulator.jobs())

    xgroup = f"vk-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup,
               "--cloud_key", str(refused), "trainer.train")  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if not ln.startswith("waited ")]  # start-up
    assert len(lines) == 1 and "invalid authentication credentials" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert len(emulator.jobs()) == created

    # The environment names the refused key; the flag's key is the one used, then and after.
    env = {**cli.env, "GOOGLE_APPLICATION_CREDENTIALS": str(refused)}
    done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup,
               "--cloud_key", str(accepted), "trainer.train", env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(emulator.jobs()) == created + 1
    shown = cli("status", "--xgroup", xgroup, "--format", "json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert [r["state"] for r in json.loads(shown.stdout)] == ["RUNNING"]

    # The key is deleted from its account after the job failed: a resubmit with a new key
    # (--cloud_key) lists and reruns with that one, and records it for what comes after.
    emulator.finish(emulator.jobs()[-1].name, "JOB_STATE_FAILED")
    emulator.revoke(accepted)
    renewed = emulator.new_key(tmp_path / "renewed.json")
    stale = cli("resubmit", "--xgroup", xgroup, "--yes", env=env)
    assert stale.returncode == 1 and "Traceback" not in stale.stderr, stale.stderr
    assert len(emulator.jobs()) == created + 1
    missing = cli("resubmit", "--xgroup", xgroup, "--yes", "--cloud_key", "missing.json")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    again = cli("resubmit", "--xgroup", xgroup, "--yes", "--cloud_key", str(renewed), env=env)
    assert again.returncode == 0, again.stderr
    assert len(emulator.jobs()) == created + 2
    shown = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "2", env=env)
    assert shown.returncode == 0, shown.stderr
    assert sorted(r["attempt"] for r in json.loads(shown.stdout)) == [1, 2]
