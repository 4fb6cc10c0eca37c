"""The embedded server is its user's alone: another local user reads none of its home, and its
API answers them 401 (it requires the home's secret; /health alone is open)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.conftest import BIN

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_home_database_and_log_are_private(tmp_path):
    home = tmp_path / "caliban-home"
    env = {**os.environ, "CALIBAN_HOME": str(home), "HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    backend = [str(BIN / "python"), "-m", "caliban_flows.server.backend"]
    try:
        started = subprocess.run([*backend, "start"], env=env, capture_output=True, text=True,
                                 timeout=120)  # fmt: skip
        assert started.returncode == 0, started.stderr
        api = started.stdout.strip()
        database = home / "prefect" / "prefect.db"
        assert _mode(home) == 0o700
        assert _mode(database) & 0o077 == 0, oct(_mode(database))
        assert _mode(home / "server.log") & 0o077 == 0
        tmp_path.chmod(0o755)  # nobody may walk to the home; the home itself must stop it
        assert _mode(home / "api-auth") == 0o600
        for path in (database, home / "server.log", home / "api-auth"):
            other = subprocess.run([*NOBODY, "cat", str(path)], capture_output=True, text=True)
            assert other.returncode != 0 and "Permission denied" in other.stderr, other
        # What another user can send: no secret, or a wrong one. Runs, blocks with their
        # secrets, the settings: all 401. The open health probe shows the server is there.
        asks = [
            ("GET", "/health", None),
            ("POST", "/flow_runs/filter", "{}"),
            ("POST", "/block_documents/filter?include_secrets=true", "{}"),
            ("GET", "/admin/settings", None),
        ]
        for method, path, body in asks:
            for auth in ([], ["-u", "caliban:guess"]):
                argv = [
                    *NOBODY,
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    *auth,
                    "-X",
                    method,
                    f"{api}{path}",
                    "-H",
                    "content-type: application/json",
                ]
                if body is not None:
                    argv += ["-d", body]
                code = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
                assert code == ("200" if path == "/health" else "401"), (method, path, auth, code)
    finally:
        subprocess.run([*backend, "stop"], env=env, timeout=60)
