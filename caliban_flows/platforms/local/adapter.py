"""Jobs as detached containers on a Docker engine, found again by their labels."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from caliban_flows.platforms.base import (
    ATTEMPT_LABEL,
    JOB_KEY_LABEL,
    XGROUP_LABEL,
    JobRequest,
    JobState,
    Platform,
    RemoteJob,
)
from caliban_flows.platforms.local.run_kwargs import run_kwargs
from caliban_flows.spec.docker_run_args import RunOptions, parse_run_words
from caliban_flows.spec.outputs import CONTAINER_OUTPUT_DIR, OUTPUT_DIR_ENV

_EXIT = re.compile(r"Exited \((-?\d+)\)")
# Docker starts a container right after creating it; one still not started this long after
# will not be.
START_WAIT_SECONDS = 60.0
INSPECTS_AT_ONCE = 8  # within the Docker SDK's pool of 10 connections
_STATES = {
    "created": JobState.SUBMITTED,
    "running": JobState.RUNNING,
    "restarting": JobState.RUNNING,
    "paused": JobState.RUNNING,
    "dead": JobState.FAILED,
}


class GpuFallbackWarning(UserWarning):
    pass


def _env(opts: RunOptions) -> dict[str, str]:
    size = shutil.get_terminal_size()
    env = {"PYTHONUNBUFFERED": "1", "COLUMNS": str(size.columns), "LINES": str(size.lines)}
    for path in opts.env_files:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition("=")
                    env[key] = value
    for item in opts.env:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def _ports(publish: Sequence[str]) -> dict[str, int | None]:
    """`-p HOST:CONTAINER` (or just CONTAINER) as the SDK's {container: host}."""
    ports: dict[str, int | None] = {}
    for spec in publish:
        host, _, container = spec.rpartition(":")
        ports[container] = int(host) if host else None
    return ports


def _remote(summary: dict) -> RemoteJob:
    labels = summary.get("Labels") or {}
    state = _STATES.get(summary.get("State", ""), JobState.UNKNOWN)
    code = None
    if summary.get("State") == "exited":
        match = _EXIT.search(summary.get("Status", ""))
        code = int(match.group(1)) if match else None
        state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
    return RemoteJob(
        key=labels.get(JOB_KEY_LABEL, ""),
        attempt=int(labels.get(ATTEMPT_LABEL, "0") or 0),
        remote_id=summary["Id"],
        state=state,
        exit_code=code,
    )


