"""Which Prefect API `caliban` talks to: the user's, or a local server caliban runs itself.

With PREFECT_API_URL set (in the environment or in the active Prefect profile, which is where
`prefect cloud login` puts it) that API is used as is. Otherwise caliban runs
`prefect server start` on 127.0.0.1 under a small detached supervisor
(`python -m caliban_flows.server.backend supervise`) that outlives the command which started it.
Later commands find it through `<caliban home>/server.json` and reuse it. Every command
touches `server.last-used`; the supervisor stops the server once that is older than
CALIBAN_SERVER_IDLE_MINUTES (default 30) and no flow run is active in it.

Files under the caliban home ($CALIBAN_HOME or ~/.caliban):
    server.json        pid (the supervisor's), port, url of the running server
    server.lock        flock: one command at a time decides whether to start a server
    server.last-used   its mtime is the last time a caliban command used the server
    server.log         the supervisor's and the server's output (previous one: server.log.1)
    prefect/           PREFECT_HOME of the local server and of caliban's Prefect clients

Settings (environment): CALIBAN_SERVER_IDLE_MINUTES (0 or less: never stop),
CALIBAN_SERVER_START_TIMEOUT (seconds, default 60), CALIBAN_SERVER_PORT (a fixed port instead
of a free one). Other PREFECT_* variables reach the server, e.g. a PostgreSQL
PREFECT_API_DATABASE_CONNECTION_URL.

Only the standard library and httpx load here: `caliban --help` must not import Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from caliban_flows.lean_httpx import httpx

HOST = "127.0.0.1"
DEFAULT_IDLE_MINUTES = 30.0
DEFAULT_START_TIMEOUT = 60.0
# A flow run in one of these states keeps the server up however long caliban was idle.
ACTIVE_STATES = ("RUNNING", "PENDING", "CANCELLING")
# Set next to PREFECT_API_URL by use_backend(), so that this process and its children still
# see the URL as caliban's own local server and not as a user's.
LOCAL_URL_ENV = "CALIBAN_LOCAL_PREFECT_API_URL"
# A server that never gets healthy must not live forever.
SUPERVISOR_READY_LIMIT = 600.0
SERVER_STOP_GRACE = 10.0
SUPERVISOR_TAG = "caliban supervisor"
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")

# Supervisors started by this process: polling them reaps the zombie an exited child leaves
# behind, which os.kill(pid, 0) would still call alive.
_children: dict[int, subprocess.Popen] = {}


DATABASE_URL_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"  # a user's own database: no seed
EXTERNAL_HEALTH_TIMEOUT = 3.0  # a dead PREFECT_API_URL must fail a command within seconds


class BackendError(RuntimeError):
    """The Prefect API is unusable: the local server cannot start or never got healthy."""


class _Paths:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state = home / "server.json"
        self.lock = home / "server.lock"
        self.last_used = home / "server.last-used"
        self.log = home / "server.log"
        self.prefect_home = home / "prefect"


def caliban_home() -> Path:
    return Path(os.environ.get("CALIBAN_HOME") or Path.home() / ".caliban").expanduser()


def _paths() -> _Paths:
    return _Paths(caliban_home())


# ---------------------------------------------------------------------------------------------
# public API


def api_url() -> str:
    """The Prefect API URL to use, starting the local server first if it is needed."""
    return wait_ready()


def use_backend() -> str:
    """Point this process's Prefect (imported after this call) at the API; return its URL."""
    return point_prefect_at(wait_ready())


def point_prefect_at(url: str) -> str:
    """Set this process's Prefect settings to `url` (a started server's, ready or not)."""
    if _external_url() is None:
        os.environ["PREFECT_HOME"] = str(_paths().prefect_home)
        os.environ[LOCAL_URL_ENV] = url
        _bypass_proxy_for_loopback()
    os.environ["PREFECT_API_URL"] = url
    return url


