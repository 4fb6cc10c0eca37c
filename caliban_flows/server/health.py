"""Whether a Prefect API answers: the `/health` probe shared by commands and the supervisor.

Only the standard library and httpx load here.
"""

from __future__ import annotations

import base64
import os

from caliban_flows.lean_httpx import httpx

HOST = "127.0.0.1"  # where caliban's own local server listens
EXTERNAL_HEALTH_TIMEOUT = 3.0  # a dead PREFECT_API_URL must fail a command within seconds


def auth_headers(key: str | None = None) -> dict[str, str]:
    """What proves who we are to the API, as Prefect's own client sends it: the server's auth
    string (PREFECT_API_AUTH_STRING: caliban's embedded server has one) before an API key
    (Prefect Cloud). A server that needs neither ignores them."""
    auth = os.environ.get("PREFECT_API_AUTH_STRING")
    if auth:
        return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()}
    key = key or os.environ.get("PREFECT_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _loopback_client() -> httpx.Client:
    # No proxy for loopback; plain http, so loading the CA bundle (~35 ms) is wasted time.
    return httpx.Client(trust_env=False, verify=False, headers=auth_headers())


def _healthy(url: str, client: httpx.Client | None = None) -> bool:
    local = url.startswith(f"http://{HOST}:")
    headers = auth_headers()
    try:
        if client is not None:
            response = client.get(f"{url}/health", timeout=2.0, headers=headers)
        elif local:
            with _loopback_client() as own:
                response = own.get(f"{url}/health", timeout=2.0, headers=headers)
        else:
            response = httpx.get(f"{url}/health", timeout=EXTERNAL_HEALTH_TIMEOUT, headers=headers)
    except httpx.HTTPError:
        return False
    return response.status_code == 200
