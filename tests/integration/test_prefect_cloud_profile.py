"""After `prefect cloud login`, the profile's API key goes with the profile's URL.

A loopback stand-in for Prefect Cloud answers only requests that carry the profile's key as
a bearer token; `caliban status` is pointed at it by nothing but the profile.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import caliban_runner

KEY = "pnu_standin0123456789abcdefghijklmnopqrstuv"


SEEN: list[str | None] = []  # the Authorization header of every request the stand-in got


class _StandIn(BaseHTTPRequestHandler):
    def _answer(self, code: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        SEEN.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._answer(401, {"detail": "Unauthorized"})
        if self.path == "/api/me/":  # who the key's user is (server.cloud_user)
            return self._answer(200, {"handle": "standin-user"})
        if self.path.endswith("/health"):
            return self._answer(200, True)
        if self.path.endswith("/filter"):
            return self._answer(200, [])
        return self._answer(404, {"detail": "Not Found"})

    do_GET = do_POST = _route

    def log_message(self, *args) -> None:
        pass


def test_the_profiles_key_is_sent_with_its_url(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api/accounts/a/workspaces/w"
    prefect_home = tmp_path / ".prefect"
    prefect_home.mkdir()
    (prefect_home / "profiles.toml").write_text(
        f'active = "cloud"\n\n[profiles.cloud]\nPREFECT_API_URL = "{url}"\n'
        f'PREFECT_API_KEY = "{KEY}"\n'
    )
    env = {**os.environ, "HOME": str(tmp_path), "PREFECT_HOME": str(prefect_home),
           "CALIBAN_HOME": str(tmp_path / "caliban")}  # fmt: skip
    # PREFECT_API_AUTH_STRING too: one left by an earlier test would be sent instead of the key.
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
                 "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):  # fmt: skip
        env.pop(name, None)
    try:
        done = caliban_runner(tmp_path, env)("status", "--format", "json")
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert SEEN and all(h == f"Bearer {KEY}" for h in SEEN), SEEN
    assert KEY not in done.stdout + done.stderr