def start_in_background() -> str:
    """Start the local server if none runs, without waiting for it; return its future URL.

    Lets a command overlap the server's start-up (4-6 s; 12-16 s the first time, when
    Prefect migrates its database) with its own work. Call wait_ready() or use_backend()
    before the first API call.
    """
    external = _external_url()
    if external is not None:
        return external
    p = _paths()
    with _home_errors(p):
        _touch(p)
        return _launch_or_find(p)["url"]


def wait_ready(timeout: float | None = None) -> str:
    """Block until the API answers (starting the local server if needed); return its URL."""
    external = _external_url()
    if external is not None:
        return external
    p = _paths()
    with _home_errors(p):
        _touch(p)
    limit = _float_env("CALIBAN_SERVER_START_TIMEOUT", DEFAULT_START_TIMEOUT)
    limit = limit if timeout is None else timeout
    deadline = time.monotonic() + limit
    for attempt in range(3):
        with _home_errors(p):
            state = _launch_or_find(p)
        failure = _wait_healthy(state, p, deadline, limit)
        if failure is None:
            return state["url"]
        # Another program took the free port we picked before the server bound it.
        retry = "already in use" in failure and not os.environ.get("CALIBAN_SERVER_PORT")
        if not (retry and attempt < 2):
            raise BackendError(failure)
    raise AssertionError("unreachable")


def status() -> dict:
    """Where caliban's Prefect API is and whether it answers. Starts nothing."""
    external = _external_url()
    if external is not None:
        return {"mode": "external", "url": external, "pid": None, "running": _healthy(external)}
    p = _paths()
    state = _read_state(p)
    alive = bool(state) and _alive(state["pid"])
    return {
        "mode": "local",
        "url": state["url"] if alive else None,
        "pid": state["pid"] if alive else None,
        "running": alive and _healthy(state["url"]),
        "home": str(p.home),
        "log": str(p.log),
        # False until the first server created Prefect's database: there is no history yet.
        "initialized": (p.prefect_home / "prefect.db").exists(),
    }


def stop(timeout: float = 30.0) -> bool:
    """Stop the local server of this caliban home, if one runs. True if one was stopped."""
    p = _paths()
    if not p.home.is_dir():
        return False
    with _locked(p):
        state = _read_state(p)
        if state is None:
            return False
        pid = state["pid"]
        stopped = _alive(pid)
        if stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_exit(pid, timeout):
                # The supervisor leads its own process group, the server included.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                _wait_exit(pid, 5.0)
        _forget_state(p, pid)
        return stopped


# ---------------------------------------------------------------------------------------------
# finding and starting the local server


def _external_url() -> str | None:
    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if url:
        return None if url == os.environ.get(LOCAL_URL_ENV) else url
    return _profile_api_url()


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the user's active Prefect profile (`prefect cloud login` sets it)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return None
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml")
    try:
        data = tomllib.loads(path.expanduser().read_text())
    except (OSError, ValueError):
        return None
    name = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(name) or {}
    url = str(profile.get("PREFECT_API_URL") or "").strip().rstrip("/")
    return url or None


