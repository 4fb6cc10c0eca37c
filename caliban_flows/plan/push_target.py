"""Where an image is pushed: a flag, the environment, .calibanconfig.json, or a Prefect block.

The first that is set wins: --registry, --registry_block, $CALIBAN_REGISTRY, then the config's
`registry` and `registry_block`. A block is prefect-docker's "Docker Registry Credentials":
its password stays a SecretStr until the push hands it to the engine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from caliban_flows.spec.errors import CalibanError, SpecError

HINT = "pass --registry or --registry_block, set $CALIBAN_REGISTRY, or add 'registry' to .calibanconfig.json"  # noqa: E501


@dataclass(frozen=True)
class PushTarget:
    registry: str  # HOST[/PATH]
    auth: dict | None = field(default=None, repr=False)  # password a SecretStr; never printed


def push_target(registry: str | None, registry_block: str | None) -> PushTarget | None:
    """The configured push target, or None when nothing names one."""
    from caliban_flows.plan.project import load_calibanconfig

    if registry:
        return PushTarget(registry)
    if registry_block:
        return from_block(registry_block)
    if os.environ.get("CALIBAN_REGISTRY"):
        return PushTarget(os.environ["CALIBAN_REGISTRY"])
    config = load_calibanconfig()
    if config.registry:
        return PushTarget(config.registry)
    if config.registry_block:
        return from_block(config.registry_block)
    return None


def require_push_target(registry: str | None, registry_block: str | None) -> PushTarget:
    target = push_target(registry, registry_block)
    if target is None:
        raise SpecError(f"--push needs a registry: {HINT}")
    return target


def from_block(name: str) -> PushTarget:
    from caliban_flows.server.ready import prefect_ready

    prefect_ready()
    from prefect_docker.credentials import DockerRegistryCredentials

    try:
        block = DockerRegistryCredentials.load(name)
    except ValueError:
        raise SpecError(
            f"no Prefect 'Docker Registry Credentials' block named {name!r}; "
            "create one in the Prefect UI or with DockerRegistryCredentials(...).save(NAME)"
        ) from None
    except Exception as e:  # the server answered something else: not the user's input
        raise CalibanError(f"cannot load registry block {name!r}: {e}") from None
    # Still a SecretStr: platforms.images.push_image unwraps it for the engine.
    return PushTarget(block.registry_url, {"username": block.username, "password": block.password})
