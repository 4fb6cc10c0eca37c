"""Bring Prefect in line with the platforms: the one place groups are reconciled.

Used by `caliban status` (before it prints), `stop`, `resubmit` and the reconcile service
(`caliban serve`). It reads flow runs and writes states and artifacts through Prefect's REST
API with httpx: no `prefect` import, which keeps `caliban status` well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from caliban_flows.state import artifacts, prefect_api
from caliban_flows.state.groups import (
    ACTIVE_RUN_STATES,
    STOPPED_MESSAGE,
    GroupRun,
    final_data,
    job_rows,
    read_group_runs,
    remote_jobs,
    settlements,
    where,
)
from caliban_flows.state.limits import fill


class PlatformError(RuntimeError):
    """A platform could not be listed (no engine, no credentials ...): one line."""


class Platforms:
    """One client per platform and place, for a whole command or service round.

    `credentials_for(vertex)` and `kube_config_for(cluster)` turn a group's record into what
    its platform logs in with (a Prefect block's, or None for the user's own config).
    """

    def __init__(
        self,
        credentials_for: Callable[[dict], object] = lambda vertex: None,
        kube_config_for: Callable[[dict], dict | None] = lambda cluster: None,
    ):
        self._clients: dict[tuple, object] = {}
        self._credentials_for = credentials_for
        self._kube_config_for = kube_config_for

    def for_record(self, platform: str, record: dict):
        """A new adapter for a remote group's recorded settings (placement included)."""
        if platform == "vertex":
            from caliban_flows.platforms.vertex.adapter import Vertex

            return Vertex.from_record(record, credentials=self._credentials_for(record))
        if platform == "kubernetes":
            from caliban_flows.platforms.kubernetes.adapter import Kubernetes

            return Kubernetes.from_record(record, config_dict=self._kube_config_for(record))
        raise PlatformError(f"{platform} is not a remote platform")

    @staticmethod
    def max_qps(platform: str, record: dict) -> float:
        if platform == "vertex":
            from caliban_flows.platforms.vertex.adapter import DEFAULT_MAX_QPS
        else:
            from caliban_flows.platforms.kubernetes.adapter import DEFAULT_MAX_QPS
        return record.get("max_qps") or DEFAULT_MAX_QPS

    def get(self, run: GroupRun):
        if run.platform != "local":
            key = where(run)[:-1]
            if key not in self._clients:
                try:
                    self._clients[key] = self.for_record(run.platform, run.record or {})
                except PlatformError:
                    raise
                except Exception as e:  # e.g. a kubeconfig without the recorded context
                    raise PlatformError(f"cannot reach {run.platform} for {run.xgroup!r}: "
                                        f"{_first_line(e)}") from None  # fmt: skip
            return self._clients[key]
        if "local" not in self._clients:
            import docker

            from caliban_flows.platforms.local.adapter import LocalDocker

            try:
                client = docker.from_env()
                client.ping()
            except docker.errors.DockerException as e:
                raise PlatformError(f"cannot reach a Docker engine ({e})") from None
            self._clients["local"] = LocalDocker(client)
        return self._clients["local"]

    def submit(self, run: GroupRun, records: list[dict]) -> list:
        """Submit some of a run's recorded jobs (queued behind --max_running) with its settings."""
        import asyncio

        from caliban_flows.platforms.base import JobRequest

        if run.platform == "local":
            raise PlatformError("local jobs are not queued remotely")
        requests = [JobRequest.from_record(run.xgroup, run.image, job) for job in records]
        record = run.record or {}
        platform = self.for_record(run.platform, record)
        max_qps = self.max_qps(run.platform, record)
        return asyncio.run(platform.submit_all(requests, max_qps=max_qps))

    def poll(self, run: GroupRun):
        try:
            return self.get(run).poll(run.xgroup)
        except PlatformError:
            raise
        except Exception as e:  # a platform's own error, e.g. no credentials for Vertex
            raise PlatformError(
                f"cannot list the {run.platform} jobs of {run.xgroup!r}: {_first_line(e)}"
            ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
        if s.run.state != s.state or (s.final is not None and s.run.final is None):
            state = {"type": s.state, "message": s.message}
            if s.final is not None:
                state["data"] = final_data(s.final)
            prefect_api.set_state(http, s.run.flow_run_id, state)
    just_settled = {s.run.flow_run_id for s in settled}
    limits = {
        r.limit["name"]
        for r in runs
        if r.limit
        and r.platform != "local"
        and (r.state in ACTIVE_RUN_STATES or r.flow_run_id in just_settled)
    }
    place = {(j["key"], j["attempt"]): where(r) for r in runs for j in r.jobs}
    for name in sorted(limits):  # release the slots of ended jobs, fill them with queued ones
        for job in fill(http, platforms, name):
            if (job.key, job.attempt) in place:
                remote[place[job.key, job.attempt]][job.key, job.attempt] = job
    if settled:
        runs = read_group_runs(http, xgroup)
    rows = job_rows(runs, remote)
    for run in runs:
        if run.flow_run_id in just_settled or (publish_all and run.state in ACTIVE_RUN_STATES):
            publish_run(http, run, rows)
    return runs, rows


def mark_stopped(http, flow_run_ids: Iterable[str]) -> None:
    """Record runs as stopped (Cancelled), also over the Crashed state an interrupt leaves."""
    for flow_run_id in flow_run_ids:
        prefect_api.set_state(http, flow_run_id, {"type": "CANCELLED", "message": STOPPED_MESSAGE})


def publish_run(http, run: GroupRun, rows: list[dict]) -> None:
    mine = [r for r in rows if r["flow_run_id"] == run.flow_run_id]
    artifacts.publish(http, flow_run_id=run.flow_run_id, xgroup=run.xgroup, rows=mine,
                      image=run.image, command=run.command)  # fmt: skip


def publish_group(http, platforms: Platforms, xgroup: str, flow_run_id: str) -> None:
    """Fresh artifacts for one run of a group, e.g. when its flow ends."""
    runs = [r for r in read_group_runs(http, xgroup) if r.flow_run_id == flow_run_id]
    if runs:
        publish_run(http, runs[0], job_rows(runs, remote_jobs(runs, platforms.poll)))
