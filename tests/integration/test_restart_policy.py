"""Which ended jobs --max_restarts restarts: the infrastructure's doing, or a named exit code,
within the run's budget; a restart recorded but never submitted is submitted again."""

from __future__ import annotations

from caliban_flows.platforms.base import JobState, RemoteJob
from caliban_flows.platforms.vertex.adapter import infra_reason
from caliban_flows.state.groups import Found, GroupRun, where
from caliban_flows.state.restarts import Policy, due, reason

PREEMPTED = "The replica workerpool0-0 was preempted."


def run(jobs: list[dict], **placement) -> GroupRun:
    return GroupRun(
        xgroup="g", flow_run_id="r", platform="vertex", created="", state="RUNNING",
        message="", recipes=[{}], jobs=jobs,
        placement={"project": "p", "region": "us-central1", **placement},
    )  # fmt: skip


def job(key: str, attempt: int = 1, why: str | None = None) -> dict:
    return {"key": key, "attempt": attempt, "name": key, "args": [], "restart_reason": why}


def ended(key: str, attempt: int = 1, **kw) -> RemoteJob:
    return RemoteJob(key, attempt, f"id-{key}-{attempt}", kw.pop("state", JobState.FAILED), **kw)


def remote(r: GroupRun, *jobs: RemoteJob) -> dict:
    return {where(r): Found(jobs)}


def test_vertex_says_when_its_infrastructure_ended_a_job():
    assert infra_reason(14, PREEMPTED) == PREEMPTED
    assert infra_reason(8, "Resources are insufficient in region") is not None  # a stockout
    assert infra_reason(3, "The replica workerpool0-0 exited with a non-zero status of 1.") is None


def test_only_the_infrastructures_failures_and_named_codes_are_restarted():
    policy = Policy.of({"max_restarts": 2, "restart_on_exit_codes": [137]})
    assert reason(ended("a", infra=PREEMPTED), policy) == PREEMPTED
    assert reason(ended("b", exit_code=137), policy) == "exit code 137"
    assert reason(ended("c", exit_code=1), policy) is None  # the code's own failure
    assert reason(ended("d", state=JobState.SUCCEEDED), policy) is None
    assert reason(ended("e", state=JobState.STOPPED, infra=PREEMPTED), policy) is None


def test_restarts_stop_at_max_restarts():
    r = run([job("a"), job("a", 2, PREEMPTED), job("a", 3, PREEMPTED)], max_restarts=2)
    assert due([r], remote(r, ended("a", 3, infra=PREEMPTED))) == []
    r = run([job("a"), job("a", 2, PREEMPTED)], max_restarts=2)
    (d,) = due([r], remote(r, ended("a", 1, infra=PREEMPTED), ended("a", 2, infra=PREEMPTED)))
    assert (d.job["attempt"], d.reason) == (2, PREEMPTED)


def test_without_max_restarts_nothing_is_restarted():
    r = run([job("a")])
    assert due([r], remote(r, ended("a", infra=PREEMPTED))) == []


def test_a_restart_recorded_but_never_submitted_is_submitted_again():
    r = run([job("a"), job("a", 2, PREEMPTED)], max_restarts=1)
    (d,) = due([r], remote(r, ended("a", 1, infra=PREEMPTED)))
    assert d.ended is None and d.job["attempt"] == 2