class LocalDocker:
    """The local engine as a platform. Containers are kept after they end: they are the truth."""

    name = "local"

    def __init__(self, client=None) -> None:
        if client is None:
            import docker

            client = docker.from_env()
        self.client = client

    def has_nvidia(self) -> bool:
        return "nvidia" in (self.client.info().get("Runtimes") or {})

    def _list(self, filters: dict) -> list[dict]:
        return self.client.api.containers(all=True, filters=filters)

    def find(self, xgroup: str, key: str, attempt: int) -> RemoteJob | None:
        labels = [
            f"{XGROUP_LABEL}={xgroup}",
            f"{JOB_KEY_LABEL}={key}",
            f"{ATTEMPT_LABEL}={attempt}",
        ]
        found = self._list({"label": labels})
        return _remote(found[0]) if found else None

    def submit(self, request: JobRequest) -> RemoteJob:
        existing = self.find(request.xgroup, request.key, request.attempt)
        if existing is not None:
            return existing
        opts = parse_run_words(request.run_args)
        kwargs: dict = {}
        if request.gpu and opts.gpus is None and opts.runtime is None:
            if self.has_nvidia():
                kwargs["runtime"] = "nvidia"
            else:
                warnings.warn(
                    "this Docker engine has no NVIDIA runtime: running on the CPU",
                    GpuFallbackWarning,
                    stacklevel=2,
                )
        kwargs.update(run_kwargs(opts))
        environment = _env(opts)
        place = request.output_place()
        if place is not None and place.kind == "local":
            mount = output_mount(place.uri(request.output_folder()))
            kwargs["mounts"] = [*kwargs.get("mounts", ()), mount]
            environment = {OUTPUT_DIR_ENV: CONTAINER_OUTPUT_DIR, **environment}
        labels = {
            **{f"caliban.label.{k}": v for k, v in request.labels.items()},
            XGROUP_LABEL: request.xgroup,
            JOB_KEY_LABEL: request.key,
            ATTEMPT_LABEL: str(request.attempt),
        }
        container = self.client.containers.run(
            request.image,
            list(request.command_args()),
            detach=True,
            labels=labels,
            environment=environment,
            **kwargs,
        )
        return RemoteJob(request.key, request.attempt, container.id, JobState.SUBMITTED)

    async def submit_all(
        self,
        requests: Sequence[JobRequest],
        *,
        max_qps: float = 0.0,
        on_job: Callable[[RemoteJob, bool], None] = lambda job, new: None,
        budgets: object = None,  # the local engine has no quota
    ) -> list[RemoteJob]:
        """Start each container in turn (one engine: no pace to keep), or find it started."""
        out = []
        for request in requests:
            found = self.find(request.xgroup, request.key, request.attempt)
            job = found or self.submit(request)
            on_job(job, found is None)
            out.append(job)
        return out

    def poll(self, xgroup: str) -> list[RemoteJob]:
        summaries = self._list({"label": f"{XGROUP_LABEL}={xgroup}"})
        jobs = [_remote(summary) for summary in summaries]
        # Only a container not started yet needs a second call (why it has not started): made
        # a few at a time, since a group may hold many.
        waiting = [i for i, summary in enumerate(summaries) if summary.get("State") == "created"]
        if waiting:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(INSPECTS_AT_ONCE, len(waiting))) as pool:
                found = pool.map(lambda i: self._never_started(jobs[i], summaries[i]), waiting)
                for i, failed in zip(waiting, found):
                    jobs[i] = failed or jobs[i]
        return jobs

    def _never_started(self, job: RemoteJob, summary: dict) -> RemoteJob | None:
        """A container created but not running: FAILED with Docker's reason if its start
        failed (a bad device, an OCI runtime error), or once it has waited too long."""
        import time

        import docker.errors

        if summary.get("State") != "created":
            return None
        try:
            error = self.client.api.inspect_container(summary["Id"])["State"].get("Error")
        except docker.errors.NotFound:
            return None
        waited = time.time() - float(summary.get("Created") or time.time())
        if not error and waited < START_WAIT_SECONDS:
            return None
        reason = error or f"not started {START_WAIT_SECONDS:g} s after it was created"
        return replace(job, state=JobState.FAILED, detail=f"never started: {reason}")

    def cancel(self, remote_ids: Sequence[str]) -> None:
        import docker.errors

        for remote_id in remote_ids:
            with contextlib.suppress(docker.errors.NotFound):  # already removed: nothing to stop
                self.client.api.stop(remote_id, timeout=10)

    def wait(self, remote_id: str, timeout: float | None = None) -> int | None:
        """The container's exit code once it ends; None if `timeout` seconds pass first."""
        import docker.errors
        import requests.exceptions

        try:
            return int(self.client.api.wait(remote_id, timeout=timeout)["StatusCode"])
        except docker.errors.NotFound:  # removed behind our back: the next poll says so
            return None
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            if timeout is None:
                raise
            return None

    def logs(self, remote_id: str, *, follow: bool = False) -> Iterator[bytes]:
        return self.client.api.logs(remote_id, stream=True, follow=follow)


def output_mount(host_folder: str):
    """The job attempt's host folder, made now (by this user, whose uid the image runs as) and
    bind-mounted read-write where $CALIBAN_OUTPUT_DIR points."""
    import docker.types

    from caliban_flows.spec.errors import CalibanError

    try:
        os.makedirs(host_folder, exist_ok=True)
    except OSError as e:
        raise CalibanError(f"cannot make the job's output folder {host_folder}: {e}") from None
    return docker.types.Mount(target=CONTAINER_OUTPUT_DIR, source=host_folder, type="bind")


def docker_client():
    """The user's Docker engine (DOCKER_HOST, else the default socket), answering."""
    import docker

    from caliban_flows.spec.errors import CalibanError

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise CalibanError(
            f"cannot reach a Docker engine ({e}); start one, or set DOCKER_HOST"
        ) from None
    return client


def engine_gpu(client, gpu: bool) -> bool:
    """GPU mode only on an engine with NVIDIA's runtime; else CPU, with a warning (#96)."""
    if gpu and not LocalDocker(client).has_nvidia():
        print("warning: this Docker engine has no NVIDIA runtime; using CPU mode", file=sys.stderr)
        return False
    return gpu


def local_attempts(client, xgroup: str) -> dict[str, int]:
    """The newest attempt of each job of the group on this engine."""
    latest: dict[str, int] = {}
    for job in LocalDocker(client).poll(xgroup):
        latest[job.key] = max(latest.get(job.key, 0), job.attempt)
    return latest


# The registry entry's `open` hands LocalDocker out as a Platform: this line has mypy check the
# class against that protocol, so a missing or mistyped method fails `make lint`.
_CHECKED_AS_PLATFORM: type[Platform] = LocalDocker
