"""Who you are on Prefect Cloud: the owner recorded on your groups when Prefect Cloud is the API.

On caliban's own server or a shared self-hosted one, a group's owner is the OS user. Prefect
Cloud knows its caller: the handle of the user whose API key is sent. Two people whose OS user
is the same (`root` in a container, `jupyter` on a notebook host) are still two people there.
The handle is asked for once per command and put in CALIBAN_USER, which the planner and every
process started from here read. A service account's key (Prefect Cloud answers 403 for it)
keeps the OS user. A CALIBAN_USER the user set wins, and Prefect Cloud is not asked.
"""

from __future__ import annotations

import os
import re

from caliban_flows.spec.errors import CalibanError

USER_ENV = "CALIBAN_USER"
# A Prefect Cloud workspace's API URL, as `prefect cloud login` writes it into the profile.
_WORKSPACE_URL = re.compile(r"^(?P<api>.+/api)/accounts/[^/]+/workspaces/[^/]+/?$")
ASK_TIMEOUT = 30.0


def identify() -> None:
    """Put your Prefect Cloud handle in CALIBAN_USER when Prefect Cloud is the API (and the
    variable is not set); CalibanError when Prefect Cloud cannot say who you are."""
    if os.environ.get(USER_ENV, "").strip():
        return
    from caliban_flows.server import backend

    found = _WORKSPACE_URL.match(backend.external_url() or "")  # also takes the profile's key
    key = os.environ.get("PREFECT_API_KEY", "").strip()
    if not found or not key:
        return
    from caliban_flows.lean_httpx import httpx

    me = f"{found['api']}/me/"
    try:
        answer = httpx.get(me, headers={"Authorization": f"Bearer {key}"}, timeout=ASK_TIMEOUT)
    except httpx.HTTPError as e:
        raise CalibanError(f"Prefect Cloud did not say who you are ({me}): {e}") from None
    if answer.status_code == 403:  # a service account: it has no handle of its own
        return
    handle = _handle(answer)
    if handle is None:
        raise CalibanError(
            f"Prefect Cloud did not say who you are ({me} answered {answer.status_code}); "
            f"check PREFECT_API_KEY, or set {USER_ENV}"
        )
    os.environ[USER_ENV] = handle


def _handle(answer) -> str | None:
    if answer.status_code != 200:
        return None
    try:
        handle = answer.json().get("handle")
    except (ValueError, AttributeError):
        return None
    return handle.strip() if isinstance(handle, str) and handle.strip() else None
