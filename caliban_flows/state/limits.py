"""`--max_running N`: caps on the jobs of a group (or of a named pool) running at once.

Each cap is a Prefect global concurrency limit, so the UI's Concurrency page shows it and
can change it. Local jobs take a slot for as long as their container runs (Prefect's own
`concurrency()`; the lease lapses if the process dies). Remote jobs outlive the process that
submitted them, so for them the limit's active slots are the pool's live remote jobs, counted
from the platform on every reconcile round (`caliban status`, `stop`, `caliban serve`), and
the same round submits queued jobs into the free slots. A slot is thus released when its job
ends, whoever is watching. Rounds of one pool take turns through a second limit of one slot.

Prefect's REST API through httpx, as in reconcile.py: no `prefect` import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from caliban_flows.platforms.base import RemoteJob
from caliban_flows.spec.limits import limit_name  # noqa: F401 (callers import it here)
from caliban_flows.state.groups import (
    GroupRun,
    read_group_runs,
    remote_jobs,
    unreached,
    where,
)

LOCK_WAIT_SECONDS = 60.0


class LimitError(RuntimeError):
    """The limit could not be read or written in Prefect: one line."""


def limit_tag(name: str) -> str:
    """The tag on every flow run counted against the limit."""
    return f"limit:{name}"


def ensure(http, limit: dict) -> None:
    """Create the limit (and its lock), or set its cap to this submission's."""
    name, cap = limit["name"], limit["max_running"]
    for each, slots in ((name, cap), (_lock_name(name), 1)):
        made = http.post("/v2/concurrency_limits/", json={"name": each, "limit": slots})
        if made.status_code == 409:  # it exists: this submission's cap wins
            if each == name:
                changed = http.patch(f"/v2/concurrency_limits/{each}", json={"limit": slots})
                changed.raise_for_status()
        else:
            made.raise_for_status()


def ensure_at(api_url: str, limit: dict) -> None:
    """`ensure` on the Prefect API at this URL; a failure is one line."""
    from caliban_flows.lean_httpx import httpx
    from caliban_flows.state import prefect_api

    try:
        with prefect_api.client(api_url) as http:
            ensure(http, limit)
    except httpx.HTTPError as e:
        raise LimitError(f"cannot set the concurrency limit {limit['name']!r}: {e}") from None


def cap(http, name: str) -> int | None:
    """The cap as Prefect holds it now (edited in the UI, say); None: no cap any more."""
    got = http.get(f"/v2/concurrency_limits/{name}")
    if got.status_code == 404:
        return None
    got.raise_for_status()
    body = got.json()
    return int(body["limit"]) if body.get("active", True) else None


def _lock_name(name: str) -> str:
    return f"{name}-lock"


@contextlib.contextmanager
def pool_lock(http, name: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """One round at a time per pool, across processes: a one-slot limit held by a lease,
    renewed while the round goes on (a round at the real Vertex pace outlasts one lease)."""
    from caliban_flows.state.leases import held

    def busy() -> Exception:
        return LimitError(f"the concurrency limit {name!r} stayed locked for {wait:g} s")

    with held(http, _lock_name(name), wait=wait, busy=busy):
        yield


def fill(http, platforms, name: str) -> list[RemoteJob]:
    """One round for one limit: count its live jobs, submit queued ones into free slots.

    Returns the jobs it submitted. Queued jobs go first come, first served across the pool.
    """
    with pool_lock(http, name):
        runs = read_group_runs(http, tags=[limit_tag(name)], states=("RUNNING", "CANCELLING"))
        remote = remote_jobs(runs, platforms.poll)
        if unreached(remote):  # live jobs uncounted: filling now could overrun the cap
            return []
        live = {
            job.remote_id
            for run in runs
            for job in _jobs_of(run, remote)
            if job is not None and not job.state.terminal
        }
        limit = cap(http, name)
        queued = [
            (run, record)
            for run in runs
            if run.state == "RUNNING"
            for record, job in zip(run.jobs, _jobs_of(run, remote))
            if job is None
        ]
        free = len(queued) if limit is None else max(0, limit - len(live))
        submitted: list[RemoteJob] = []
        by_run: dict[str, tuple[GroupRun, list[dict]]] = {}
        for run, record in queued[:free]:
            by_run.setdefault(run.flow_run_id, (run, []))[1].append(record)
        try:
            for run, records in by_run.values():
                submitted += platforms.submit(run, records)
        finally:  # a failed write is corrected by the next round's count
            active = len(live) + len(submitted)
            with contextlib.suppress(Exception):
                http.patch(f"/v2/concurrency_limits/{name}", json={"active_slots": active})
    return submitted


def _jobs_of(run: GroupRun, remote) -> list[RemoteJob | None]:
    seen = remote.get(where(run), {})
    return [seen.get((j["key"], j["attempt"])) for j in run.jobs]
