"""Bring Prefect in line with the platforms: the one place groups are reconciled.

Used by `caliban status` (before it prints), `stop`, `resubmit` and the reconcile service
(`caliban serve`). It reads flow runs and writes states and artifacts through Prefect's REST
API with httpx: no `prefect` import, which keeps `caliban status` well under a second.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from caliban_flows.platforms import registry
from caliban_flows.platforms.base import JobRequest, Platform, RemoteJob, first_line
from caliban_flows.state import artifacts, prefect_api, records
from caliban_flows.state.background import requeue_dead
from caliban_flows.state.budgets import prefect_budgets
from caliban_flows.state.groups import (
    ACTIVE_RUN_STATES,
    POLL_DEADLINE,
    STOPPED_MESSAGE,
    GroupRun,
    final_rows,
    job_rows,
    read_group_runs,
    remote_jobs,
    unreached,
    where,
)
from caliban_flows.state.limits import fill
from caliban_flows.state.restarts import announce_platform_restarts, restart_due
from caliban_flows.state.settle import settlements


class PlatformError(RuntimeError):
    """A platform could not be listed (no engine, no credentials ...): one line."""


class Platforms:
    """One adapter per platform and place, for a whole command or service round."""

    def __init__(self, credentials_file: str | None = None) -> None:
        self._clients: dict[tuple, Platform] = {}
        # A key given now (`caliban resubmit --cloud_key`) in place of the one a run recorded.
        self.credentials_file = credentials_file

    def placement_of(self, run: GroupRun) -> dict:
        """The run's recorded placement, with the key given now if it records one."""
        placement = run.placement or {}
        if self.credentials_file and "credentials_file" in placement:
            return {**placement, "credentials_file": self.credentials_file}
        return placement

    @staticmethod
    def open(platform: str, placement: dict) -> Platform:
        """A new adapter for a run's recorded placement."""
        return registry.get(platform).open(placement)

    @staticmethod
    def max_qps(platform: str, placement: dict) -> float:
        return placement.get("max_qps") or registry.get(platform).default_max_qps

    def get(self, run: GroupRun) -> Platform:
        key = where(run)[:-1]
        if key not in self._clients:
            try:
                self._clients[key] = self.open(run.platform, self.placement_of(run))
            except PlatformError:
                raise
            except Exception as e:  # e.g. no engine, a kubeconfig without the recorded context
                raise PlatformError(f"cannot reach {run.platform} for {run.xgroup!r}: "
                                    f"{first_line(e)}") from None  # fmt: skip
        return self._clients[key]

    def connect(self, run: GroupRun) -> Platform:
        """The run's adapter, its client library imported now (registry `preload`): done
        before polling in parallel, so no deadline is spent importing."""
        import importlib

        adapter = self.get(run)
        for module in registry.get(run.platform).preload:
            importlib.import_module(module)
        return adapter

    def submit(self, run: GroupRun, jobs: list[dict]) -> list[RemoteJob]:
        """Submit some of a run's recorded jobs (queued behind --max_running) by their recipes."""
        import asyncio

        from caliban_flows.state.secret_blocks import values_for

        placement = self.placement_of(run)
        secrets = values_for(jobs)
        requests = [
            JobRequest.of(run.xgroup, run.recipe_of(j), j, placement, secrets) for j in jobs
        ]
        adapter = self.open(run.platform, placement)
        max_qps = self.max_qps(run.platform, placement)
        with prefect_budgets() as budgets:
            return asyncio.run(adapter.submit_all(requests, max_qps=max_qps, budgets=budgets))

    def poll(self, run: GroupRun) -> list[RemoteJob]:
        try:
            return self.get(run).poll(run.xgroup)
        except PlatformError:
            raise
        except Exception as e:  # a platform's own error, e.g. no credentials for Vertex
            raise PlatformError(
                f"cannot list the {run.platform} jobs of {run.xgroup!r}: {first_line(e)}"
            ) from None


