"""Images for the platforms: built here from a project folder, pushed where a platform pulls."""

from __future__ import annotations

import sys
from pathlib import Path

from caliban_flows.plan import project
from caliban_flows.platforms.local.adapter import docker_client
from caliban_flows.spec.errors import CalibanError, SpecError


def _show_build_line(line: str) -> None:
    if line.strip():
        print(line, file=sys.stderr, flush=True)


def build_here(dockerfile: str, *, no_cache: bool, credentials: tuple[str, ...] = ()):
    """Build the current folder's image now, streaming Docker's output to stderr; one line
    names the credentials left out of it (platforms.images)."""
    from caliban_flows.platforms.images import ImageError, build_image, left_out_warning
    from caliban_flows.tasks.progress import BuildProgress

    client = docker_client()
    try:
        with BuildProgress() as progress:
            built = build_image(client, Path.cwd(), dockerfile, no_cache=no_cache,
                                on_log=progress, credentials=credentials)  # fmt: skip
    except ImageError as e:
        raise CalibanError(str(e).splitlines()[0]) from e
    warning = left_out_warning(built.left_out)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return built


def push_here(tag: str, target) -> str:
    """Push unless the registry has the tag already; return the pushed reference."""
    from caliban_flows.platforms.images import ImageError, push_image

    try:
        pushed = push_image(
            docker_client(), tag, target.registry, auth=target.auth, on_log=_show_build_line
        )
    except ImageError as e:
        raise CalibanError(str(e)) from e
    if not pushed.pushed:
        print(f"{pushed.reference} is already in the registry: nothing pushed", file=sys.stderr)
    else:  # for event-triggered deployments; only when a Prefect API is already up
        from caliban_flows.state.events import image_pushed

        image_pushed(pushed.reference, local_tag=tag)
    return pushed.reference


def push_target_for(platform: str, placement: dict | None, build: dict):
    """Where a built image goes for `platform`: None for a local one; else the registry the
    recipe names (flag, block, environment, .calibanconfig.json), else the platform's
    default for this placement; none at all is bad input."""
    from caliban_flows.plan.push_target import HINT, PushTarget, push_target
    from caliban_flows.platforms import registry

    entry = registry.get(platform)
    if not entry.remote:
        return None
    with project.inside(build["root"]):  # .calibanconfig.json may name the registry
        target = push_target(build.get("registry"), build.get("registry_block"))
    if target is None:
        default = entry.default_registry(placement or {})
        if default is None:
            raise SpecError(f"no registry {entry.title} can pull from: {HINT}")
        target = PushTarget(default)
    check_image(platform, f"{target.registry.rstrip('/')}/x")
    return target


def check_image(platform: str, reference: str) -> None:
    from caliban_flows.platforms import registry

    registry.get(platform).check_image(reference)
