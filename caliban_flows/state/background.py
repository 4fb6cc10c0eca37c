"""Large sweeps leave the terminal: their jobs are submitted by a background submitter.

At Vertex's default quota a 1,000-job sweep needs 17 minutes to submit. A submission that
would take more than BACKGROUND_AFTER_SECONDS at its pace is recorded (every job, as always),
tagged BACKGROUND_TAG and left SCHEDULED ("Queued") by the terminal's flow, which returns
at once. The runner serving the group deployment (the embedded server's, or `caliban serve`
with your own server) then runs the group's flow again: it submits what the platform lacks,
in pieces, then follows the jobs to their end. Submitting is idempotent (the group is listed
first) and takes the group's submission lease, so no job is made twice.

If the submitter dies (its process killed: its run CRASHED, or RUNNING with a dead owner),
the next reconcile round (the embedded server's service, `caliban serve`, `caliban status`)
queues the run again, up to MAX_RESUMES times, and the runner resumes it: only what is
missing is submitted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from caliban_flows.platforms import registry
from caliban_flows.state import prefect_api
from caliban_flows.state.groups import BACKGROUND_TAG as BACKGROUND_TAG
from caliban_flows.state.groups import GroupRun, Remote, Unreached, where

BACKGROUND_AFTER_SECONDS = 30.0
RESUMED_TAG = "caliban:resumed:"  # + how many times a dead submitter's run was queued again
QUEUED = "Queued"  # the SCHEDULED state's name: waiting for the runner to submit
MAX_RESUMES = 10
PIECE_SECONDS = 30.0  # the submitter submits this many seconds' worth at a time (one task run)


def submit_seconds(jobs: int, per_minute: float) -> float:
    return jobs / per_minute * 60.0


def goes_to_background(jobs: int, per_minute: float | None) -> bool:
    return bool(per_minute) and submit_seconds(jobs, per_minute) > BACKGROUND_AFTER_SECONDS


def piece_size(per_minute: float) -> int:
    return max(1, math.ceil(per_minute / 60.0 * PIECE_SECONDS))


def queued_message(jobs: int, per_minute: float, now: datetime | None = None) -> str:
    now = now or datetime.now().astimezone()
    seconds = submit_seconds(jobs, per_minute)
    done = now + timedelta(seconds=seconds)
    return (
        f"{jobs:,} jobs queued: submitting in the background at {per_minute:g}/min, "
        f"done by about {done:%H:%M} ({_duration(seconds)})"
    )


def _duration(seconds: float) -> str:
    minutes = seconds / 60.0
    return f"{seconds:.0f} s" if minutes < 2 else f"{minutes:.0f} min"


def runner_ready(http, deployment: str) -> bool:
    """A runner serves the group deployment now (Prefect marks it READY while one polls)."""
    got = http.get(f"/deployments/name/{deployment}")
    return got.status_code == 200 and got.json().get("status") == "READY"


def resumes(tags: Sequence[str] | None) -> int:
    for tag in tags or ():
        if tag.startswith(RESUMED_TAG):
            return int(tag[len(RESUMED_TAG) :] or 0)
    return 0


def _unsubmitted(run: GroupRun, remote: Remote) -> int:
    seen = remote.get(where(run), {})
    if isinstance(seen, Unreached):
        return 0
    return sum(1 for j in run.jobs if (j["key"], j["attempt"]) not in seen)


def requeue_dead(http, runs: list[GroupRun], remote: Remote) -> list[GroupRun]:
    """Background runs whose submitter died with jobs still to submit, queued again for the
    runner (each at most MAX_RESUMES times); the runs as they are now."""
    from caliban_flows.server.owner import alive

    out = []
    for run in runs:
        dead = run.state == "CRASHED" or (run.state == "RUNNING" and alive(run.owner) is False)
        if run.background and dead and _unsubmitted(run, remote):
            got = http.get(f"/flow_runs/{run.flow_run_id}")
            got.raise_for_status()
            mine = got.json().get("tags") or []
            count = resumes(mine)
            if count < MAX_RESUMES:
                kept = [t for t in mine if not t.startswith(RESUMED_TAG)]
                body = {"tags": [*kept, f"{RESUMED_TAG}{count + 1}"]}
                http.patch(f"/flow_runs/{run.flow_run_id}", json=body).raise_for_status()
                message = f"its submitter ended early: queued again ({count + 1} of {MAX_RESUMES})"
                state = {"type": "SCHEDULED", "name": QUEUED, "message": message}
                prefect_api.set_state(http, run.flow_run_id, state)
                run = replace(run, state="SCHEDULED", state_name=QUEUED, message=message)
        out.append(run)
    return out


def progress_line(run: GroupRun, rows: list[dict]) -> str | None:
    """`caliban status`'s line for a group still being submitted in the background."""
    if not run.background or run.state not in ("SCHEDULED", "RUNNING", "PENDING"):
        return None
    mine = [r for r in rows if r["flow_run_id"] == run.flow_run_id]
    queued = sum(1 for r in mine if r["state"] == "QUEUED")
    if not queued:
        return None
    submitted = len(mine) - queued
    running = sum(1 for r in mine if r["state"] == "RUNNING")
    per_minute = registry.get(run.platform).submit_per_minute(run.placement or {})
    pace = f" at {per_minute:g}/min" if per_minute else ""
    done = ""
    if per_minute:
        finish = datetime.now().astimezone() + timedelta(seconds=submit_seconds(queued, per_minute))
        done = f", done by about {finish:%H:%M}"
    waiting = " (waiting for the runner)" if run.state == "SCHEDULED" else ""
    return (f"xgroup {run.xgroup}: {queued:,} queued, {submitted:,} submitted ({running:,} "
            f"running): submitting in the background{pace}{done}{waiting}")  # fmt: skip
