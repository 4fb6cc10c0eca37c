"""What a group's cap on running jobs is called and records (see state/limits.py)."""

from __future__ import annotations

import re

from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.vertex_job import xgroup_id

_POOL = re.compile(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?")
_PLAIN = re.compile(r"[A-Za-z0-9_.-]{1,80}")


def limit_name(platform: str, xgroup: str, pool: str | None = None, user: str = "") -> str:
    """The Prefect limit's name: per pool if one is named, else per group (of `user`: two
    users' groups of one name have a cap each)."""
    if pool is not None:
        if not _POOL.fullmatch(pool):
            raise SpecError(
                f"--pool {pool!r}: use 1-42 lowercase letters, digits and dashes, "
                "starting and ending with a letter or digit"
            )
        return f"caliban-{platform}-pool-{pool}"
    # Readable in the UI where the name allows; Prefect refuses '/', '%', '&', '<' and '>'.
    shown = xgroup if _PLAIN.fullmatch(xgroup) else xgroup_id(xgroup)
    whose = "" if not user else f"-{user}" if _PLAIN.fullmatch(user) else f"-{xgroup_id(user)}"
    return f"caliban-{platform}{whose}-xgroup-{shown}"


def limit_for(
    platform: str, xgroup: str, max_running: int | None, pool: str | None, user: str = ""
) -> dict | None:
    """What a group's run records of its cap (the flow's `limit` parameter)."""
    if max_running is None:
        if pool is not None:
            raise SpecError("--pool needs --max_running N")
        return None
    return {"name": limit_name(platform, xgroup, pool, user), "max_running": max_running}
