"""Containers on the user's own Docker engine (adapter.py)."""

from __future__ import annotations

from caliban_flows.platforms.registry import PlatformEntry


def _open(placement: dict):
    import docker

    from caliban_flows.platforms.local.adapter import LocalDocker
    from caliban_flows.spec.errors import CalibanError

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as e:
        raise CalibanError(f"cannot reach a Docker engine ({e})") from None
    return LocalDocker(client)


ENTRY = PlatformEntry(
    name="local", title="local Docker", open=_open, place=lambda placement: (), remote=False
)
