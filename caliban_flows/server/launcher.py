"""Finding or starting the local Prefect server of a caliban home, and waiting for it.

One command at a time (under server.lock) reads server.json: a live supervisor's server is
reused; otherwise a new supervisor (caliban_flows.server.supervisor) is launched detached on a
free port, and server.json records it before the server is up. Waiting polls `/health` and
quotes the server log's telling line when the supervisor dies or the wait times out.

Only the standard library and httpx load here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from caliban_flows.server.health import HOST, _healthy, _loopback_client
from caliban_flows.server.home import (
    DATABASE_URL_ENV,
    _locked,
    _Paths,
    _read_state,
    _seed_database,
    _seeded_for_this_prefect,
    api_auth,
    outwait_the_database,
)
from caliban_flows.server.supervisor import ENTRY_MODULE, SUPERVISOR_TAG

DEFAULT_IDLE_MINUTES = 30.0
# Set next to PREFECT_API_URL by use_backend(), so that this process and its children still
# see the URL as caliban's own local server and not as a user's.
LOCAL_URL_ENV = "CALIBAN_LOCAL_PREFECT_API_URL"
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")

# Supervisors started by this process: polling them reaps the zombie an exited child leaves
# behind, which os.kill(pid, 0) would still call alive.
_children: dict[int, subprocess.Popen] = {}


class BackendError(RuntimeError):
    """The Prefect API is unusable: the local server cannot start or never got healthy."""


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
        argv = [sys.executable, "-m", ENTRY_MODULE, "supervise"]
        argv += ["--home", str(p.home), "--port", str(port), "--idle-minutes", str(idle)]
        fd = os.open(p.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as log:
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


def _server_env(p: _Paths) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        env.pop(key, None)
    env.pop(LOCAL_URL_ENV, None)
    env["PREFECT_HOME"] = str(p.prefect_home)
    # The server requires it; its runner (and the flow runs the runner starts) send it.
    env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"] = api_auth(p)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    outwait_the_database(env)  # the runner, and the flow runs it starts
    if _seeded_for_this_prefect(p) and not os.environ.get(DATABASE_URL_ENV):
        # Already migrated, block types already registered: checking both again costs ~1 s
        # of every start. After a Prefect upgrade the marker differs and Prefect does both.
        env["PREFECT_API_DATABASE_MIGRATE_ON_START"] = "false"
        env["PREFECT_API_BLOCKS_REGISTER_ON_START"] = "false"
    env["PYTHONUNBUFFERED"] = "1"  # the log's last line must be current when we quote it
    env["COLUMNS"] = "400"  # or rich wraps the server's messages at 80 columns
    # The supervisor runs with cwd=home, so it must find this package without the caller's cwd.
    # This file is <root>/caliban_flows/server/launcher.py.
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
    return ENTRY_MODULE.encode() in cmdline


def _wait_exit(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise BackendError(f"{name} must be a number, not {raw!r}") from None
