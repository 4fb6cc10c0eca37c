"""Prefect tasks around the platforms: expand, submit, monitor. Thin: retries, names, states."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed

from caliban_flows.platforms.base import JobRequest, JobState, RemoteJob

POLL_SECONDS = 1.0  # at most this long between list calls, however many jobs are watched


def _transient(task, task_run, state) -> bool:
    """Retry engine hiccups (connection resets, 5xx), never a bad build or a failed job."""
    import docker.errors
    import requests.exceptions

    try:
        state.result()
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        return True
    except docker.errors.APIError as e:
        return e.is_server_error() and not isinstance(e, docker.errors.BuildError)
    except Exception:
        return False
    return False


def _engine():
    import docker

    return docker.from_env()


def _local():
    from caliban_flows.platforms.local.adapter import LocalDocker

    return LocalDocker(_engine())


@task(name="build-image", retries=2, retry_delay_seconds=1, retry_condition_fn=_transient)
def build_image(
    root: str, dockerfile: str, no_cache: bool = False, credentials: list[str] | None = None
) -> dict:
    """Build a recipe's image (`credentials`: key files never sent to Docker)."""
    from prefect import get_run_logger

    from caliban_flows.platforms.images import build_image as build
    from caliban_flows.platforms.images import left_out_warning
    from caliban_flows.tasks.progress import BuildProgress

    with BuildProgress() as progress:
        built = build(_engine(), Path(root), dockerfile, no_cache=no_cache, on_log=progress,
                      credentials=credentials or ())  # fmt: skip
    warning = left_out_warning(built.left_out)
    if warning:
        get_run_logger().warning(warning)
    return asdict(built)


@task(name="record-jobs", cache_policy=NO_CACHE)
def record_jobs(jobs: list[dict], round: int = 1) -> int:
    """Write the submission's jobs onto its flow run (artifacts), before any of them starts:
    what `caliban status`, `stop` and `resubmit` read back (`round` N: the run's N-th run).
    The bytes written."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api, records

    with prefect_api.client(PREFECT_API_URL.value()) as http:
        return records.write(http, records.jobs_artifacts(flow_run.id, jobs, round))


@task(name="expand-sweep", cache_policy=NO_CACHE)
def expand_sweep(
    xgroup: str, recipes: list[dict], placement: dict, jobs: list[dict]
) -> list[JobRequest]:
    """The group's recorded jobs as platform requests, each by its own recipe (and with the
    values of its secret args, from their Prefect Secret blocks)."""
    from caliban_flows.state.secret_blocks import values_for

    secrets = values_for(jobs)
    return [JobRequest.of(xgroup, recipes[j.get("recipe", 0)], j, placement, secrets) for j in jobs]


@task(
    name="submit-job",
    task_run_name="submit {request.name}",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def submit_job(request: JobRequest) -> RemoteJob:
    """Start one job; a retry finds the container it already started (same key and attempt)."""
    return _local().submit(request)


@task(
    name="monitor-jobs",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def monitor_jobs(xgroup: str, jobs: Sequence[RemoteJob], stream: bool = False) -> list[RemoteJob]:
    """Wait until every job has ended, polling the whole group with one list call per round.

    With `stream`, the (single) job's output is followed to the terminal meanwhile.
    """
    local = _local()
    if stream:
        out = sys.stdout.buffer
        for job in jobs:
            for chunk in local.logs(job.remote_id, follow=True):
                out.write(chunk)
                out.flush()
    wanted = {j.remote_id: j for j in jobs}
    while True:
        seen = {j.remote_id: j for j in local.poll(xgroup) if j.remote_id in wanted}
        # A job removed behind our back has no exit code to give: it ended, state unknown.
        now = [seen.get(i) or replace(j, state=JobState.UNKNOWN) for i, j in wanted.items()]
        running = [j for j in now if not j.state.terminal]
        if not running:
            return now
        # Block on the engine until one ends (or the round is over) instead of sleeping.
        local.wait(running[0].remote_id, timeout=POLL_SECONDS)


@task(name="run-job", task_run_name="{request.name}", cache_policy=NO_CACHE)
def run_job(request: JobRequest, stream: bool = True, limit: str | None = None):
    """One experiment, start to end; this task run's state is the job's outcome in Prefect.

    With `limit` (--max_running), the job holds one slot of that Prefect concurrency limit
    while its container runs, waiting for one first.
    """
    import contextlib

    from prefect.concurrency.sync import concurrency

    slot = concurrency(limit, occupy=1, strict=True) if limit else contextlib.nullcontext()
    with slot:
        remote = submit_job(request)
        try:
            (ended,) = monitor_jobs(request.xgroup, [remote], stream=stream)
        except KeyboardInterrupt:
            _local().cancel([remote.remote_id])
            raise
    result = {"remote_id": ended.remote_id, "exit_code": ended.exit_code, "key": request.key}
    # The state message carries the exit code, so the Prefect UI shows it for every job.
    outcome = "container gone" if ended.exit_code is None else f"exit code {ended.exit_code}"
    message = f"{outcome}; args: {' '.join(request.args)}"[:500]
    if ended.exit_code != 0:
        return Failed(message=message, data=result)
    return Completed(message=message, data=result)
