"""Prefect tasks for Vertex AI: submit a group's jobs at once, then (optionally) follow them."""

from __future__ import annotations

import asyncio
import os
import sys
import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from caliban_flows.platforms.base import JobRequest, JobState, RemoteJob
from caliban_flows.tasks.progress import CountProgress

POLL_ENV = "CALIBAN_VERTEX_POLL_SECONDS"
DEFAULT_POLL_SECONDS = 10.0  # one list call per round; Vertex jobs take minutes


def vertex_platform(vertex: dict):
    """The platform from a group's recorded `vertex` settings."""
    from caliban_flows.platforms.vertex import Vertex

    return Vertex.from_record(vertex, credentials=block_credentials(vertex))


def block_credentials(vertex: dict):
    """A key kept in the group's Prefect block, if it names one; else gcloud's own login."""
    if not vertex.get("credentials_block"):
        return None
    from caliban_flows.blocks.vertex import credentials_from_block

    return credentials_from_block(vertex["credentials_block"])


@task(name="submit-jobs", cache_policy=NO_CACHE)
def submit_jobs(requests: list[JobRequest], vertex: dict) -> list[RemoteJob]:
    """Every job the group lacks, concurrently and paced; each job's console URL is logged."""
    from caliban_flows.platforms.vertex import DEFAULT_MAX_QPS

    logger = get_run_logger()
    platform = vertex_platform(vertex)
    with CountProgress(len(requests), "submitting to Vertex AI") as progress:

        def on_job(job: RemoteJob, new: bool) -> None:
            progress.advance()
            logger.info("%s %s: %s", "submitted" if new else "already there", job.key,
                        job.console_url)  # fmt: skip

        max_qps = vertex.get("max_qps") or DEFAULT_MAX_QPS
        return asyncio.run(platform.submit_all(requests, max_qps=max_qps, on_job=on_job))


def poll_seconds() -> float:
    raw = os.environ.get(POLL_ENV, "").strip()
    return float(raw) if raw else DEFAULT_POLL_SECONDS


@task(name="monitor-jobs", cache_policy=NO_CACHE)
def monitor_jobs(xgroup: str, vertex: dict, jobs: list[RemoteJob], stop_requested) -> list:
    """Follow the jobs to their end (one list call per round), with a live summary.

    `stop_requested()` is asked every round: when the group's flow run was cancelled (e.g.
    from the Prefect UI), the remote jobs are cancelled and their final states returned.
    """
    platform = vertex_platform(vertex)
    wanted = {j.remote_id for j in jobs}
    said = ""
    cancelled = False
    while True:
        now = [j for j in platform.poll(xgroup) if j.remote_id in wanted]
        summary = _summary(now)
        if summary != said:
            print(f"xgroup {xgroup}: {summary}", file=sys.stderr, flush=True)
            said = summary
        running = [j.remote_id for j in now if not j.state.terminal]
        if not running:
            return now
        if not cancelled and stop_requested():
            platform.cancel(running)
            cancelled = True
        time.sleep(poll_seconds())


def _summary(jobs: list[RemoteJob]) -> str:
    counts = {s: 0 for s in JobState}
    for job in jobs:
        counts[job.state] += 1
    return ", ".join(f"{n} {s.value.lower()}" for s, n in counts.items() if n)
