"""Containers on the user's own Docker engine (adapter.py)."""

from __future__ import annotations

from caliban_flows.platforms.registry import PlatformEntry


def _open(placement: dict):
    from caliban_flows.platforms.local.adapter import LocalDocker, docker_client

    return LocalDocker(docker_client())


def _check_image(reference: str) -> None:
    """A prebuilt local image must be on this engine already."""
    import docker.errors

    from caliban_flows.platforms.local.adapter import docker_client
    from caliban_flows.spec.errors import SpecError

    try:
        docker_client().images.get(reference)
    except docker.errors.ImageNotFound:
        raise SpecError(f"--image_id {reference!r} is not an image on this Docker engine") from None


ENTRY = PlatformEntry(
    name="local",
    title="local Docker",
    open=_open,
    place=lambda placement: (),
    remote=False,
    check_image=_check_image,
)
