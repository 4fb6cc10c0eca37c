"""Bring Prefect in line with the platforms: the one place groups are reconciled.

Used by `caliban status` (before it prints), `stop`, `resubmit` and the reconcile service
(`caliban serve`). It reads flow runs and writes states and artifacts through Prefect's REST
API with httpx: no `prefect` import, which keeps `caliban status` well under a second.
"""

from __future__ import annotations

from collections.abc import Callable

from caliban_flows import artifacts
from caliban_flows.history import (
    ACTIVE_RUN_STATES,
    GroupRun,
    job_rows,
    read_group_runs,
    remote_jobs,
    settlements,
)


class PlatformError(RuntimeError):
    """A platform could not be listed (no engine, no credentials ...): one line."""


class Platforms:
    """One client per platform and place, for a whole command or service round."""

    def __init__(self, credentials_for: Callable[[dict], object] = lambda vertex: None):
        self._clients: dict[tuple, object] = {}
        self._credentials_for = credentials_for

    def get(self, run: GroupRun):
        if run.platform == "vertex":
            vertex = run.vertex or {}
            key = ("vertex", vertex.get("project"), vertex.get("region"))
            if key not in self._clients:
                from caliban_flows.platforms.vertex import Vertex

                credentials = self._credentials_for(vertex)
                self._clients[key] = Vertex.from_record(vertex, credentials=credentials)
            return self._clients[key]
        if "local" not in self._clients:
            import docker

            from caliban_flows.platforms.local import LocalDocker

            try:
                client = docker.from_env()
                client.ping()
            except docker.errors.DockerException as e:
                raise PlatformError(f"cannot reach a Docker engine ({e})") from None
            self._clients["local"] = LocalDocker(client)
        return self._clients["local"]

    def poll(self, run: GroupRun):
        try:
            return self.get(run).poll(run.xgroup)
        except PlatformError:
            raise
        except Exception as e:  # a platform's own error, e.g. no credentials for Vertex
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PlatformError(
                f"cannot list the {run.platform} jobs of {run.xgroup!r}: {reason}"
            ) from None


def reconcile(
    http, platforms: Platforms, xgroup: str | None = None, *, publish_all: bool = False
) -> tuple[list[GroupRun], list[dict]]:
    """Read the groups, ask the platforms, settle what ended or was cancelled; runs and rows.

    Settled runs get fresh artifacts; with `publish_all` (the service) every active run does.
    """
    runs = read_group_runs(http, xgroup)
    remote = remote_jobs(runs, platforms.poll)
    settled = settlements(runs, remote)
    for s in settled:
        if s.cancel:
            platforms.get(s.run).cancel(list(s.cancel))
        if s.run.state != s.state:
            body = {"state": {"type": s.state, "message": s.message}, "force": True}
            http.post(f"/flow_runs/{s.run.flow_run_id}/set_state", json=body).raise_for_status()
    if settled:
        runs = read_group_runs(http, xgroup)
    rows = job_rows(runs, remote)
    touched = {s.run.flow_run_id for s in settled}
    for run in runs:
        if run.flow_run_id in touched or (publish_all and run.state in ACTIVE_RUN_STATES):
            publish_run(http, run, rows)
    return runs, rows


def publish_run(http, run: GroupRun, rows: list[dict]) -> None:
    mine = [r for r in rows if r["flow_run_id"] == run.flow_run_id]
    artifacts.publish(http, flow_run_id=run.flow_run_id, xgroup=run.xgroup, rows=mine,
                      image=run.image, command=run.command)  # fmt: skip


def publish_group(http, platforms: Platforms, xgroup: str, flow_run_id: str) -> None:
    """Fresh artifacts for one run of a group, e.g. when its flow ends."""
    runs = [r for r in read_group_runs(http, xgroup) if r.flow_run_id == flow_run_id]
    if runs:
        publish_run(http, runs[0], job_rows(runs, remote_jobs(runs, platforms.poll)))
