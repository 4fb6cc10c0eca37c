"""Prefect tasks for remote platforms (Vertex AI, Kubernetes): submit a group's jobs at once,
fill --max_running slots, and (optionally) follow the jobs to their end."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from caliban_flows.platforms.base import JobRequest, JobState, RemoteJob
from caliban_flows.platforms.submit import NothingSubmitted
from caliban_flows.state.budgets import prefect_budgets
from caliban_flows.state.reconcile import Platforms
from caliban_flows.state.restarts import Policy, reason
from caliban_flows.tasks.progress import CountProgress

POLL_ENVS = ("CALIBAN_POLL_SECONDS", "CALIBAN_VERTEX_POLL_SECONDS")
LOGGED_JOBS = 20
DEFAULT_POLL_SECONDS = 10.0  # one list call per round; remote jobs take minutes


@task(name="submit-jobs", cache_policy=NO_CACHE)
def submit_jobs(requests: list[JobRequest], platform: str, record: dict) -> list[RemoteJob]:
    """Every job the group lacks, concurrently and paced.

    The first LOGGED_JOBS jobs' console URLs are logged one by one, then one line of counts:
    a log line per job would be most of what a 10,000-job group writes to Prefect, and the
    run's jobs table artifact has every job's link.
    """
    from caliban_flows.platforms import registry

    logger = get_run_logger()
    remote = Platforms.open(platform, record)
    title = registry.get(platform).title
    counts = {True: 0, False: 0}
    with CountProgress(len(requests), f"submitting to {title}") as progress:

        def on_job(job: RemoteJob, new: bool) -> None:
            progress.advance()
            counts[new] += 1
            if counts[True] + counts[False] <= LOGGED_JOBS:
                where = job.console_url or job.remote_id
                logger.info("%s %s: %s", "submitted" if new else "already there", job.key, where)

        max_qps = Platforms.max_qps(platform, record)
        try:
            with prefect_budgets() as budgets:
                return asyncio.run(
                    remote.submit_all(requests, max_qps=max_qps, on_job=on_job, budgets=budgets)
                )
        except NothingSubmitted as e:
            _record_not_submitted(requests, str(e))
            raise
        finally:
            logger.info("%d jobs submitted, %d already there", counts[True], counts[False])


def _record_not_submitted(requests: list[JobRequest], reason: str) -> None:
    """The run's last word on jobs no platform ever got: FAILED, with why. Later rounds then
    know there is nothing to ask (with credentials that may never work) about them."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api, records
    from caliban_flows.state.groups import final_rows

    detail = f"not submitted: {reason}"
    rows = final_rows(RemoteJob(r.key, r.attempt, "", JobState.FAILED, detail=detail)
                      for r in requests)  # fmt: skip
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        records.write(http, [records.final_artifact(flow_run.id, rows)])


def poll_seconds() -> float:
    for name in POLL_ENVS:
        raw = os.environ.get(name, "").strip()
        if raw:
            return float(raw)
    return DEFAULT_POLL_SECONDS


@task(name="fill-slots", cache_policy=NO_CACHE)
def fill_slots(limit: str) -> list[RemoteJob]:
    """Submit queued jobs of the limit's pool (this group's among them) into its free slots."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api
    from caliban_flows.state.limits import fill

    logger = get_run_logger()
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        submitted = fill(http, Platforms(), limit)
    for job in submitted:
        logger.info("submitted %s: %s", job.key, job.console_url or job.remote_id)
    return submitted


@task(name="monitor-jobs", cache_policy=NO_CACHE)
def monitor_jobs(
    xgroup: str,
    platform: str,
    record: dict,
    jobs: list[RemoteJob],
    stop_requested,
    expected: int | None = None,
    refill=None,
) -> list:
    """Follow the jobs to their end (one list call per round), with a live summary.

    `stop_requested()` is asked every round: when the group's flow run was cancelled (e.g.
    from the Prefect UI), the remote jobs are cancelled and their final states returned.
    With `refill` (--max_running), each round first submits queued jobs into free slots,
    until `expected` jobs have been followed. With --max_restarts, a job the infrastructure
    ended is restarted (state/restarts.py) and its new attempt followed; the newest attempt
    of each job is returned.
    """
    remote = Platforms.open(platform, record)
    wanted = {j.remote_id for j in jobs}
    said = ""
    cancelled = False
    policy = Policy.of(record)
    asked: set[tuple[str, int]] = set()  # attempts a restart was already asked for
    restarted = 0  # attempts in `wanted` that are restarts, not first submissions
    while True:
        waiting = refill is not None and not cancelled and len(wanted) - restarted < (expected or 0)
        if waiting:
            wanted |= {j.remote_id for j in refill()}
        now = _newest([j for j in remote.poll(xgroup) if j.remote_id in wanted])
        due = [j for j in now if (j.key, j.attempt) not in asked and reason(j, policy)]
        if policy.max_restarts and due and not cancelled:
            asked |= {(j.key, j.attempt) for j in due}
            before = len(wanted)
            wanted |= _restart_round(xgroup)
            restarted += len(wanted) - before
            continue
        summary = _summary(now)
        if summary != said:
            print(f"xgroup {xgroup}: {summary}", file=sys.stderr, flush=True)
            said = summary
        running = [j.remote_id for j in now if not j.state.terminal]
        waiting = refill is not None and not cancelled and len(wanted) - restarted < (expected or 0)
        if not running and not waiting:
            return now
        if not cancelled and stop_requested():
            remote.cancel(running)
            cancelled = True
        time.sleep(poll_seconds())


def _newest(jobs: list[RemoteJob]) -> list[RemoteJob]:
    newest: dict[str, RemoteJob] = {}
    for job in jobs:
        if job.key not in newest or job.attempt > newest[job.key].attempt:
            newest[job.key] = job
    return list(newest.values())


def _restart_round(xgroup: str) -> set[str]:
    """A reconcile round of the group (it restarts what is due); this run's remote jobs."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import reconcile

    with prefect_api.client(PREFECT_API_URL.value()) as http:
        _, rows = reconcile(http, Platforms(), xgroup)
    return {r["remote_id"] for r in rows if r["flow_run_id"] == flow_run.id and r["remote_id"]}


def _summary(jobs: list[RemoteJob]) -> str:
    counts = {s: 0 for s in JobState}
    for job in jobs:
        counts[job.state] += 1
    return ", ".join(f"{n} {s.value.lower()}" for s, n in counts.items() if n)
