"""Containers on the user's own Docker engine (adapter.py)."""

from __future__ import annotations

from caliban_flows.platforms.registry import PlatformEntry


def _open(placement: dict):
    from caliban_flows.platforms.local.adapter import LocalDocker, docker_client

    return LocalDocker(docker_client())


ENTRY = PlatformEntry(
    name="local", title="local Docker", open=_open, place=lambda placement: (), remote=False
)