def reconcile(
    http,
    platforms: Platforms,
    xgroup: str | None = None,
    *,
    publish_all: bool = False,
    warn: Callable[[str], None] | None = None,
    deadline: float | None = POLL_DEADLINE,
    users: Collection[str] | None = None,
) -> tuple[list[GroupRun], list[dict]]:
    """Read the groups, ask the platforms, settle what ended or was cancelled; runs and rows.

    Settled runs get fresh artifacts; with `publish_all` (the service) every active run does.
    A place that does not answer within `deadline` seconds, or fails, makes only its own jobs
    UNKNOWN (their `detail` says why), and `warn` gets one line for it.
    """
    runs = read_group_runs(http, xgroup, users=users)
    remote = remote_jobs(runs, platforms.poll, deadline, connect=platforms.connect)
    for line in unreached(remote):
        if warn is not None:
            warn(line)
    runs = requeue_dead(http, runs, remote)  # a dead background submitter's run: resumed
    runs = restart_due(http, runs, remote, platforms.submit)  # before anything settles
    announce_platform_restarts(http, runs, remote)
    settled = settlements(runs, remote)
    ended_now = set()  # runs whose jobs all ended just now: their results event goes out once
    for s in settled:
        if s.cancel:
            platforms.get(s.run).cancel(list(s.cancel))
        if s.final is not None and s.run.final is None:  # first: a settled state has it
            records.write(http, [records.final_artifact(s.run.flow_run_id, final_rows(s.final))])
            ended_now.add(s.run.flow_run_id)
        if s.run.state != s.state or (s.name is not None and s.name != s.run.state_name):
            state = {"type": s.state, "message": s.message}
            if s.name:
                state["name"] = s.name
            prefect_api.set_state(http, s.run.flow_run_id, state)
    just_settled = {s.run.flow_run_id for s in settled}
    limits = {
        r.limit["name"]
        for r in runs
        if r.limit
        and registry.get(r.platform).remote
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
            settled_as = run.state if run.flow_run_id in ended_now else None
            publish_run(http, run, rows, platforms, settled_as=settled_as)
    return runs, rows


def stop_jobs(http, platforms: Platforms, runs: list[GroupRun], active: list[dict]) -> None:
    """Stop these jobs (status rows): their runs recorded as stopped first, so a run still
    going sees it and starts nothing more, then each platform cancels its own."""
    run_ids = dict.fromkeys(r["flow_run_id"] for r in active)
    mark_stopped(http, run_ids)
    by_id = {run.flow_run_id: run for run in runs}
    for run_id in run_ids:
        mine = [r for r in active if r["flow_run_id"] == run_id]
        ids = [i for r in mine for i in (r["remote_id"], *r.get("duplicates", ())) if i]
        if ids:
            platforms.get(by_id[run_id]).cancel(ids)


def mark_stopped(http, flow_run_ids: Iterable[str]) -> None:
    """Record runs as stopped (Cancelled), also over the Crashed state an interrupt leaves."""
    for flow_run_id in flow_run_ids:
        prefect_api.set_state(http, flow_run_id, {"type": "CANCELLED", "message": STOPPED_MESSAGE})


def publish_run(
    http, run: GroupRun, rows: list[dict], platforms: Platforms, *, settled_as: str | None = None
) -> None:
    """The run's artifacts (jobs, results, summary), its metrics read once for all of them;
    `settled_as` (the state its jobs ended in, once): the `caliban.group.results` event too."""
    from caliban_flows.state.result_events import emit_group_results
    from caliban_flows.state.run_results import results_as_jobs_end

    mine = [r for r in rows if r["flow_run_id"] == run.flow_run_id]
    results = results_as_jobs_end(run, mine, platforms)
    try:
        artifacts.publish(http, flow_run_id=run.flow_run_id, xgroup=run.xgroup, rows=mine,
                          image=run.image, command=run.command, results=results)  # fmt: skip
    finally:  # its one chance: the run is recorded as ended now, whatever the artifacts did
        if settled_as is not None:
            emit_group_results(http, run, settled_as, mine, results)


def publish_group(
    http, platforms: Platforms, xgroup: str, flow_run_id: str, *, settled_as: str | None = None
) -> None:
    """Fresh artifacts for one run of a group, e.g. when its flow ends (`settled_as`: the
    state it ends in, when its jobs all ended: the results event too)."""
    runs = [r for r in read_group_runs(http, xgroup) if r.flow_run_id == flow_run_id]
    if runs:
        rows = job_rows(runs, remote_jobs(runs, platforms.poll))
        publish_run(http, runs[0], rows, platforms, settled_as=settled_as)
