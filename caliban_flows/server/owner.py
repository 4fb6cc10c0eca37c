"""Which process runs a group's flow run, and whether it still does: `host:pid:start`.

A group's run is created with its process as a tag (`owner:host:pid:start`). A
reconcile round, or the embedded server's idle check, on the same host can then tell a run
whose process died (SIGKILL, an OOM kill) from one still at work, and settle it from the
platform's truth.
The start time guards against a reused pid.
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
