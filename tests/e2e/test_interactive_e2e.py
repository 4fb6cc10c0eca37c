"""`caliban shell` through a real terminal and `caliban notebook` over HTTP, on a real engine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pexpect
import pytest

from tests.conftest import BIN


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text(f"mounted {uuid.uuid4()}\n")
    (tmp_path / "home").mkdir()
    return tmp_path


def env_for(project: Path) -> dict:
    return {**os.environ, "HOME": str(project / "home"), "SHELL": "/bin/bash"}


@pytest.mark.parametrize("bare", [False, True])
def test_shell_runs_a_command_typed_in_a_terminal(docker_client, project, bare):
    args = ["shell", "--nogpu", *(["--bare"] if bare else [])]
    child = pexpect.spawn(
        str(BIN / "caliban"), args, cwd=str(project), env=env_for(project), encoding="utf-8",
        timeout=300,
    )  # fmt: skip
    try:
        child.expect("docker run")  # the build is done and the session starts
        child.sendline("echo answer-$((6*7)) uid-$(id -u) $(cat /usr/app/notes.txt)")
        child.expect(r"answer-42 uid-(\d+) mounted")
        assert int(child.match.group(1)) == os.getuid()
        child.sendline("test -d $HOME && echo home-$? || echo no-home")
        child.expect("home-0" if not bare else "(home-0|no-home)")
        child.sendline("exit 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_notebook_answers_http_on_its_port(docker_client, project):
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "caliban"), "notebook", "--nogpu", "--bare", "--port", str(port)],
        cwd=project, env=env_for(project), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600  # the first build installs Jupyter from PyPI
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2) as r:
                    status = r.status
                    body = r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "timed out"
        assert '"version"' in body
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for c in docker_client.containers.list(filters={"label": "caliban.session=interactive"}):
            if f"{port}/tcp" in (c.attrs["NetworkSettings"]["Ports"] or {}):
                c.kill()
