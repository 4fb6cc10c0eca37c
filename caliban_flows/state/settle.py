"""Settling: which group runs no longer tell the truth about their jobs, and what to write.

A remote group settles when its platform reports every job ended; any group whose process
died (server.owner) settles from what its jobs did, the ones it never started counted as
failed; a remote group recorded as ended while its jobs still run is reopened.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from caliban_flows.platforms.base import JobState, RemoteJob
from caliban_flows.state.groups import (
    SETTLED_RUN_STATES,
    STOPPED_MESSAGE,
    GroupRun,
    Remote,
    Unreached,
    is_remote,
    where,
)


@dataclass(frozen=True)
class Settlement:
    """What a group's flow run needs so that Prefect tells the truth."""

    run: GroupRun
    state: str  # the Prefect state type to set: COMPLETED, FAILED, CANCELLED or RUNNING
    message: str
    cancel: tuple[str, ...] = ()  # remote jobs to cancel first
    final: tuple[RemoteJob, ...] | None = None  # every job ended: what to record for good
    name: str | None = None  # the state's name, when not its type's


NEVER_STARTED = "never started: the caliban process running its group ended first"


def settlements(runs: Iterable[GroupRun], remote: Remote) -> list[Settlement]:
    """Runs whose record no longer matches their jobs: every job ended (a remote group, or a
    group whose process died), a cancel (e.g. in the UI) to carry out, or a remote group
    recorded as ended while its jobs still run (by a version that marked Submitted in two writes,
    its process dying between them)."""
    from caliban_flows.server.owner import alive

    out = []
    for run in runs:
        seen = remote.get(where(run), {})
        if isinstance(seen, Unreached) or run.starting_again:  # nothing to settle on yet
            continue
        found = [seen.get((j["key"], j["attempt"])) for j in run.jobs]
        handed_over = is_remote(run) and run.state_name == "Submitted"
        owner = alive(run.owner)
        orphaned = owner is False and not handed_over
        ended = all(j is None or j.state.terminal for j in found)
        # A run that names no process of this host (recorded elsewhere, or by an earlier
        # version): a remote one settles once all its jobs are there and ended, as before.
        unowned = owner is None and is_remote(run) and not handed_over and bool(run.jobs)
        if run.state in ("CANCELLING", "CANCELLED"):
            live = tuple(j.remote_id for j in found if j is not None and not j.state.terminal)
            if not is_remote(run):  # e.g. Cancel in the UI: the stop caliban stop makes
                if live or run.state == "CANCELLING":
                    out.append(Settlement(run, "CANCELLED", run.message or STOPPED_MESSAGE, live))
                continue
            final = tuple(j for j in found if j is not None) if ended else None
            if live or run.state == "CANCELLING" or run.final is None:
                message = run.message or STOPPED_MESSAGE
                out.append(Settlement(run, "CANCELLED", message, live, final))
        elif run.state == "PENDING" and orphaned:  # died before its flow even started
            out.append(_ended(run, found, never_started=True))
        elif run.state == "RUNNING" and ended and (handed_over or orphaned or unowned):
            if not orphaned and not all(found):  # queued behind --max_running, or not yet
                continue
            out.append(_ended(run, found, never_started=orphaned))
        elif run.state == "COMPLETED" and run.state_name == "Submitted" and owner is not True:
            # (A live owner of such a version is about to keep it RUNNING itself.)
            if ended and all(found):
                out.append(_ended(run, found, never_started=False))
            else:  # still running remotely: mirrored again, and cancellable in the UI
                out.append(Settlement(run, "RUNNING", run.message, name="Submitted"))
        elif run.state in SETTLED_RUN_STATES and _unrecorded_end(run, found):
            # Ended by its own flow (one that followed its jobs): its jobs' last word, once
            # the platform has it, so later rounds need not ask again.
            final = tuple(j for j in found if j is not None)
            out.append(Settlement(run, run.state, run.message, final=final))
    return out


def _unrecorded_end(run: GroupRun, found: list[RemoteJob | None]) -> bool:
    """A remote run that ended with no record of its jobs' end, all of which have ended."""
    if run.final is not None or not is_remote(run) or run.state_name == "Submitted":
        return False
    return bool(run.jobs) and all(j is not None and j.state.terminal for j in found)


def _ended(run: GroupRun, found: list[RemoteJob | None], *, never_started: bool) -> Settlement:
    """Every job ended: the run's final state with the counts, and its jobs' last word (a job
    that never started, because its process died, ended FAILED)."""
    final = tuple(
        j
        if j is not None
        else RemoteJob(job["key"], job["attempt"], "", JobState.FAILED, detail=NEVER_STARTED)
        for job, j in zip(run.jobs, found)
    )
    if not run.jobs:
        message = "the caliban process ended before it recorded any job: submit again"
        return Settlement(run, "FAILED", message, final=())
    latest = _latest_per_key(final)  # a run retried in place: its newest attempts count
    failed = sum(1 for j in latest if j.state is not JobState.SUCCEEDED)
    lost = sum(1 for j in found if j is None)
    message = (
        f"{failed} of {len(latest)} jobs failed" if failed else f"{len(latest)} jobs succeeded"
    )
    if never_started and lost:
        message += f" ({lost} never started: the caliban process running them ended)"
    return Settlement(run, "FAILED" if failed else "COMPLETED", message, final=final)


def _latest_per_key(jobs: tuple[RemoteJob, ...]) -> list[RemoteJob]:
    latest: dict[str, RemoteJob] = {}
    for job in jobs:
        if job.key not in latest or job.attempt >= latest[job.key].attempt:
            latest[job.key] = job
    return list(latest.values())