def _launch_or_find(p: _Paths) -> dict:
    """The state of the live server of this home, or of one just launched (maybe not ready)."""
    with _locked(p):
        state = _read_state(p)
        if state is not None and _alive(state["pid"]):
            return state
        with contextlib.suppress(FileNotFoundError):
            p.state.unlink()
        _seed_database(p)
        port = _pick_port()
        idle = _float_env("CALIBAN_SERVER_IDLE_MINUTES", DEFAULT_IDLE_MINUTES)
        with contextlib.suppress(FileNotFoundError):
            p.log.replace(p.log.with_name(p.log.name + ".1"))
        argv = [sys.executable, "-m", "caliban_flows.server.backend", "supervise"]
        argv += ["--home", str(p.home), "--port", str(port), "--idle-minutes", str(idle)]
        with open(p.log, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(p),
                # Prefect reads .env and prefect.toml from the working directory: not the user's.
                cwd=p.home,
                start_new_session=True,
                close_fds=True,
            )
        _children[proc.pid] = proc
        state = {
            "pid": proc.pid,
            "port": port,
            "url": f"http://{HOST}:{port}/api",
            "prefect_home": str(p.prefect_home),
            "log": str(p.log),
            "idle_minutes": idle,
            "started_at": time.time(),
        }
        tmp = p.state.with_name(p.state.name + ".tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.replace(p.state)
        return state


def _seed_database(p: _Paths) -> bool:
    """Give a new home the already-migrated database shipped for this Prefect version.

    Migrating a fresh database takes most of a first start (about 8 of 12 s on 2 cores);
    the seed (made by devtools/prefect_template.py) is that same result. With any other
    Prefect version there is no seed and Prefect migrates as usual.
    """
    import gzip
    from importlib.metadata import PackageNotFoundError, version
    from importlib.resources import files

    database = p.prefect_home / "prefect.db"
    if database.exists() or os.environ.get(DATABASE_URL_ENV):  # theirs, e.g. PostgreSQL
        return False
    try:
        seed = files("caliban_flows") / "data" / f"prefect-{version('prefect')}.db.gz"
    except PackageNotFoundError:
        return False
    if not seed.is_file():
        return False
    p.prefect_home.mkdir(parents=True, exist_ok=True)
    partial = database.with_name(database.name + ".seeding")
    with seed.open("rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
        partial.write_bytes(gz.read())
    partial.replace(database)
    _seed_marker(p).write_text(version("prefect"))
    return True


def _seed_marker(p: _Paths) -> Path:
    return p.prefect_home / "caliban-seeded-for"


def _seeded_for_this_prefect(p: _Paths) -> bool:
    """True while the database is our seed's schema for the Prefect installed now."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return _seed_marker(p).read_text().strip() == version("prefect")
    except (OSError, PackageNotFoundError):
        return False


def _server_env(p: _Paths) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(key, None)
    env.pop(LOCAL_URL_ENV, None)
    env["PREFECT_HOME"] = str(p.prefect_home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    if _seeded_for_this_prefect(p) and not os.environ.get(DATABASE_URL_ENV):
        # Already migrated, block types already registered: checking both again costs ~1 s
        # of every start. After a Prefect upgrade the marker differs and Prefect does both.
        env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        env["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
    env["PYTHONUNBUFFERED"] = "1"  # the log's last line must be current when we quote it
    env["COLUMNS"] = "400"  # or rich wraps the server's messages at 80 columns
    # The supervisor runs with cwd=home, so it must find this package without the caller's cwd.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def _pick_port() -> int:
    fixed = os.environ.get("CALIBAN_SERVER_PORT", "").strip()
    if fixed:
        if not fixed.isdigit() or not 0 < int(fixed) < 65536:
            raise BackendError(f"CALIBAN_SERVER_PORT must be a port number, not {fixed!r}")
        port = int(fixed)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                raise BackendError(
                    f"{HOST}:{port} (CALIBAN_SERVER_PORT) is already in use"
                ) from None
        return port
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_healthy(state: dict, p: _Paths, deadline: float, limit: float) -> str | None:
    """None once the server answers; a one-line reason if its supervisor died."""
    pause = 0.02
    with _loopback_client() as client:
        while True:
            if _healthy(state["url"], client):
                return None
            if not _alive(state["pid"]):
                return f"the local Prefect server did not start: {_log_reason(p)} (log: {p.log})"
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"the local Prefect server at {state['url']} was not healthy after "
                    f"{limit:g} s: {_log_reason(p)} (log: {p.log})"
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.25)


def _loopback_client() -> httpx.Client:
    # No proxy for loopback; plain http, so loading the CA bundle (~35 ms) is wasted time.
    return httpx.Client(trust_env=False, verify=False)


def _healthy(url: str, client: httpx.Client | None = None) -> bool:
    local = url.startswith(f"http://{HOST}:")
    headers = {}
    key = os.environ.get("PREFECT_API_KEY")
    if key and not local:
        headers["Authorization"] = f"Bearer {key}"
    try:
        if client is not None:
            response = client.get(f"{url}/health", timeout=2.0, headers=headers)
        elif local:
            with _loopback_client() as own:
                response = own.get(f"{url}/health", timeout=2.0)
        else:
            response = httpx.get(f"{url}/health", timeout=EXTERNAL_HEALTH_TIMEOUT, headers=headers)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _log_reason(p: _Paths) -> str:
    try:
        with open(p.log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode(errors="replace")
    except OSError:
        return "no server log"
    # The supervisor's own lines say when, not why; uvicorn ends with "Server stopped!" after
    # the line that matters, so prefer the last exception or port complaint.
    lines = [x.strip() for x in tail.splitlines() if x.strip() and SUPERVISOR_TAG not in x]
    telling = [x for x in lines if _ERROR_LINE.match(x) or "already in use" in x]
    return (telling or lines or ["the server log is empty"])[-1]


def _alive(pid: int) -> bool:
    """Whether pid is a live caliban supervisor (not a zombie, not a recycled pid)."""
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    if not Path("/proc/self").exists():
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
    except OSError:
        return False
    return b"caliban_flows.server.backend" in cmdline


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@contextlib.contextmanager
def _home_errors(p: _Paths) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise BackendError(f"caliban home {p.home}: {e.strerror or e}") from None


@contextlib.contextmanager
def _locked(p: _Paths) -> Iterator[None]:
    p.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(p.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_state(p: _Paths) -> dict | None:
    try:
        state = json.loads(p.state.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return None
    if not isinstance(state.get("url"), str):
        return None
    return state


def _forget_state(p: _Paths, pid: int) -> None:
    state = _read_state(p)
    if state is not None and state["pid"] == pid:
        with contextlib.suppress(FileNotFoundError):
            p.state.unlink()


def _touch(p: _Paths) -> None:
    p.home.mkdir(parents=True, exist_ok=True)
    p.last_used.touch()
    os.utime(p.last_used)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BackendError(f"{name} must be a number, not {raw!r}") from None


def _bypass_proxy_for_loopback() -> None:
    proxied = any(os.environ.get(k) for k in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))
    if not proxied:
        return
    for key in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in os.environ.get(key, "").split(",") if h.strip()]
        if HOST not in hosts:
            os.environ[key] = ",".join([*hosts, HOST])


# ---------------------------------------------------------------------------------------------
# the supervisor: `python -m caliban_flows.server.backend supervise --home H --port P`


class _Stop(BaseException):
    """Raised from a signal handler, so it interrupts sleeps and blocking calls."""


def _say(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} {SUPERVISOR_TAG} {os.getpid()}: {message}", file=sys.stderr, flush=True)


def _die_with_parent_hook():
    """Linux: have the server SIGTERMed if the supervisor is killed outright (SIGKILL, OOM)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return lambda: libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _active_runs(client: httpx.Client, url: str) -> int | None:
    body = {"flow_runs": {"state": {"type": {"any_": list(ACTIVE_STATES)}}}}
    try:
        response = client.post(f"{url}/flow_runs/count", json=body, timeout=10.0)
        response.raise_for_status()
        return int(response.json())
    except (httpx.HTTPError, ValueError):
        return None


def _idle_for(p: _Paths, ready_at: float) -> float:
    return time.time() - max(_mtime(p.last_used), ready_at)


def _claim_idle_stop(p: _Paths, idle_seconds: float, ready_at: float) -> bool:
    """Under the lock, so that no command picks up this server's URL as we retire it."""
    fd = os.open(p.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a command is looking at the state right now: it will touch
        if _idle_for(p, ready_at) < idle_seconds:
            return False
        _forget_state(p, os.getpid())
        return True
    finally:
        os.close(fd)


def _terminate(child: subprocess.Popen) -> None:
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(SERVER_STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def supervise(home: Path, port: int, idle_minutes: float) -> int:
    p = _Paths(home)
    url = f"http://{HOST}:{port}/api"
    idle_seconds = idle_minutes * 60.0
    tick = min(max(idle_seconds / 10.0, 0.2), 15.0)

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    child: subprocess.Popen | None = None
    code = 0
    try:
        argv = [sys.executable, "-m", "caliban_flows.server.backend", "serve", "--port", str(port)]
        hook = _die_with_parent_hook()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=hook)
        _say(f"prefect server pid {child.pid} on {url}, idle limit {idle_minutes:g} min")
        started = time.time()
        ready_at: float | None = None
        unanswered = 0
        kept_up_by: int | None = None
        with _loopback_client() as client:
            while True:
                code = child.poll()
                if code is not None:
                    _say(f"prefect server exited with code {code}")
                    return code or 1
                if ready_at is None:
                    if _healthy(url, client):
                        ready_at = time.time()
                        _say(f"ready after {ready_at - started:.1f} s")
                    elif time.time() - started > SUPERVISOR_READY_LIMIT:
                        _say(f"not healthy after {SUPERVISOR_READY_LIMIT:g} s, stopping it")
                        return 1
                    else:
                        time.sleep(0.2)
                        continue
                elif idle_seconds > 0 and _idle_for(p, ready_at) >= idle_seconds:
                    active = _active_runs(client, url)
                    # A server too busy to answer three times running is not in use by us.
                    unanswered = unanswered + 1 if active is None else 0
                    if active and active != kept_up_by:
                        _say(f"idle, but {active} flow run(s) active: staying up")
                    kept_up_by = active
                    if (active == 0 or unanswered >= 3) and _claim_idle_stop(
                        p, idle_seconds, ready_at
                    ):
                        _say(f"idle for {idle_minutes:g} min, stopping the server")
                        return 0
                time.sleep(tick)
    except _Stop as stop_signal:
        _say(f"{stop_signal}: stopping the server")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if child is not None:
            _terminate(child)
        _forget_state(p, os.getpid())


def serve(port: int) -> int:
    """What `prefect server start` runs in the foreground, minus its CLI's imports.

    The collector is off while Prefect's server modules load: they build thousands of
    pydantic objects, and collecting between them makes the import ~20% slower.
    """
    import gc

    # The UI tells the browser where the API is; Prefect's default would be port 4200.
    os.environ["PREFECT_UI_API_URL"] = f"http://{HOST}:{port}/api"
    gc.disable()
    from prefect.server.api.server import create_app

    app = create_app(final=True)
    gc.enable()
    gc.freeze()  # what was imported stays; later collections need not walk it
    import uvicorn
    from prefect.settings import PREFECT_SERVER_LOGGING_LEVEL

    level = PREFECT_SERVER_LOGGING_LEVEL.value().lower()
    uvicorn.run(app, host=HOST, port=port, log_level=level)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m caliban_flows.server.backend")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("supervise", help="run and idle-stop a Prefect server (internal)")
    run.add_argument("--home", type=Path, required=True)
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--idle-minutes", type=float, default=DEFAULT_IDLE_MINUTES)
    serving = commands.add_parser("serve", help="run a Prefect server in the foreground (internal)")
    serving.add_argument("--port", type=int, required=True)
    commands.add_parser("start", help="start the local server if needed, print its URL")
    commands.add_parser("status", help="print where the Prefect API is, as JSON")
    commands.add_parser("stop", help="stop the local server")
    args = parser.parse_args(argv)
    if args.command == "supervise":
        return supervise(args.home, args.port, args.idle_minutes)
    if args.command == "serve":
        return serve(args.port)
    try:
        if args.command == "start":
            print(api_url())
        elif args.command == "status":
            print(json.dumps(status(), indent=1))
        else:
            print("stopped" if stop() else "no local server was running")
    except BackendError as e:
        print(f"caliban: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
