"""One holder at a time: a one-slot Prefect concurrency limit held by a lease that is renewed
while the work goes on, so a long round never loses it and a crashed holder frees it when the
lease lapses (Prefect's shortest lease is 60 s).

A holder that died on this machine need not be waited out: each holder records its lease id
and who it is (host, pid, process start time) in the caliban home, and a waiter refused the
lease frees a recorded lease whose holder's process is gone, then takes it at once. A holder
on another machine, or alive, is waited for.

Used for a group's submission (two `caliban cloud` of one group never submit at once) and for
a --max_running pool's round. The limits show on the UI's Concurrency page.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from caliban_flows.state import prefect_api

LEASE_SECONDS = 60.0  # Prefect's shortest lease
RENEW_EVERY = LEASE_SECONDS / 4
RECORDS_DIR = "leases"  # in the caliban home: who holds which lease, one file per limit
UNKNOWN = "?"  # a process is there, but when it started cannot be told


class LeaseBusy(RuntimeError):
    """Another holder kept the lease for longer than we would wait: one line."""


def _ensure_lock(http, name: str) -> None:
    # Looked up first: the server logs a traceback for each create that finds it there.
    if http.get(f"/v2/concurrency_limits/{name}").status_code == 200:
        return
    made = http.post("/v2/concurrency_limits/", json={"name": name, "limit": 1})
    if made.status_code != 409:  # 409: made meanwhile by another holder
        made.raise_for_status()


@contextlib.contextmanager
def held(
    http,
    name: str,
    *,
    wait: float,
    on_wait: Callable[[], None] | None = None,
    busy: Callable[[], Exception] | None = None,
) -> Iterator[None]:
    """Hold the one-slot limit `name` (created if missing) for the block's duration; wait up
    to `wait` seconds for it (calling `on_wait` once, when it is taken), else raise `busy()`
    (LeaseBusy by default)."""
    _ensure_lock(http, name)
    body = {"names": [name], "slots": 1, "lease_duration": LEASE_SECONDS}
    record = _record_path(str(http.base_url), name)
    deadline = time.monotonic() + wait
    told = False
    freed: set[str] = set()  # each dead holder's lease once, whatever its record says later
    while True:
        got = http.post("/v2/concurrency_limits/increment-with-lease", json=body)
        # 503 past the client's own retries: a SQLite server whose write lock stayed taken
        # (seen for a minute in a full test run); nothing is held yet, so wait on as for 423
        refused = got.status_code in prefect_api.REFUSED
        if got.status_code != 423 and not (refused and time.monotonic() < deadline):
            got.raise_for_status()
            break
        if not refused and _free_if_holder_died(http, record, freed):
            continue
        if time.monotonic() > deadline:
            raise busy() if busy else LeaseBusy(f"{name!r} stayed taken for {wait:g} s")
        if not told and not refused and on_wait is not None:
            on_wait()
            told = True
        # Prefect says when to come back; never longer than a second.
        time.sleep(min(1.0, float(got.headers.get("Retry-After", "0.2") or 0.2)))
    lease = got.json()["lease_id"]
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew, args=(str(http.base_url), lease, stop), daemon=True, name=f"lease {name}"
    )
    renewer.start()
    try:
        _write_record(record, lease)
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        # The record goes first: a waiter never frees a lease its holder is freeing itself.
        _forget_record(record, lease)
        http.post("/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease})


def _renew(url: str, lease: str, stop: threading.Event) -> None:
    """Keep the lease alive until `stop`; a failed renewal is tried again next time (the lease
    has four renewal periods in it)."""
    with prefect_api.client(url.rstrip("/")) as http:
        while not stop.wait(RENEW_EVERY):
            with contextlib.suppress(Exception):
                http.post(
                    f"/v2/concurrency_limits/leases/{lease}/renew",
                    json={"lease_duration": LEASE_SECONDS},
                )


# ---------------------------------------------------------------------------------------------
# The holder's record: <caliban home>/leases/<limit>.json, read and written under one flock so
# that two waiters never both free the same lease (Prefect's decrement-with-lease reads the
# lease before it revokes it: two at once would both take a slot back, one of them the new
# holder's). The record only speeds things up: if it cannot be written, the lease still lapses.


def _record_path(api_url: str, name: str) -> Path:
    from caliban_flows.server.home import caliban_home

    # One Prefect server's limit: the same name on another server is another lease.
    digest = hashlib.sha256(f"{api_url.rstrip('/')}\n{name}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    return caliban_home() / RECORDS_DIR / f"{safe}.{digest}.json"


@contextlib.contextmanager
def _records_locked(record: Path) -> Iterator[None]:
    for folder in (record.parent.parent, record.parent):  # the home, then leases/: 0700
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.stat().st_mode & 0o077:
            folder.chmod(0o700)
    fd = os.open(record.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _me() -> dict:
    pid = os.getpid()
    return {"host": _host(), "pid": pid, "started": _started(pid)}


def _write_record(record: Path, lease: str) -> None:
    with contextlib.suppress(OSError), _records_locked(record):
        tmp = record.with_name(f"{record.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"lease_id": lease, **_me()}, f)
        tmp.replace(record)


def _read_record(record: Path) -> dict | None:
    try:
        held_by = json.loads(record.read_text(encoding="utf-8"))
        uuid.UUID(held_by["lease_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(held_by, dict) or not isinstance(held_by.get("pid"), int):
        return None
    return held_by


def _forget_record(record: Path, lease: str) -> None:
    """Remove the record if it is still ours: a holder whose lease lapsed may find another's."""
    with contextlib.suppress(OSError), _records_locked(record):
        held_by = _read_record(record)
        if held_by is None or held_by["lease_id"] == lease:
            record.unlink(missing_ok=True)


