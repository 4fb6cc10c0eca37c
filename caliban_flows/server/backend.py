"""Which Prefect API `caliban` talks to: the user's, or a local server caliban runs itself.

With PREFECT_API_URL set (in the environment or in the active Prefect profile, which is where
`prefect cloud login` puts it) that API is used as is. Otherwise caliban runs
`prefect server start` on 127.0.0.1 under a small detached supervisor
(`python -m caliban_flows.server.backend supervise`) that outlives the command which started it.
Later commands find it through `<caliban home>/server.json` and reuse it. Every command
touches `server.last-used`; the supervisor stops the server once that is older than
CALIBAN_SERVER_IDLE_MINUTES (default 30) and no flow run is active in it.

This module is the API callers use, and the `python -m` entry point. The rest of the package:
    home.py        the files under the caliban home ($CALIBAN_HOME or ~/.caliban), the seed db
    health.py      the `/health` probe of a Prefect API
    launcher.py    finding or starting a home's server and waiting for it (BackendError)
    supervisor.py  the detached supervisor (idle stop, signals) and the server process it runs

Settings (environment): CALIBAN_SERVER_IDLE_MINUTES (0 or less: never stop),
CALIBAN_SERVER_START_TIMEOUT (seconds, default 60), CALIBAN_SERVER_PORT (a fixed port instead
of a free one). Other PREFECT_* variables reach the server, e.g. a PostgreSQL
PREFECT_API_DATABASE_CONNECTION_URL.

Only the standard library and httpx load here: `caliban --help` must not import Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from caliban_flows.server.health import EXTERNAL_HEALTH_TIMEOUT as EXTERNAL_HEALTH_TIMEOUT
from caliban_flows.server.health import HOST, _healthy
from caliban_flows.server.home import DATABASE_URL_ENV as DATABASE_URL_ENV
from caliban_flows.server.home import (
    _forget_state,
    _locked,
    _Paths,
    _paths,
    _read_state,
    _touch,
    api_auth,
    caliban_home,
    outwait_the_database,
)
from caliban_flows.server.home import _seed_database as _seed_database
from caliban_flows.server.home import _seed_marker as _seed_marker
from caliban_flows.server.launcher import (
    DEFAULT_IDLE_MINUTES,
    LOCAL_URL_ENV,
    BackendError,
    _alive,
    _float_env,
    _launch_or_find,
    _wait_exit,
    _wait_healthy,
)
from caliban_flows.server.launcher import _server_env as _server_env
from caliban_flows.server.supervisor import ACTIVE_STATES as ACTIVE_STATES
from caliban_flows.server.supervisor import SERVER_STOP_GRACE as SERVER_STOP_GRACE
from caliban_flows.server.supervisor import SUPERVISOR_READY_LIMIT as SUPERVISOR_READY_LIMIT
from caliban_flows.server.supervisor import SUPERVISOR_TAG as SUPERVISOR_TAG
from caliban_flows.server.supervisor import serve, supervise

# The `X as X` imports above only re-export: names that this module had before it was split
# (tests use the private ones).
__all__ = [
    "LOCAL_URL_ENV",
    "BackendError",
    "api_url",
    "caliban_home",
    "external_url",
    "main",
    "point_prefect_at",
    "start_in_background",
    "status",
    "stop",
    "use_backend",
    "wait_ready",
]

DEFAULT_START_TIMEOUT = 60.0


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
    if external_url() is None:
        os.environ["PREFECT_HOME"] = str(_paths().prefect_home)
        os.environ[LOCAL_URL_ENV] = url
        _send_local_auth(_paths())
        _bypass_proxy_for_loopback()
    os.environ["PREFECT_API_URL"] = url
    outwait_the_database()
    return url


def start_in_background() -> str:
    """Start the local server if none runs, without waiting for it; return its future URL.

    Lets a command overlap the server's start-up (4-6 s; 12-16 s the first time, when
    Prefect migrates its database) with its own work. Call wait_ready() or use_backend()
    before the first API call.
    """
    external = external_url()
    if external is not None:
        return external
    p = _paths()
    with _home_errors(p):
        _touch(p)
        _send_local_auth(p)
        return _launch_or_find(p)["url"]


def wait_ready(timeout: float | None = None) -> str:
    """Block until the API answers (starting the local server if needed); return its URL."""
    external = external_url()
    if external is not None:
        return external
    p = _paths()
    with _home_errors(p):
        _touch(p)
        _send_local_auth(p)
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
    external = external_url()
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
# which API: the user's (PREFECT_API_URL, their Prefect profile) or caliban's own


def external_url() -> str | None:
    """The user's Prefect API (PREFECT_API_URL, or their profile's, with its key); None when
    caliban runs its own server."""
    url = os.environ.get("PREFECT_API_URL", "").strip().rstrip("/")
    if url:
        return None if url == os.environ.get(LOCAL_URL_ENV) else url
    return _profile_api_url()


def _send_local_auth(p: _Paths) -> None:
    """The local server's secret, for every client here and every process started from here
    (this process talks to its own home's server: another home's secret must not stay)."""
    os.environ["PREFECT_API_AUTH_STRING"] = api_auth(p)


def _profile_api_url() -> str | None:
    """PREFECT_API_URL of the user's active Prefect profile (`prefect cloud login` sets it).
    Its PREFECT_API_KEY (or a self-hosted server's PREFECT_API_AUTH_STRING) goes with it:
    put into this process's environment, unless one is there already, so that every client
    here (Prefect's, caliban's REST one, the health check) and every process started from
    here sends it."""
    profile = _active_profile()
    url = str(profile.get("PREFECT_API_URL") or "").strip().rstrip("/")
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
        value = str(profile.get(name) or "").strip()
        if url and value and not os.environ.get(name):
            os.environ[name] = value
    return url or None


def _active_profile() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return {}
    prefect_home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home / "profiles.toml")
    try:
        data = tomllib.loads(path.expanduser().read_text())
    except (OSError, ValueError):
        return {}
    name = os.environ.get("PREFECT_PROFILE") or data.get("active") or "ephemeral"
    profile = data.get("profiles", {}).get(name) or {}
    return profile if isinstance(profile, dict) else {}


@contextlib.contextmanager
def _home_errors(p: _Paths) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise BackendError(f"caliban home {p.home}: {e.strerror or e}") from None


def _bypass_proxy_for_loopback() -> None:
    proxied = any(os.environ.get(k) for k in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"))
    if not proxied:
        return
    for key in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in os.environ.get(key, "").split(",") if h.strip()]
        if HOST not in hosts:
            os.environ[key] = ",".join([*hosts, HOST])


# ---------------------------------------------------------------------------------------------
# `python -m caliban_flows.server.backend ...`: how the supervisor and the server are launched


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
