"""A holder of a one-slot lease (state.leases) that died on this machine frees it at once: the
next taker reads the holder's record in the caliban home, sees its process gone and frees its
lease instead of waiting out Prefect's 60 s. A live holder, or one on another machine, is
waited for; only the lease the record names is ever freed. Against a real Prefect server."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from caliban_flows.state import prefect_api
from caliban_flows.state.leases import LeaseBusy, held
from tests.prefect_http import own_server

HOLDER = """
import sys
from caliban_flows.state import prefect_api
from caliban_flows.state.leases import held
with prefect_api.client(sys.argv[1]) as http, held(http, sys.argv[2], wait=60):
    print("held", flush=True)
    sys.stdin.read()  # holds until its stdin is closed, or it is killed
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("lease-home")
    with own_server(home) as url:
        yield url, home


@pytest.fixture
def api(server, monkeypatch):
    url, home = server
    monkeypatch.setenv("CALIBAN_HOME", str(home))
    return url, home


class Holder:
    """Another process of this machine that takes the lease `name` and keeps it."""

    def __init__(self, url: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline() == "held\n"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(30) == 0


def lease_calls(http) -> list[tuple[str, int, str | None]]:
    """Each lease call `http` makes from now on: (increment, status, the lease granted) or
    (decrement, status, the lease freed)."""
    calls: list[tuple[str, int, str | None]] = []

    def log(response) -> None:
        what = response.request.url.path.rsplit("/", 1)[-1]
        if what == "increment-with-lease":
            response.read()
            lease = response.json()["lease_id"] if response.is_success else None
            calls.append(("increment", response.status_code, lease))
        elif what == "decrement-with-lease":
            lease = json.loads(response.request.content)["lease_id"]
            calls.append(("decrement", response.status_code, lease))

    http.event_hooks["response"] = [log]
    return calls


def record_of(home: Path, name: str) -> tuple[Path, dict]:
    """The record of who holds the lease `name`."""
    (path,) = (home / "leases").glob(f"{name}.*.json")
    return path, json.loads(path.read_text())


def fresh_name() -> str:
    return f"test-lease-{uuid.uuid4().hex[:8]}"


def killed_holder(api) -> tuple[str, Path, dict]:
    """A new lease's name, and the path and content of the record its holder left when it
    was SIGKILLed."""
    url, home = api
    name = fresh_name()
    holder = Holder(url, name)
    path, record = record_of(home, name)
    assert record["pid"] == holder.proc.pid
    holder.kill()
    return name, path, record


def test_a_holder_killed_on_this_machine_frees_its_lease_at_once(api):
    url, home = api
    name, path, record = killed_holder(api)
    assert stat.S_IMODE((home / "leases").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with prefect_api.client(url) as http:
        calls = lease_calls(http)
        # wait=0: taken only if the dead holder's lease (60 s) was freed, not waited out
        with held(http, name, wait=0):
            mine = record_of(home, name)[1]
            assert mine["pid"] == os.getpid()
    assert calls == [
        ("increment", 423, None),
        ("decrement", 204, record["lease_id"]),  # the dead holder's lease, freed
        ("increment", 200, mine["lease_id"]),  # taken on the first try after
        ("decrement", 204, mine["lease_id"]),
    ]
    assert not list((home / "leases").glob(f"{name}.*.json"))  # released: no record left


def test_a_live_holder_on_this_machine_is_waited_for(api):
    url, _ = api
    name = fresh_name()
    holder = Holder(url, name)
    with prefect_api.client(url) as http:
        calls = lease_calls(http)
        with pytest.raises(LeaseBusy), held(http, name, wait=0):
            pass
        holder.release()
        with held(http, name, wait=0):
            pass
    assert [c[:2] for c in calls] == [("increment", 423), ("increment", 200), ("decrement", 204)]


def test_a_pid_reused_by_another_process_is_not_the_holder(api):
    url, _ = api
    name, path, record = killed_holder(api)
    path.write_text(json.dumps({**record, "pid": os.getpid()}))  # alive, started at another time
    with prefect_api.client(url) as http:
        calls = lease_calls(http)
        with held(http, name, wait=0):
            pass
    assert ("decrement", 204, record["lease_id"]) in calls


def test_a_holder_on_another_machine_is_waited_for(api):
    url, _ = api
    name, path, record = killed_holder(api)
    path.write_text(json.dumps({**record, "host": "elsewhere"}))
    with prefect_api.client(url) as http:
        calls = lease_calls(http)
        with pytest.raises(LeaseBusy), held(http, name, wait=0):
            pass
    assert calls == [("increment", 423, None)]
    path.unlink()


def test_a_stale_record_frees_only_the_lease_it_names(api):
    """A dead holder's record whose lease is no longer active (lapsed, since taken by a live
    holder): Prefect ignores the freed lease id, and the live holder keeps its lease."""
    url, home = api
    name = fresh_name()
    with prefect_api.client(url) as http:
        calls = lease_calls(http)
        with held(http, name, wait=0):
            pass
        lapsed = calls[0][2]
        holder = Holder(url, name)
        path, record = record_of(home, name)
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True)  # fmt: skip
        path.write_text(json.dumps({**record, "pid": int(ended.stdout), "lease_id": lapsed}))
        calls.clear()
        with pytest.raises(LeaseBusy), held(http, name, wait=0):
            pass
        assert calls == [("increment", 423, None), ("decrement", 204, lapsed),
                         ("increment", 423, None)]  # fmt: skip
        limit = http.get(f"/v2/concurrency_limits/{name}").json()
        assert limit["active_slots"] == 1  # still the live holder's
    holder.release()


def test_two_waiters_free_a_dead_holders_lease_once(api):
    url, _ = api
    name, _, record = killed_holder(api)
    dead = record["lease_id"]
    start, loser_done = threading.Barrier(2), threading.Event()
    outcomes: list[str] = []
    freed: list[tuple] = []

    def take() -> None:
        with prefect_api.client(url) as http:
            calls = lease_calls(http)
            start.wait(30)
            try:
                with held(http, name, wait=0):
                    outcomes.append("held")
                    loser_done.wait(60)  # held until the other one has tried
            except LeaseBusy:
                outcomes.append("busy")
                loser_done.set()
            freed.extend(c for c in calls if c[0] == "decrement" and c[2] == dead)

    both = [threading.Thread(target=take) for _ in range(2)]
    for thread in both:
        thread.start()
    for thread in both:
        thread.join(90)
    assert sorted(outcomes) == ["busy", "held"]
    assert len(freed) == 1


class BusyServer(httpx.BaseTransport):
    """The server's answer to the first `times` lease requests: 503, as a SQLite-backed Prefect
    gives it (after the client's own retries) while its write lock stays taken."""

    def __init__(self, inner: httpx.BaseTransport, times: int) -> None:
        self.inner, self.left = inner, times

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/increment-with-lease") and self.left:
            self.left -= 1
            return httpx.Response(503, request=request)
        return self.inner.handle_request(request)


def test_a_busy_server_is_waited_on_like_a_taken_lease(api):
    """Seen in a full run: a 503 on taking a group's submission lease failed the group."""
    url, _ = api
    name = fresh_name()
    with prefect_api.client(url) as http:
        http._transport = BusyServer(http._transport, times=2)
        calls = lease_calls(http)
        with held(http, name, wait=30, on_wait=lambda: pytest.fail("nobody holds it")):
            pass
    assert [(what, status) for what, status, _ in calls] == [
        ("increment", 503), ("increment", 503), ("increment", 200), ("decrement", 204)
    ]  # fmt: skip


def test_a_server_busy_past_the_wait_is_its_error(api):
    url, _ = api
    with prefect_api.client(url) as http:
        http._transport = BusyServer(http._transport, times=1)
        with pytest.raises(httpx.HTTPStatusError, match="503"), held(http, fresh_name(), wait=0):
            pass
