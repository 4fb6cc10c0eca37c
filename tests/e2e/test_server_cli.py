"""`caliban server start|status|stop` and `caliban ui`, as a user types them, on a real
embedded Prefect server of a caliban home of this module's own."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.conftest import BIN, caliban_runner
from tests.prefect_http import auth_env


@pytest.fixture
def cli(tmp_path):
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "user")}
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILE", "DISPLAY",
                 "WAYLAND_DISPLAY"):  # fmt: skip
        env.pop(name, None)
    run = caliban_runner(tmp_path, env)
    try:
        yield run
    finally:
        subprocess.run([str(BIN / "caliban"), "server", "stop"], env=env, timeout=60)


def _ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_server_start_status_ui_stop(cli):
    assert _ok(cli("server", "status")).splitlines()[0] == "stopped"

    started = _ok(cli("server", "start"))
    assert started.startswith("running: http://127.0.0.1:")
    api = started.split()[1]
    assert _ok(cli("server", "start")).split()[1] == api  # the running one, not a second

    status = _ok(cli("server", "status")).splitlines()
    assert status[0].startswith(f"running: {api} (UI {api.removesuffix('/api')}, pid ")

    ui = cli("ui")
    page = _ok(ui).strip()
    assert page == api.removesuffix("/api")
    assert "api-auth" in ui.stderr and "opened" not in ui.stderr  # no display here
    assert httpx.get(page, timeout=30).status_code == 200

    missing = cli("ui", "--xgroup", "no-such-group")
    assert missing.returncode == 2 and "no experiment group named 'no-such-group'" in missing.stderr

    assert _ok(cli("server", "stop")).strip() == "stopped"
    assert _ok(cli("server", "status")).splitlines()[0] == "stopped"
    assert _ok(cli("server", "stop")).strip() == "was not running"

    again = _ok(cli("ui", "--no_browser")).strip()  # starts the server it needs
    assert httpx.get(again, timeout=30).status_code == 200
    assert _ok(cli("server", "status")).startswith("running: ")


def test_ui_of_your_own_prefect_api(cli):
    api = _ok(cli("server", "start")).split()[1]
    yours = {**cli.env, "PREFECT_API_URL": api, **auth_env(cli), "CALIBAN_HOME": "/nonexistent"}
    ui = cli("ui", "--no_browser", env=yours)
    assert _ok(ui).strip() == api.removesuffix("/api") and "api-auth" not in ui.stderr
    assert httpx.get(ui.stdout.strip(), timeout=30).status_code == 200
    assert _ok(cli("server", "status", env=yours)).startswith(f"external: {api} ")
    assert "nothing to stop" in _ok(cli("server", "stop", env=yours))

    cloud = "https://api.prefect.cloud/api/accounts/acc-1/workspaces/ws-2"
    shown = _ok(cli("ui", "--no_browser", env={**cli.env, "PREFECT_API_URL": cloud}))
    assert shown.strip() == "https://app.prefect.cloud/account/acc-1/workspace/ws-2"
