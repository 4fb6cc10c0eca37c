"""Which process runs a group's flow run, and whether it still does: `host:pid:start`.

A group's run is created with its process as a tag (`owner:host:pid:start`). A
reconcile round, or the embedded server's idle check, on the same host can then tell a run
whose process died (SIGKILL, an OOM kill) from one still at work, and settle it from the
platform's truth.
The start time guards against a reused pid.

A run can be run again in place (the UI's Retry, `caliban resubmit`): the process that does
it claims the run (`claim_tags`), and `owner-run:N` says which of the run's runs the owner
tag is for. Until a new process claims a run again, its old owner says nothing about it.
"""

from __future__ import annotations

import os
import socket


def _start_time(pid: int) -> str | None:
    """The process's start, in clock ticks since boot (Linux); None where /proc is not."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat(5), counted after the command's ")"
    except (OSError, IndexError):
        return None


def this_process() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


OWNER_TAG = "owner:"


def owner_tag() -> str:
    return OWNER_TAG + this_process()


OWNER_RUN_TAG = "owner-run:"


def claim_tags(tags: list[str] | None, run_count: int) -> list[str]:
    """The run's tags with this process as the owner of its `run_count`-th run."""
    kept = [t for t in tags or () if not t.startswith((OWNER_TAG, OWNER_RUN_TAG))]
    return [*kept, owner_tag(), f"{OWNER_RUN_TAG}{run_count}"]


def owned_run(tags: list[str] | None) -> int:
    """Which run of its flow run the owner tag is for (1 when the run was created with it)."""
    text = next((t[len(OWNER_RUN_TAG) :] for t in tags or () if t.startswith(OWNER_RUN_TAG)), "")
    return int(text) if text.isdigit() else 1


def starting_again(run: dict) -> bool:
    """A flow run (as the API gives it) on its way to being run again, e.g. by a runner after
    Retry in the UI, that no process has claimed yet: nobody can tell it died. Prefect counts
    each entry into RUNNING; whoever enters it claims that entry (`claim_tags`) first, but a
    runner cannot. Runs made before group runs had a deployment are never retried."""
    if not run.get("deployment_id"):
        return False
    owned, count = owned_run(run.get("tags")), run.get("run_count") or 0
    state = run.get("state") or {}
    waiting = state.get("type") == "PENDING" or state.get("name") == "AwaitingRetry"
    return count > owned or (waiting and 0 < count == owned)


def owner_of(tags: list[str] | None) -> str | None:
    return next((t[len(OWNER_TAG) :] for t in tags or () if t.startswith(OWNER_TAG)), None)


def alive(owner: str | None) -> bool | None:
    """True or False for a process of this host; None when unknown (no record, another host)."""
    if not owner or owner.count(":") < 2:
        return None
    host, pid_text, started = owner.rsplit(":", 2)
    if host != socket.gethostname() or not pid_text.isdigit():
        return None
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: not ours, so ours is gone
        return False
    return not started or _start_time(pid) in (None, started)