def _free_if_holder_died(http, record: Path, freed: set[str]) -> bool:
    """If the recorded holder is a process of this machine that is gone, free its lease (and
    only that lease: Prefect ignores one that is no longer active, e.g. lapsed and since taken
    by another) and say so; False when there is no such holder to free."""
    with contextlib.suppress(OSError), _records_locked(record):
        held_by = _read_record(record)
        if held_by is None or held_by["lease_id"] in freed or not _gone(held_by):
            return False
        lease = held_by["lease_id"]
        try:
            answer = http.post(
                "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease}
            )
        except Exception:  # the server out of reach: wait for the lease to lapse as before
            return False
        if not answer.is_success:  # 204, whether it freed the lease or found it gone
            return False
        freed.add(lease)
        record.unlink(missing_ok=True)
        return True
    return False


def _gone(held_by: dict) -> bool:
    """True when the holder ran on this machine and its process has ended (its pid is free, a
    zombie, or another process's that started at another time). Unsure means alive."""
    if held_by.get("host") != _host():
        return False
    now = _started(held_by["pid"])
    if now is None:
        return True
    if now == UNKNOWN or held_by.get("started") in (None, UNKNOWN):
        return False
    return now != held_by["started"]


def _host() -> str:
    """This machine: its name, and on Linux its boot (a pid of an earlier boot is no one's)."""
    import socket

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()} {boot}".strip()


def _started(pid: int) -> str | None:
    """When process `pid` started, in the system's own terms; None when there is no such
    process, or only its zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's: it is there
    if Path("/proc/self/stat").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            return None  # ended since
        except (OSError, IndexError):
            return UNKNOWN
        # fields[0] is the state; fields[19] the start time in clock ticks since boot
        return None if fields[0] in ("Z", "X") else fields[19]
    return _started_by_ps(pid)


def _started_by_ps(pid: int) -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["ps", "-o", "stat=,lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    if not out:
        return None
    state, _, started = out.partition(" ")
    return None if state.startswith("Z") else started.strip() or UNKNOWN
