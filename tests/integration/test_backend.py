"""caliban's Prefect backend against real `prefect server start` processes.

Each test has its own CALIBAN_HOME, and so its own server. A first-ever start (Prefect's
migrations) takes 12-16 s here, so it happens once per session and its database is copied
into each home; every test still starts its own server from that copy (about 4 s).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from caliban_flows.server import backend
from tests.prefect_http import api_client

PYTHON = sys.executable
ENV_VARS = (
    "PREFECT_API_URL",
    "PREFECT_API_KEY",
    "PREFECT_HOME",
    "PREFECT_PROFILE",
    backend.LOCAL_URL_ENV,
    "CALIBAN_SERVER_IDLE_MINUTES",
    "CALIBAN_SERVER_PORT",
    "CALIBAN_SERVER_START_TIMEOUT",
)


def _isolate(mp: pytest.MonkeyPatch, home: Path) -> None:
    mp.setenv("CALIBAN_HOME", str(home))
    for var in ENV_VARS:
        mp.delenv(var, raising=False)
    # A Prefect profile of whoever runs the tests must not make these tests "external".
    mp.setenv("PREFECT_PROFILES_PATH", str(home.parent / "no-such-profiles.toml"))


def _supervisors(home: Path) -> list[int]:
    """Live supervisor processes of this caliban home, found in /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"supervise" in argv and str(home).encode() in argv:
            found.append(int(entry.name))
    return found


