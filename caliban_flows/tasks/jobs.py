"""Prefect tasks around the platforms: thin wrappers adding retries, logging and states."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from prefect import task
from prefect.states import Completed, Failed

from caliban_flows.platforms.base import JobRequest


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


@task(name="build-image", retries=2, retry_delay_seconds=1, retry_condition_fn=_transient)
def build_image(root: str, dockerfile: str, no_cache: bool = False) -> dict:
    from caliban_flows.platforms.images import build_image as build

    def show(line: str) -> None:
        if line.strip():
            print(line, file=sys.stderr, flush=True)

    built = build(_engine(), Path(root), dockerfile, no_cache=no_cache, on_log=show)
    return asdict(built)


@task(
    name="run-job",
    task_run_name="{request.name}",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=_transient,
)
def run_local_job(request: JobRequest, stream: bool = True):
    """Run one job to its end on the local engine; its state is the container's exit code."""
    from caliban_flows.platforms.local import LocalDocker

    local = LocalDocker(_engine())
    remote = local.submit(request)
    try:
        if stream:
            out = sys.stdout.buffer
            for chunk in local.logs(remote.remote_id, follow=True):
                out.write(chunk)
                out.flush()
        code = local.wait(remote.remote_id)
    except KeyboardInterrupt:
        local.cancel([remote.remote_id])
        raise
    result = {"remote_id": remote.remote_id, "exit_code": code, "key": request.key}
    # The state message carries the exit code, so the Prefect UI shows it for every job.
    message = f"exit code {code}; args: {' '.join(request.args)}"[:500]
    if code != 0:
        return Failed(message=message, data=result)
    return Completed(message=message, data=result)
