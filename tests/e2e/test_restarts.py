"""--max_restarts end to end: a Spot sweep on the Vertex emulator, some of its jobs preempted
(one twice) while nobody watches; `caliban status` rounds restart them as attempt 2, 3, and a
job that fails in its own code is left failed."""

from __future__ import annotations

import json
import subprocess
import uuid

import httpx
import pytest

from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, wait_for
from tests.e2e.test_vertex_e2e import (  # noqa: F401 (fixtures)
    IMAGE,
    api_url,
    make_cli,
    project,
    sweep,
)
from tests.prefect_http import auth_headers

JOBS, PREEMPTED = 40, 10


@pytest.fixture
def held(caliban_home, project):  # noqa: F811
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=11) as emulator:
        emulator.hold(True)  # simulated jobs stay RUNNING until released
        yield emulator, make_cli(project, caliban_home, emulator)


def rows(cli, xgroup: str, *extra: str) -> list[dict]:
    done = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "0", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def running(emulator, keys) -> bool:
    newest: dict[str, str] = {}
    for job in emulator.jobs():
        key = job.labels.get("caliban_job_key")
        if key in keys:
            newest[key] = job.state.name
    return len(newest) == len(keys) and all(s == "JOB_STATE_RUNNING" for s in newest.values())


def events(cli, name: str, xgroup: str) -> list[dict]:
    body = {"filter": {"event": {"name": [name]},
                       "resource": {"id_prefix": [f"caliban.job.{xgroup}."]},
                       "occurred": {"since": "2020-01-01T00:00:00Z"}}, "limit": 50}  # fmt: skip
    page = httpx.post(f"{api_url(cli)}/events/filter", json=body, timeout=10,
                      headers=auth_headers(cli)).json()  # fmt: skip
    return page["events"]