def _server_pid(supervisor: int) -> int:
    """The supervisor's server child (its other child, once the server is up, is the runner)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    servers = [
        int(pid)
        for pid in children
        if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]
    assert len(servers) == 1, children
    return servers[0]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    except OSError:
        return True


def _poll(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


def _api(url: str, home: Path) -> httpx.Client:
    return api_client(url + "/", home, timeout=30.0)


def _post(api: httpx.Client, path: str, body: dict) -> dict:
    """POST, retrying 503s as Prefect's client does: SQLite's writers collide now and then."""
    for _ in range(50):
        response = api.post(path, json=body)
        if response.status_code != 503:
            response.raise_for_status()
            return response.json()
        time.sleep(0.1)
    raise AssertionError(f"{path}: still 503")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """The Prefect home left by a first-ever start in an empty caliban home."""
    home = tmp_path_factory.mktemp("first-start") / "caliban"
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, home)
        try:
            url = backend.api_url()
            assert httpx.get(f"{url}/health", trust_env=False).json() is True
        finally:
            backend.stop()
    return home / "prefect"


@pytest.fixture
def home(tmp_path, monkeypatch, migrated_db) -> Path:
    home = tmp_path / "caliban"
    (home / "prefect").mkdir(parents=True)
    with (
        sqlite3.connect(migrated_db / "prefect.db") as source,
        sqlite3.connect(home / "prefect" / "prefect.db") as copy,
    ):
        source.backup(copy)
    memo = migrated_db / "memo_store.toml"  # block types already registered in that database
    if memo.exists():
        (home / "prefect" / memo.name).write_bytes(memo.read_bytes())
    _isolate(monkeypatch, home)
    yield home
    backend.stop()
    assert _supervisors(home) == []


def test_first_use_starts_a_server_that_later_calls_reuse(home):
    assert backend.status() == {
        "mode": "local",
        "url": None,
        "pid": None,
        "running": False,
        "home": str(home),
        "log": str(home / "server.log"),
        "initialized": True,
    }

    started = time.monotonic()
    url = backend.start_in_background()  # returns at once: the server starts meanwhile
    assert time.monotonic() - started < 2.0
    assert backend.wait_ready() == url
    assert backend.api_url() == url

    assert url.startswith("http://127.0.0.1:") and url.endswith("/api")
    assert httpx.get(f"{url}/health", trust_env=False).json() is True
    first = backend.status()
    assert first["mode"] == "local" and first["url"] == url and first["running"] is True
    state = json.loads((home / "server.json").read_text())
    assert state["pid"] == first["pid"] and state["url"] == url
    assert (home / "prefect" / "prefect.db").exists()  # PREFECT_HOME is under CALIBAN_HOME
    server = _server_pid(first["pid"])

    started = time.monotonic()
    assert backend.api_url() == url
    assert time.monotonic() - started < 2.0
    assert backend.status()["pid"] == first["pid"]
    assert _supervisors(home) == [first["pid"]]

    # The server lives in the background after the command that started it has exited.
    done = subprocess.run(
        [PYTHON, "-c", "from caliban_flows.server import backend; print(backend.use_backend())"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == url

    assert backend.use_backend() == url
    assert os.environ["PREFECT_API_URL"] == url
    assert os.environ["PREFECT_HOME"] == str(home / "prefect")
    # Still caliban's own server, not a user's one.
    assert backend.status()["mode"] == "local"
    assert backend.api_url() == url

    assert backend.stop() is True
    assert _gone(first["pid"]) and _gone(server)
    assert not (home / "server.json").exists()
    assert backend.status()["running"] is False
    assert backend.stop() is False


def test_a_stale_state_file_is_recovered(home):
    exited = subprocess.Popen([PYTHON, "-c", "pass"])
    exited.wait()
    stranger = subprocess.Popen(["sleep", "60"])  # alive, but not a supervisor
    try:
        for pid in (exited.pid, stranger.pid):
            stale = {"pid": pid, "port": 9, "url": "http://127.0.0.1:9/api"}
            (home / "server.json").write_text(json.dumps(stale))
            assert backend.status()["running"] is False
            assert backend.status()["pid"] is None
        assert backend.stop() is False
        assert stranger.poll() is None  # never signals a pid it does not own
    finally:
        stranger.kill()
        stranger.wait()

    # The real thing: a supervisor killed outright leaves its state file behind.
    backend.api_url()
    supervisor = backend.status()["pid"]
    server = _server_pid(supervisor)
    os.kill(supervisor, signal.SIGKILL)
    _poll(lambda: _gone(supervisor) and _gone(server), 30, "the orphaned server to exit")
    assert json.loads((home / "server.json").read_text())["pid"] == supervisor

    url = backend.api_url()

    assert httpx.get(f"{url}/health", trust_env=False).json() is True
    assert backend.status()["pid"] not in (None, supervisor)


def test_a_prefect_api_url_of_the_user_starts_nothing(home, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api/")

    assert backend.api_url() == "http://127.0.0.1:9/api"
    assert backend.start_in_background() == "http://127.0.0.1:9/api"
    assert backend.use_backend() == "http://127.0.0.1:9/api"
    assert os.environ.get("PREFECT_HOME") is None
    assert backend.status() == {
        "mode": "external",
        "url": "http://127.0.0.1:9/api",
        "pid": None,
        "running": False,
    }

    # `prefect cloud login` keeps the URL in the active profile rather than the environment.
    monkeypatch.delenv("PREFECT_API_URL")
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(
        'active = "cloud"\n[profiles.cloud]\n'
        'PREFECT_API_URL = "https://api.prefect.cloud/api/accounts/a/workspaces/w"\n'
    )
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(profiles))
    assert backend.api_url() == "https://api.prefect.cloud/api/accounts/a/workspaces/w"

    assert not (home / "server.json").exists()
    assert _supervisors(home) == []
    assert backend.stop() is False


def test_two_commands_at_once_share_one_server(home):
    script = (
        "from caliban_flows.server import backend; "
        "print(backend.api_url(), backend.status()['pid'])"
    )
    commands = [
        subprocess.Popen([PYTHON, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    in_process: list[str] = []
    thread = threading.Thread(target=lambda: in_process.append(backend.api_url()))
    thread.start()
    outputs = [command.communicate(timeout=90)[0].split() for command in commands]
    thread.join(timeout=90)

    assert all(command.returncode == 0 for command in commands)
    assert len({tuple(output) for output in outputs}) == 1, outputs
    url, pid = outputs[0]
    assert in_process == [url]
    assert _supervisors(home) == [int(pid)]


def test_the_server_stops_when_idle_but_not_while_a_flow_run_is_running(home, monkeypatch):
    monkeypatch.setenv("CALIBAN_SERVER_IDLE_MINUTES", "0.05")  # 3 s
    url = backend.api_url()
    pid = backend.status()["pid"]
    server = _server_pid(pid)
    with _api(url, home) as api:
        flow = _post(api, "flows/", {"name": "idle-test"})
        run = _post(api, "flow_runs/", {"flow_id": flow["id"], "state": {"type": "RUNNING"}})
        assert run["state"]["type"] == "RUNNING"

        log = home / "server.log"
        _poll(lambda: "1 flow run(s) active: staying up" in log.read_text(), 30, "idle")
        assert backend.status()["running"] is True

        completed = {"state": {"type": "COMPLETED"}, "force": True}
        assert _post(api, f"flow_runs/{run['id']}/set_state", completed)["status"] == "ACCEPT"

    _poll(lambda: _gone(pid) and _gone(server), 30, "the idle server to stop")
    assert not (home / "server.json").exists()
    assert "idle for 0.05 min, stopping the server" in log.read_text()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/health", trust_env=False, timeout=2)


def test_a_flow_run_with_tasks_lands_in_the_local_server(home):
    name = f"backend-test-{uuid.uuid4().hex[:8]}"
    script = textwrap.dedent(
        f"""
        import asyncio, json
        from caliban_flows.server import backend
        url = backend.use_backend()

        from prefect import flow, task
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowRunFilter
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        @task
        def add(x, y):
            return x + y

        @flow(name={name!r})
        def group():
            return add(add(add(1, 2), 3), 4)

        with temporary_settings({{PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}}):
            assert group() == 10

        async def read_back():
            async with get_client() as client:
                [run] = await client.read_flow_runs(
                    flow_filter=FlowFilter(name={{"any_": [{name!r}]}})
                )
                # Task runs are recorded from events, asynchronously.
                for _ in range(200):
                    tasks = await client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id={{"any_": [run.id]}})
                    )
                    if len(tasks) == 3 and all(t.state and t.state.is_completed() for t in tasks):
                        break
                    await asyncio.sleep(0.1)
                return str(run.id), run.state.type.value, len(tasks), str(client.api_url)

        run_id, state, tasks, client_url = asyncio.run(read_back())
        print(json.dumps(dict(url=url, client_url=client_url, run=run_id, state=state,
                              tasks=tasks)))
        """
    )
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["state"] == "COMPLETED" and report["tasks"] == 3
    assert report["client_url"].rstrip("/") == report["url"] == backend.status()["url"]
    # Seen from outside that process: the run is in caliban's server, not an ephemeral one.
    with _api(report["url"], home) as api:
        run = api.get(f"flow_runs/{report['run']}").json()
    assert run["state_type"] == "COMPLETED"


def test_a_server_that_cannot_start_raises_backend_error_with_the_reason(home):
    (home / "prefect" / "prefect.db").write_bytes(b"not a database, " * 64)

    with pytest.raises(backend.BackendError) as failed:
        backend.api_url()

    message = str(failed.value)
    assert "\n" not in message
    assert "file is not a database" in message and str(home / "server.log") in message
    assert backend.status()["running"] is False


def test_a_taken_port_is_reported_without_starting_anything(home, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("CALIBAN_SERVER_PORT", str(port))

        with pytest.raises(backend.BackendError, match=f"127.0.0.1:{port} .* already in use"):
            backend.api_url()
    assert _supervisors(home) == []


def test_importing_the_backend_does_not_load_prefect():
    probe = (
        "import sys, caliban_flows.server.backend\n"
        "heavy = ('prefect', 'fastapi', 'sqlalchemy', 'uvicorn')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))"
    )
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
