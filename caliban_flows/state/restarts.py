"""--max_restarts: jobs ended by the infrastructure come back by themselves, as attempt N+1.

A job is restarted when its platform says the infrastructure ended it (a Spot preemption, a
stockout, a lost VM: RemoteJob.infra), or when its code exited with a code the user named
(--restart_on_exit_codes 137,143), and it has had fewer than max_restarts restarts. A failure
of the code itself is never restarted otherwise.

Whoever reads the group does it, before settling it: a reconcile round (`caliban status`,
`caliban serve`, the embedded server's service) or the group's own flow following it with
--wait. So nobody has to watch. The restart is made under the group's submission lease and
checks the record again inside it: two readers at once restart a job once. The new attempt
is recorded first (with why), then submitted; submitting is idempotent, so a crash between
the two is mended by the next round. Each restart sends two Prefect events,
`caliban.job.preempted` and `caliban.job.restarted`, for automations to act on.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from caliban_flows.platforms.base import JobState, RemoteJob, first_line
from caliban_flows.spec.limits import limit_name
from caliban_flows.state import records
from caliban_flows.state.groups import (
    ACTIVE_RUN_STATES,
    GroupRun,
    Remote,
    Unreached,
    newest_attempts,
    where,
)

PREEMPTED = "caliban.job.preempted"
RESTARTED = "caliban.job.restarted"
LEASE_WAIT_SECONDS = 5.0  # a submission holds the lease: the next round restarts instead


@dataclass(frozen=True)
class Policy:
    max_restarts: int = 0
    exit_codes: frozenset[int] = frozenset()

    @classmethod
    def of(cls, placement: dict | None) -> Policy:
        placement = placement or {}
        codes = placement.get("restart_on_exit_codes") or ()
        return cls(int(placement.get("max_restarts") or 0), frozenset(int(c) for c in codes))


def reason(job: RemoteJob, policy: Policy) -> str | None:
    """Why this ended job may be restarted; None when it may not."""
    if job.state is not JobState.FAILED:
        return None
    if job.infra:
        return job.infra
    if job.exit_code is not None and job.exit_code in policy.exit_codes:
        return f"exit code {job.exit_code}"
    return None


def restarts_of(run: GroupRun, key: str) -> int:
    return sum(1 for j in run.jobs if j["key"] == key and j.get("restart_reason"))


@dataclass(frozen=True)
class Due:
    run: GroupRun
    job: dict  # the recorded job whose newest attempt the infrastructure ended
    ended: RemoteJob | None  # None: a restart recorded but never submitted (a crash between)
    reason: str


def due(runs: Sequence[GroupRun], remote: Remote) -> list[Due]:
    """The newest attempts that ended for a restartable reason, within their run's budget."""
    out = []
    for run in runs:
        policy = Policy.of(run.placement)
        if policy.max_restarts <= 0 or run.state not in ACTIVE_RUN_STATES:
            continue
        if run.state == "CANCELLING":
            continue
        seen = remote.get(where(run), {})
        if isinstance(seen, Unreached):
            continue
        for job in newest_attempts(run.jobs):
            ended = seen.get((job["key"], job["attempt"]))
            if ended is None and job.get("restart_reason") and run.state == "RUNNING":
                out.append(Due(run, job, None, job["restart_reason"]))  # submitted again
                continue
            why = reason(ended, policy) if ended is not None else None
            if why and restarts_of(run, job["key"]) < policy.max_restarts:
                out.append(Due(run, job, ended, why))
    return out


Submit = Callable[[GroupRun, list[dict]], list[RemoteJob]]


def restart_due(http, runs: list[GroupRun], remote: Remote, submit: Submit) -> list[GroupRun]:
    """Restart what is due; the runs, with the new attempts recorded in those restarted, and
    `remote` updated with the new attempts' jobs."""
    pending = due(runs, remote)
    if not pending:
        return runs
    by_run: dict[str, list[Due]] = {}
    for each in pending:
        by_run.setdefault(each.run.flow_run_id, []).append(each)
    out = []
    for run in runs:
        mine = by_run.get(run.flow_run_id)
        if mine:
            try:
                run = _restart_run(http, run, mine, remote, submit)
            except Exception as e:  # the next round tries again; this one goes on reading
                print(f"warning: restarting jobs of {run.xgroup!r}: {first_line(e)}",
                      file=sys.stderr)  # fmt: skip
        out.append(run)
    return out


