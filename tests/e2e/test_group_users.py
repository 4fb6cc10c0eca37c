"""Groups have users: two people who both name their group `sweep` on one Prefect server (one
caliban home here) keep two groups. status, stop and resubmit act on your own unless you say
--user NAME or --all_users, and another user's jobs are always asked about.

The user is the OS user as Python's getpass reads it ($USER first), so one test process can be
two people.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests.conftest import BIN, caliban_runner
from tests.prefect_http import auth_headers

TRAIN = "import sys\nprint('training', sys.argv[1:])\n"


@pytest.fixture
def two_users(tmp_path: Path, docker_client):
    project = tmp_path / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (project / "requirements.txt").write_text("")
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "u")}
    env.pop("PREFECT_API_URL", None)
    users = {name: caliban_runner(project, {**env, "USER": name, "LOGNAME": name})
             for name in ("alice", "bob")}  # fmt: skip
    yield users
    stop = "from caliban_flows.server import backend; backend.stop()"
    subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)


def _rows(cli, xgroup: str, *flags: str) -> list[dict]:
    done = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "0", *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_users_groups_of_one_name_stay_apart(two_users, docker_client):
    alice, bob = two_users["alice"], two_users["bob"]
    xgroup = f"sweep-{uuid.uuid4().hex[:6]}"
    for cli in (alice, bob):
        ran = cli("run", "--nogpu", "--xgroup", xgroup, "trainer.train", "--", "--lr", "0.1")
        assert ran.returncode == 0, ran.stderr
    containers = docker_client.containers.list(
        all=True, filters={"label": f"caliban.xgroup={xgroup}"}
    )
    assert len(containers) == 2  # bob's run found no job of alice's to take for his own

    mine = _rows(alice, xgroup)
    assert [(r["user"], r["attempt"], r["state"]) for r in mine] == [("alice", 1, "SUCCEEDED")]
    assert [r["user"] for r in _rows(bob, xgroup)] == ["bob"]
    assert [r["user"] for r in _rows(bob, xgroup, "--user", "alice")] == ["alice"]
    assert sorted(r["user"] for r in _rows(bob, xgroup, "--all_users")) == ["alice", "bob"]
    assert len({r["key"] for r in _rows(bob, xgroup, "--all_users")}) == 2
    both = bob("status", "--xgroup", xgroup, "--all_users", "--user", "alice")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1, both.stderr

    # bob reruns alice's job: asked even with --yes; "no" changes nothing.
    again = ("resubmit", "--xgroup", xgroup, "--all_jobs", "--yes", "--user", "alice")
    refused = bob(*again, input="n\n")
    assert refused.returncode == 0, refused.stderr
    assert "belong to alice" in refused.stdout
    assert [r["attempt"] for r in _rows(alice, xgroup)] == [1]
    agreed = bob(*again, input="y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert sorted(r["attempt"] for r in _rows(alice, xgroup)) == [1, 2]
    assert [r["attempt"] for r in _rows(bob, xgroup)] == [1]  # bob's own job untouched


KEY = "pnu_cloudstandin0123456789abcdefghijklmn"
WORKSPACE = "/api/accounts/a/workspaces/w"


class _PrefectCloud(BaseHTTPRequestHandler):
    """Prefect Cloud's shape on loopback: a workspace API that wants the bearer key (served by a
    real Prefect server behind it), and `/api/me/` that names the key's user."""

    local: str = ""  # the real server's API URL
    local_auth: ClassVar[dict[str, str]] = {}
    cloud_handle: str | None = "alice"  # None: the key is a service account's
    asked: ClassVar[list[str]] = []

    def _answer(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        sent = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).asked.append(self.path)
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._answer(401, b'{"detail": "Unauthorized"}')
        if self.path == "/api/me/":
            if self.cloud_handle is None:
                return self._answer(403, b'{"detail": "Only users can access this endpoint."}')
            return self._answer(200, json.dumps({"handle": self.cloud_handle}).encode())
        if not self.path.startswith(WORKSPACE + "/"):
            return self._answer(404, b'{"detail": "Not Found"}')
        answer = httpx.request(self.command, self.local + self.path[len(WORKSPACE):],
                               content=sent, headers={**self.local_auth,
                               "Content-Type": self.headers.get("Content-Type") or
                               "application/json"}, timeout=120)  # fmt: skip
        self._answer(answer.status_code, answer.content,
                     answer.headers.get("Content-Type", "application/json"))  # fmt: skip

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _route

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def prefect_cloud(two_users, tmp_path: Path):
    """The two users' groups, read through a Prefect Cloud stand-in by a third OS user whose
    profile holds the stand-in's URL and key: (a runner for that user, the stand-in)."""
    alice = two_users["alice"]
    start = [str(BIN / "python"), "-m", "caliban_flows.server.backend", "start"]
    started = subprocess.run(start, env=alice.env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    handler = type(
        "CloudHere",
        (_PrefectCloud,),
        {"asked": [], "local": started.stdout.strip(), "local_auth": auth_headers(alice)},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prefect_home = tmp_path / "cloud-user" / ".prefect"
    prefect_home.mkdir(parents=True)
    (prefect_home / "profiles.toml").write_text(
        f'active = "cloud"\n\n[profiles.cloud]\n'
        f'PREFECT_API_URL = "http://127.0.0.1:{server.server_port}{WORKSPACE}"\n'
        f'PREFECT_API_KEY = "{KEY}"\n'
    )
    env = {**alice.env, "USER": "root", "LOGNAME": "root", "PREFECT_HOME": str(prefect_home),
           "CALIBAN_HOME": str(tmp_path / "cloud-user" / "caliban")}  # fmt: skip
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING",
                 "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "CALIBAN_USER"):  # fmt: skip
        env.pop(name, None)
    try:
        yield caliban_runner(alice.cwd, env), handler
    finally:
        server.shutdown()


def test_on_prefect_cloud_your_groups_are_your_handles(two_users, prefect_cloud):
    """The OS user here is root, as in many containers: Prefect Cloud's handle decides."""
    cloud, standin = prefect_cloud
    xgroup = f"cloud-{uuid.uuid4().hex[:6]}"
    for cli in two_users.values():
        ran = cli("run", "--nogpu", "--xgroup", xgroup, "trainer.train", "--", "--lr", "0.1")
        assert ran.returncode == 0, ran.stderr

    assert [r["user"] for r in _rows(cloud, xgroup)] == ["alice"]
    assert "/api/me/" in standin.asked
    standin.cloud_handle = "bob"
    assert [r["user"] for r in _rows(cloud, xgroup)] == ["bob"]
    listed = cloud("status", "--xgroup", xgroup, "--all_users")
    assert listed.returncode == 0 and "(user alice)" in listed.stdout, listed.stderr
    # CALIBAN_USER wins, and Prefect Cloud is not asked who you are.
    standin.asked.clear()
    named = cloud("status", "--xgroup", xgroup, "--format", "json", env={**cloud.env,
                  "CALIBAN_USER": "alice"})  # fmt: skip
    assert [r["user"] for r in json.loads(named.stdout)] == ["alice"], named.stderr
    assert "/api/me/" not in standin.asked
    # A service account's key keeps the OS user (root: no group of root's here).
    standin.cloud_handle = None
    mine = cloud("status", "--xgroup", xgroup)
    assert mine.returncode == 2, mine.stderr
    assert f"no experiment group named '{xgroup}' of user root" in mine.stderr


def test_a_key_prefect_cloud_refuses_is_one_line(two_users, prefect_cloud):
    cloud, _ = prefect_cloud
    profile = Path(cloud.env["PREFECT_HOME"]) / "profiles.toml"
    profile.write_text(profile.read_text().replace(KEY, "pnu_wrong"))
    done = cloud("status")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().count("\n") == 0 and "who you are" in done.stderr, done.stderr
    assert "pnu_wrong" not in done.stderr