def test_preempted_jobs_come_back_and_a_code_failure_does_not(held, project):  # noqa: F811
    emulator, cli = held
    sweep(project, JOBS)
    xgroup = f"spot-{uuid.uuid4().hex[:8]}"
    done = cli("cloud", "--nogpu", "--spot", "--image_tag", IMAGE, "--xgroup", xgroup,
               "--submit_quota", "6000", "--max_restarts", "2", "--experiment_config",
               "exp.json", "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    keys = sorted({r["key"] for r in rows(cli, xgroup)})
    assert len(keys) == JOBS
    wait_for(lambda: running(emulator, keys))

    preempted, twice, broken = keys[:PREEMPTED], keys[0], keys[-1]
    for key in preempted:
        emulator.preempt(key)
    emulator.set_outcome(broken, "JOB_STATE_FAILED")  # its own code fails when released

    # Nobody follows the group: one status round restarts what the infrastructure ended.
    first = {r["key"]: r for r in rows(cli, xgroup)}
    assert all(first[k]["attempt"] == 2 and first[k]["restart_reason"] for k in preempted)
    assert "preempted" in first[twice]["restart_reason"]
    wait_for(lambda: running(emulator, keys))
    emulator.preempt(twice)
    again = {r["key"]: r for r in rows(cli, xgroup)}
    assert again[twice]["attempt"] == 3
    wait_for(lambda: running(emulator, keys))

    emulator.hold(False)  # every job ends now
    wait_for(lambda: all(r["state"] in ("SUCCEEDED", "FAILED") for r in rows(cli, xgroup)))
    final = rows(cli, xgroup)
    by_key = {r["key"]: r for r in final}
    attempts = {k: sum(1 for j in emulator.jobs() if j.labels.get("caliban_job_key") == k)
                for k in keys}  # fmt: skip
    for key in keys:
        expected = 3 if key == twice else 2 if key in preempted else 1
        assert attempts[key] == expected, key
        assert by_key[key]["attempt"] == expected
    assert by_key[broken]["state"] == "FAILED" and by_key[broken]["restart_reason"] is None
    assert all(by_key[k]["state"] == "SUCCEEDED" for k in keys if k != broken)
    made = [(j.labels.get("caliban_job_key"), j.labels.get("caliban_attempt"))
            for j in emulator.jobs()]  # fmt: skip
    assert len(made) == len(set(made)) == JOBS + PREEMPTED + 1  # each attempt made once
    # Prefect stores events in batches: wait for them
    wait_for(lambda: len(events(cli, "caliban.job.restarted", xgroup)) == PREEMPTED + 1)
    restarted = events(cli, "caliban.job.restarted", xgroup)
    assert all("preempted" in e["payload"]["reason"] for e in restarted)
    wait_for(lambda: len(events(cli, "caliban.job.preempted", xgroup)) == PREEMPTED + 1)


def test_a_group_followed_with_wait_restarts_its_own_jobs(held, project):  # noqa: F811
    emulator, cli = held
    sweep(project, 3)
    xgroup = f"spotw-{uuid.uuid4().hex[:8]}"
    argv = [str(BIN / "caliban"), "cloud", "--nogpu", "--spot", "--wait", "--image_tag", IMAGE,
            "--xgroup", xgroup, "--max_restarts", "1", "--experiment_config", "exp.json",
            "trainer.train"]  # fmt: skip
    follower = subprocess.Popen(argv, cwd=project, env=cli.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(lambda: len(emulator.jobs()) == 3)
        keys = sorted({j.labels.get("caliban_job_key") for j in emulator.jobs()})
        wait_for(lambda: running(emulator, keys))
        emulator.preempt(keys[0])
        # the follower itself restarts it: a second job for that key, running
        wait_for(lambda: sum(1 for j in emulator.jobs()
                             if j.labels.get("caliban_job_key") == keys[0]) == 2)  # fmt: skip
        wait_for(lambda: running(emulator, keys))
        emulator.hold(False)
        _, err = follower.communicate(timeout=240)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    by_key = {r["key"]: r for r in rows(cli, xgroup)}
    assert by_key[keys[0]]["attempt"] == 2 and by_key[keys[0]]["state"] == "SUCCEEDED"
    assert "preempted" in by_key[keys[0]]["restart_reason"]
    assert all(by_key[k]["state"] == "SUCCEEDED" and by_key[k]["attempt"] == 1 for k in keys[1:])


def test_kubernetes_jobs_survive_disruptions_within_max_restarts(caliban_home, project):  # noqa: F811
    """The same on Kubernetes: a 40-job sweep, 10 of its pods disrupted (one job twice); each
    Job's podFailurePolicy replaces a pod with the DisruptionTarget condition, up to
    --max_restarts; status and events tell each one, and a code failure is not retried."""
    from devtools.k8s_emulator import K8sEmulator
    from tests.e2e import test_kubernetes_e2e as k8s

    sweep(project, JOBS)
    xgroup = f"k8spot-{uuid.uuid4().hex[:8]}"
    with K8sEmulator(run_containers=False, sim_step=0.05, seed=5) as emulator:
        cli = k8s.make_cli(project, caliban_home, emulator)
        emulator.hold(True)
        done = cli(*k8s.SUBMIT, "--image_tag", k8s.IMAGE, "--xgroup", xgroup, "--max_restarts",
                   "2", "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
        assert done.returncode == 0, done.stderr
        keys = sorted(r["key"] for r in rows(cli, xgroup))
        disrupted, twice, evicted, broken = keys[:PREEMPTED], keys[0], keys[1], keys[-1]
        for key in disrupted:
            emulator.preempt(key, "EvictionByEvictionAPI" if key == evicted else
                             "PreemptionByScheduler")  # fmt: skip
        emulator.preempt(twice)
        emulator.set_outcome(broken, "Failed", exit_code=3)  # its own code: not restarted
        emulator.hold(False)
        wait_for(lambda: all(r["state"] in ("SUCCEEDED", "FAILED") for r in rows(cli, xgroup)))
        by_key = {r["key"]: r for r in rows(cli, xgroup)}
    for key in keys:
        expected = 2 if key == twice else 1 if key in disrupted else 0
        assert len(by_key[key]["restarts"]) == expected, key
    assert by_key[evicted]["restarts"] == ["evicted (EvictionByEvictionAPI)"]
    assert by_key[broken]["state"] == "FAILED" and by_key[broken]["exit_code"] == 3
    assert all(by_key[k]["state"] == "SUCCEEDED" for k in keys if k != broken)
    # Prefect stores events in batches: wait for them
    wait_for(lambda: len(events(cli, "caliban.job.restarted", xgroup)) == PREEMPTED + 1)
    wait_for(lambda: len(events(cli, "caliban.job.preempted", xgroup)) == PREEMPTED + 1)
