"""The real engine from devtools.engine: run a container, build, push to and pull from the
local registry. Nothing is skipped: if the engine cannot start, these tests fail with why."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import docker
import pytest

from devtools import engine

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
REPO = "test/hello"


@pytest.fixture(scope="session")
def info() -> engine.EngineInfo:
    return engine.up()


@pytest.fixture(scope="session")
def client(info: engine.EngineInfo) -> docker.DockerClient:
    client = info.client(timeout=600)
    yield client
    client.close()


def test_busybox_echo(client: docker.DockerClient, info: engine.EngineInfo) -> None:
    container = client.containers.run(info.busybox_image, ["echo", "hi"], detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 0
        assert container.logs() == b"hi\n"
    finally:
        container.remove(force=True)


def test_busybox_exit_code(client: docker.DockerClient, info: engine.EngineInfo) -> None:
    container = client.containers.run(info.busybox_image, ["sh", "-c", "exit 3"], detach=True)
    try:
        assert container.wait(timeout=60)["StatusCode"] == 3
    finally:
        container.remove(force=True)


def _registry_get(info: engine.EngineInfo, path: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{info.registry}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def test_build_push_pull_by_digest(
    client: docker.DockerClient, info: engine.EngineInfo, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        f"FROM {info.base_image}\n"
        "RUN python -c \"import ssl, pip; print('ok')\"\n"
        # Reaches PyPI through this machine's proxy: needs the host CA certs in the base.
        "RUN pip download --no-deps -d /tmp six\n"
    )
    name = f"{info.registry}/{REPO}"
    log = []
    # nocache: the RUN steps really run (and really reach PyPI) every time; never pull.
    build = client.api.build(
        path=str(tmp_path), tag=f"{name}:1", pull=False, nocache=True, rm=True, decode=True
    )
    for chunk in build:
        log.append(chunk)
        if "error" in chunk:
            pytest.fail(f"build failed: {chunk['error']}\n{json.dumps(log[-20:], indent=1)}")
    output = "".join(c.get("stream", "") for c in log)
    assert "ok" in output
    assert "Saved ./six-" in output or "Saved /tmp/six-" in output, output
    built = client.images.get(f"{name}:1")

    digest = None
    for chunk in client.api.push(name, tag="1", stream=True, decode=True):
        if "error" in chunk:
            pytest.fail(f"push failed: {chunk['error']}")
        digest = chunk.get("aux", {}).get("Digest", digest)
    assert digest and digest.startswith("sha256:")
    assert "1" in _registry_get(info, f"/v2/{REPO}/tags/list")["tags"]
    assert client.images.get_registry_data(f"{name}:1").id == digest

    # Forget the local copy, then pull it back by digest: same image id.
    client.images.remove(f"{name}:1")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(f"{name}:1")
    pulled = client.images.pull(f"{name}@{digest}")
    assert pulled.id == built.id
    assert f"{name}@{digest}" in pulled.attrs["RepoDigests"]

    container = client.containers.run(
        pulled.id, ["python", "-c", "import ssl, sys; print(sys.version_info[:2])"], detach=True
    )
    try:
        assert container.wait(timeout=120)["StatusCode"] == 0
        assert container.logs().strip() == b"(3, 11)"
    finally:
        container.remove(force=True)


def test_up_is_idempotent(info: engine.EngineInfo) -> None:
    start = time.monotonic()
    again = engine.up()
    assert time.monotonic() - start < 10
    assert again == info
    assert (again.dockerd_pid, again.registry_pid) == (info.dockerd_pid, info.registry_pid)
    report = engine.status()
    assert report["ready"], report
    assert report["engine"]["pid"] == info.dockerd_pid
    assert report["registry"]["pid"] == info.registry_pid


def test_base_image_aliases(client: docker.DockerClient, info: engine.EngineInfo) -> None:
    base = client.images.get(info.base_image)
    for alias in engine.BASE_ALIASES:
        assert client.images.get(alias).id == base.id


def test_cli_env_and_status(info: engine.EngineInfo) -> None:
    env = subprocess.run(
        [sys.executable, "-m", "devtools.engine", "env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"DOCKER_HOST={info.docker_host}" in env.splitlines()
    status = subprocess.run(
        [sys.executable, "-m", "devtools.engine", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stdout + status.stderr
    assert "registry: running" in status.stdout
