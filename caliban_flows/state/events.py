"""The `caliban.image.pushed` Prefect event a push emits, which event-triggered deployments
react to. Sent with httpx to the events endpoint: a push pays no Prefect import."""

from __future__ import annotations

import sys

IMAGE_PUSHED = "caliban.image.pushed"
EVENT_TIMEOUT = 3.0  # an event must never hold up a push for long


def image_pushed(reference: str, *, local_tag: str | None = None) -> bool:
    """Emit `caliban.image.pushed` for `reference` if a Prefect API is already up.

    Never starts a server and never fails: with no API answering it does nothing (a
    PREFECT_API_URL that does not answer gets one warning line). True if the event was sent.
    The event goes to the API's events endpoint with httpx, so a push pays no Prefect import.
    """
    try:
        return _emit_image_pushed(reference, local_tag)
    except Exception as e:  # the push succeeded: an event must not undo that
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"warning: event {IMAGE_PUSHED} not emitted: {reason}", file=sys.stderr)
        return False


def prefect_event(
    name: str, resource: dict, payload: dict, related: list[dict] | None = None
) -> dict:
    """A Prefect event as the events endpoint takes it, occurring now."""
    import uuid
    from datetime import datetime, timezone

    return {
        "id": str(uuid.uuid4()),
        "occurred": datetime.now(timezone.utc).isoformat(),
        "event": name,
        "resource": resource,
        "related": related or [],
        "payload": payload,
    }


def image_event(reference: str, local_tag: str | None = None) -> dict:
    """The event: resource `caliban.image.<registry/repository>`, payload with the reference."""
    repository, tag = _split_reference(reference)
    registry, _, path = repository.partition("/")
    resource = {
        "prefect.resource.id": f"caliban.image.{repository}",
        "prefect.resource.name": path or repository,
        "caliban.registry": registry,
    }
    payload = {"reference": reference, "repository": repository, "registry": registry,
               "tag": tag, "local_tag": local_tag}  # fmt: skip
    return prefect_event(IMAGE_PUSHED, resource, payload)


def _split_reference(reference: str) -> tuple[str, str]:
    name, _, tag = reference.rpartition(":")
    if not name or "/" in tag:  # no tag: host:port/path only
        return reference, "latest"
    return name, tag


def _emit_image_pushed(reference: str, local_tag: str | None) -> bool:
    from caliban_flows.lean_httpx import httpx
    from caliban_flows.server import backend
    from caliban_flows.server.health import auth_headers

    known = backend.status()
    if not known["running"]:
        if known["mode"] == "external":
            print(
                f"warning: event {IMAGE_PUSHED} not emitted: the Prefect API at "
                f"{known['url']} (PREFECT_API_URL) is not answering",
                file=sys.stderr,
            )
        return False
    url = known["url"].rstrip("/")
    local = known["mode"] == "local"
    if local:  # its secret, for this process and what it starts
        backend.point_prefect_at(url)
    with httpx.Client(trust_env=not local, timeout=EVENT_TIMEOUT) as http:
        response = http.post(
            f"{url}/events", json=[image_event(reference, local_tag)], headers=auth_headers()
        )
    if response.status_code >= 300:
        raise RuntimeError(f"{url}/events answered {response.status_code}")
    return True
