"""The supervisor of caliban's local Prefect server, and the server process it runs.

`python -m caliban_flows.server.backend supervise --home H --port P` (launched detached by
caliban_flows.server.launcher) runs `... backend serve --port P` as its child, waits for it to
get healthy, and stops it once the home's `server.last-used` is older than the idle limit and
no flow run is active in it, or on SIGTERM/SIGINT/SIGHUP. backend.main() dispatches both
subcommands here.

Only the standard library and httpx load here; serve() alone imports Prefect.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from caliban_flows.lean_httpx import httpx
from caliban_flows.server.health import HOST, _healthy, _loopback_client
from caliban_flows.server.home import PRIVATE_UMASK, _forget_state, _mtime, _Paths

# What `python -m` runs for both the supervisor and the server; a live supervisor's
# /proc/PID/cmdline contains it.
ENTRY_MODULE = "caliban_flows.server.backend"
RUNNER_MODULE = "caliban_flows.flows.runner"  # started by name: the server layer runs no flow
# A flow run in one of these states keeps the server up however long caliban was idle.
ACTIVE_STATES = ("RUNNING", "PENDING", "CANCELLING")
# A server that never gets healthy must not live forever.
SUPERVISOR_READY_LIMIT = 600.0
SERVER_STOP_GRACE = 10.0
SUPERVISOR_TAG = "caliban supervisor"


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
    """Flow runs still at work. A run whose recorded process on this host died (a killed
    `caliban run`) is not: the next reconcile round settles it, and it must not keep the
    server up forever meanwhile. A remote group handed to its platform ("Submitted") is, and
    so is a run waiting for the runner (Retry in the UI)."""
    wanted = [*ACTIVE_STATES, "SCHEDULED"]
    body = {"flow_runs": {"state": {"type": {"any_": wanted}}}, "limit": 200}
    try:
        response = client.post(f"{url}/flow_runs/filter", json=body, timeout=10.0)
        response.raise_for_status()
        runs = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return sum(1 for run in runs if keeps_server_up(run))


def keeps_server_up(run: dict) -> bool:
    """An active flow run (as the API gives it) whose process lives, or whose jobs are with
    their platform; not one whose process on this host died."""
    from caliban_flows.server.owner import alive, owner_of, starting_again

    state = run.get("state") or {}
    if state.get("type") == "SCHEDULED":  # a deployment's future run does not; a retry does
        return state.get("name") == "AwaitingRetry"
    handed_over = state.get("name") == "Submitted"
    return handed_over or starting_again(run) or alive(owner_of(run.get("tags"))) is not False


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
    os.umask(PRIVATE_UMASK)  # the database, its journal and the logs: this user's alone
    p = _Paths(home)
    url = f"http://{HOST}:{port}/api"
    idle_seconds = idle_minutes * 60.0
    tick = min(max(idle_seconds / 10.0, 0.2), 15.0)

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    child: subprocess.Popen | None = None
    runner: subprocess.Popen | None = None
    code = 0
    try:
        argv = [sys.executable, "-m", ENTRY_MODULE, "serve", "--port", str(port)]
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
                if runner is not None and runner.poll() is not None:
                    _say(f"the runner exited with code {runner.returncode}: Retry in the UI "
                         "waits for the next server")  # fmt: skip
                    runner = None
                if ready_at is None:
                    if _healthy(url, client):
                        ready_at = time.time()
                        _say(f"ready after {ready_at - started:.1f} s")
                        runner = _start_runner(port, hook)
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
        for process in (runner, child):
            if process is not None:
                _terminate(process)
        _forget_state(p, os.getpid())


def _start_runner(port: int, hook) -> subprocess.Popen:
    """The runner of this server: it carries out Retry in the UI (flows.runner)."""
    argv = [sys.executable, "-m", RUNNER_MODULE, "--port", str(port)]
    runner = subprocess.Popen(argv, stdin=subprocess.DEVNULL, preexec_fn=hook)
    _say(f"runner pid {runner.pid} serves the group deployment")
    return runner


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
