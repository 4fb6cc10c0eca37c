"""Shared fixtures: a user's project folder on disk, and the CLI run as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(program: str, *args: str, cwd: Path, stdin: str | None = None, env=None) -> Result:
    merged = {**os.environ, "PROJECT_ID": "", "REGION": "", "CLOUDSDK_CONFIG": str(cwd / ".gc")}
    merged.update(env or {})
    done = subprocess.run(
        [str(BIN / program), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=merged,
        timeout=60,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def caliban_runner(cwd: Path, env: dict):
    """`caliban ARGS...` as a user types it in `cwd`, with `env`; `.env` is kept on it."""

    def run(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "caliban"), *args],
            cwd=cwd,
            env=kwargs.pop("env", env),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    run.env = env
    run.cwd = cwd
    return run


def fresh_python(code: str, *argv: str, timeout: float = 120):
    """The JSON that `code`, run in a new interpreter with `argv`, prints on its last line: for
    tests of what a process imports."""
    import json

    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.2):
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small Caliban-style project: a package, a top-level script and a shell script."""
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text("print('training')\n")
    (tmp_path / "top.py").write_text("print('top')\n")
    (tmp_path / "run.sh").write_text("echo hi\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "requirements.txt").write_text("numpy\n")
    return tmp_path


@pytest.fixture
def caliban(project: Path):
    def call(*args: str, stdin: str | None = None, env=None) -> Result:
        return run_cli("caliban", *args, cwd=project, stdin=stdin, env=env)

    return call


@pytest.fixture
def expansion(project: Path):
    def call(*args: str, stdin: str | None = None) -> Result:
        return run_cli("expansion", *args, cwd=project, stdin=stdin)

    return call


@pytest.fixture(scope="module")
def caliban_home(tmp_path_factory, docker_client):
    """A caliban home for one test module (so one embedded Prefect server, started by its
    first command), the server stopped after the module."""
    home = tmp_path_factory.mktemp("caliban-home")
    yield home
    subprocess.run([str(BIN / "python"), "-m", "caliban_flows.server.backend", "stop"],
                   env={**os.environ, "CALIBAN_HOME": str(home)}, timeout=60)  # fmt: skip


@pytest.fixture(scope="session")
def docker_client():
    """A real Docker engine with a local registry; started here when none is reachable."""
    import docker

    from devtools import engine

    engine.up()
    return docker.from_env()
