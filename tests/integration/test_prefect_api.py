"""Our Prefect REST client rides out a busy server (503, 429) and sends the Cloud key."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from caliban_flows.lean_httpx import httpx
from caliban_flows.state import prefect_api
from tests.conftest import fresh_python


@pytest.fixture(autouse=True)
def _no_server_secret(monkeypatch):
    # An in-process backend call of an earlier test leaves its home's secret in the
    # environment: it would be sent instead of the key (a fresh interpreter inherits it too).
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)


@pytest.fixture
def server():
    seen: list[tuple[str, str | None]] = []
    answers: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append((self.path, self.headers.get("Authorization")))
            code = answers.pop(0) if answers else 200
            body = b'{"ok": true}' if code == 200 else b'{"detail": "database is locked"}'
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api", seen, answers
    httpd.shutdown()
    httpd.server_close()


def test_503_and_429_are_retried_with_the_same_body(server, monkeypatch):
    url, seen, answers = server
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_secret")
    answers.extend([503, 429, 503])
    with prefect_api.client(url) as http:
        response = http.post("/flow_runs/filter", json={"limit": 1})
    assert response.status_code == 200 and response.json() == {"ok": True}
    assert [path for path, _ in seen] == ["/api/flow_runs/filter"] * 4
    assert {auth for _, auth in seen} == {"Bearer pnu_secret"}


def test_a_server_that_stays_busy_gives_its_last_answer(server, monkeypatch):
    url, seen, answers = server
    monkeypatch.setattr(prefect_api, "RETRY_SECONDS", 0.5)
    answers.extend([503] * 1000)
    with prefect_api.client(url) as http:
        response = http.post("/flow_runs/filter", json={})
    assert response.status_code == 503 and len(seen) >= 2


def test_a_lost_answer_is_retried_only_for_requests_that_can_be_repeated(server):
    """502/504: the server may have done the work. A read is asked again; creating an
    artifact, taking a lease or proposing a state is not (each would happen twice)."""
    url, seen, answers = server
    with prefect_api.client(url) as http:
        answers.extend([502, 504])
        read = http.post("/flow_runs/filter", json={})
        answers.append(502)
        made = http.post("/artifacts/", json={"key": "x"})
        answers.append(504)
        lease = http.post("/v2/concurrency_limits/increment-with-lease", json={})
        answers.append(502)
        state = http.post("/flow_runs/abc/set_state", json={})
    assert read.status_code == 200
    assert (made.status_code, lease.status_code, state.status_code) == (502, 504, 502)
    assert [path for path, _ in seen] == ["/api/flow_runs/filter"] * 3 + [
        "/api/artifacts/",
        "/api/v2/concurrency_limits/increment-with-lease",
        "/api/flow_runs/abc/set_state",
    ]


def test_httpx_comes_without_its_command_line_client(server):
    """A fresh interpreter: the client works, and httpx's CLI packages never load."""
    url, seen, _ = server
    probe = (
        "import json, sys\n"
        "from caliban_flows.state import prefect_api\n"
        "with prefect_api.client(sys.argv[1]) as http:\n"
        "    code = http.post('/flow_runs/filter', json={}).status_code\n"
        "cli = sorted({m.split('.')[0] for m in sys.modules} & {'click', 'rich', 'pygments'})\n"
        "print(json.dumps({'code': code, 'cli': cli, 'main': 'httpx._main' in sys.modules}))\n"
    )
    assert fresh_python(probe, url) == {"code": 200, "cli": [], "main": False}
    assert seen == [("/api/flow_runs/filter", None)]


@pytest.fixture
def slow_server():
    """Holds its first request unanswered until `release` is set, and answers the rest."""
    seen: list[str] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.path)
            if len(seen) == 1:
                release.wait(60)
            else:
                release.set()  # a second request arrived: the first was given up
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api", seen, release
    release.set()
    httpd.shutdown()
    httpd.server_close()


def test_a_read_left_unanswered_is_asked_again(slow_server):
    url, seen, _ = slow_server
    with prefect_api.client(url, timeout=0.5) as http:
        response = http.post("/flow_runs/filter", json={})
    assert response.status_code == 200
    assert seen == ["/api/flow_runs/filter"] * 2


def test_a_write_left_unanswered_is_not_sent_twice(slow_server):
    """It may have been done: creating it again would make two."""
    url, seen, release = slow_server
    with prefect_api.client(url, timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
        http.post("/artifacts/", json={"key": "x"})
    release.set()
    assert seen == ["/api/artifacts/"]


def test_the_client_outwaits_a_server_waiting_for_its_database():
    """Prefect's SQLite server waits up to 60 s for the write lock, then answers 503."""
    with prefect_api.client("http://127.0.0.1:9/api") as http:
        assert http.timeout.read is not None and http.timeout.read > 60