def _restart_run(http, run: GroupRun, pending: list[Due], remote: Remote, submit) -> GroupRun:
    from caliban_flows.state.groups import read_group_runs
    from caliban_flows.state.leases import LeaseBusy, held

    name = f"{limit_name(run.platform, run.xgroup)}-submit"

    def busy() -> Exception:
        return LeaseBusy(f"xgroup {run.xgroup!r} is being submitted: restarting next round")

    with held(http, name, wait=LEASE_WAIT_SECONDS, busy=busy):
        fresh = next(
            (r for r in read_group_runs(http, run.xgroup) if r.flow_run_id == run.flow_run_id),
            run,
        )
        recorded = {(j["key"], j["attempt"]) for j in fresh.jobs}
        ended = [d for d in pending if d.ended is not None]
        fresh_due = [d for d in ended if (d.job["key"], d.job["attempt"] + 1) not in recorded]
        new = [
            {**d.job, "attempt": d.job["attempt"] + 1, "restart_reason": d.reason}
            for d in fresh_due
        ]
        unsent = [d.job for d in pending if d.ended is None]
        if not new and not unsent:
            return fresh
        if new:
            round_ = int(datetime.now(timezone.utc).timestamp() * 1000)  # after the others
            records.write(http, records.jobs_artifacts(run.flow_run_id, new, round_))
            _emit(http, run, fresh_due)
        run = replace(fresh, jobs=[*fresh.jobs, *new])
        made = submit(run, [*new, *unsent])  # idempotent: a job already there is found
    seen = remote.get(where(run))
    if seen is not None and not isinstance(seen, Unreached):
        for job in made:
            seen[job.key, job.attempt] = job
    return run


def _emit(http, run: GroupRun, restarted: list[Due]) -> None:
    events = []
    for d in restarted:
        payload = {"attempt": d.job["attempt"], "next_attempt": d.job["attempt"] + 1}
        infra = d.ended is not None and d.ended.infra is not None
        events += _events(run, d.job, d.ended, d.reason, infra, payload, f"{d.job['attempt']}")
    _post(http, events)


# Restarts a platform made inside a job (Kubernetes pods), announced by this process already.
_ANNOUNCED: set[str] = set()


def announce_platform_restarts(http, runs: Sequence[GroupRun], remote: Remote) -> int:
    """Events for the restarts platforms made themselves, each once: ids are derived from
    the job and the restart's place, so a restart seen by several readers is one event."""
    events = []
    for run in runs:
        seen = remote.get(where(run), {})
        if isinstance(seen, Unreached):
            continue
        for job in run.jobs:
            found = seen.get((job["key"], job["attempt"]))
            for i, why in enumerate(found.restarts if found else ()):
                place = f"{job['attempt']}.{i + 1}"
                infra = not why.startswith("exit code")
                payload = {"attempt": job["attempt"], "restart": i + 1}
                made = _events(run, job, found, why, infra, payload, place)
                events += [e for e in made if e["id"] not in _ANNOUNCED]
    if events:
        _post(http, events)
        _ANNOUNCED.update(e["id"] for e in events)
    return len(events)


def _events(run, job: dict, ended, why: str, infra: bool, extra: dict, place: str) -> list[dict]:
    now = datetime.now(timezone.utc).isoformat()
    resource = {
        "prefect.resource.id": f"caliban.job.{run.xgroup}.{job['key']}",
        "prefect.resource.name": job["name"],
        "caliban.xgroup": run.xgroup,
    }
    related = [{"prefect.resource.id": f"prefect.flow-run.{run.flow_run_id}",
                "prefect.resource.role": "flow-run"}]  # fmt: skip
    payload = {"key": job["key"], "reason": why, "remote_id": ended.remote_id,
               "platform": run.platform, **extra}  # fmt: skip
    out = []
    for name in (PREEMPTED, RESTARTED) if infra else (RESTARTED,):
        # The same restart always has the same id: Prefect keeps an event id once.
        ident = uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/{run.flow_run_id}/{job['key']}/{place}")
        out.append({"id": str(ident), "occurred": now, "event": name, "resource": resource,
                    "related": related, "payload": payload})  # fmt: skip
    return out


def _post(http, events: list[dict]) -> None:
    try:
        http.post("/events", json=events).raise_for_status()
    except Exception as e:  # the restart stands; only the notice is lost
        print(f"warning: events {PREEMPTED}/{RESTARTED} not sent: {first_line(e)}",
              file=sys.stderr)  # fmt: skip
