"""The parts of the `kubernetes` client we call: its REST layer, BatchV1Api, CoreV1Api and the
kubeconfig loader, without the ~700 model classes and every API group its package `__init__`s
load (see `lean_import`). We read answers as JSON, so the models are never needed.

Also how its errors read: which ones are worth retrying (and the retry policy every call
uses), and one line for the user.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from caliban_flows.platforms.base import first_line
from caliban_flows.platforms.lean_import import lean_or_full

if TYPE_CHECKING:
    from kubernetes.client.exceptions import ApiException

# Outermost first: a subpackage's spec is found through its parent's __path__.
DEFERRED_PACKAGES = (
    "kubernetes",
    "kubernetes.client",
    "kubernetes.client.api",
    "kubernetes.client.models",
)
RETRY_DEADLINE = 60.0  # seconds of retrying one call before giving up on it
TRANSIENT_STATUS = (429, 500, 502, 503, 504)


def _lean() -> dict[str, Any]:
    client = sys.modules["kubernetes.client"]
    api_client = importlib.import_module("kubernetes.client.api_client")
    configuration = importlib.import_module("kubernetes.client.configuration")
    # What `kubernetes.config` takes from the package, bound as its __init__ would bind them.
    for attr, module in (("ApiClient", api_client), ("Configuration", configuration)):
        if attr not in vars(client):
            setattr(client, attr, getattr(module, attr))
    return {
        "ApiException": importlib.import_module("kubernetes.client.exceptions").ApiException,
        "BatchV1Api": importlib.import_module("kubernetes.client.api.batch_v1_api").BatchV1Api,
        "CoreV1Api": importlib.import_module("kubernetes.client.api.core_v1_api").CoreV1Api,
        "AppsV1Api": importlib.import_module("kubernetes.client.api.apps_v1_api").AppsV1Api,
        "ApiClient": api_client.ApiClient,
        "Configuration": configuration.Configuration,
        "config": importlib.import_module("kubernetes.config"),
    }


def _full() -> dict[str, Any]:
    from kubernetes import client, config

    return {
        "ApiException": client.exceptions.ApiException,
        "BatchV1Api": client.BatchV1Api,
        "CoreV1Api": client.CoreV1Api,
        "AppsV1Api": client.AppsV1Api,
        "ApiClient": client.ApiClient,
        "Configuration": client.Configuration,
        "config": config,
    }


# Any: the library has no type hints.
def _names() -> dict[str, Any]:
    return lean_or_full(DEFERRED_PACKAGES, _lean, _full)


def api_exception() -> type[ApiException]:
    return _names()["ApiException"]


def batch_api(api_client) -> object:
    return _names()["BatchV1Api"](api_client)


def core_api(api_client) -> object:
    return _names()["CoreV1Api"](api_client)


def apps_api(api_client) -> object:
    return _names()["AppsV1Api"](api_client)


def token_client(host: str, ca_file: str, token: str) -> object:
    """An ApiClient for an API server known by its address and CA, as a bearer-token caller
    (a GKE cluster, before any kubeconfig names it)."""
    names = _names()
    configuration = names["Configuration"](host=host)
    configuration.ssl_ca_cert = ca_file
    bearer = f"Bearer {token}"
    # Client 36 reads "BearerToken"; older clients read "authorization".
    configuration.api_key = {"BearerToken": bearer, "authorization": bearer}
    return names["ApiClient"](configuration)


def config() -> ModuleType:
    """`kubernetes.config`: the kubeconfig loader, with exec plugins and client certificates."""
    return _names()["config"]


def describe(error: BaseException) -> str:
    """One line: the Kubernetes Status message when there is one."""
    body = getattr(error, "body", None)
    if body:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            status = json.loads(body)
            return f"{status.get('code', getattr(error, 'status', ''))} {status['message']}"
    return first_line(error)


def transient(error: BaseException) -> bool:
    """Worth another try: throttled, a server error, or the connection dropped."""
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(error, api_exception()):
        return error.status in TRANSIENT_STATUS or error.status == 0
    return isinstance(error, Urllib3Error | ConnectionError | TimeoutError)


def retry_policy() -> dict[str, Any]:
    """tenacity's settings for every API call (Retrying or AsyncRetrying): retry transient
    errors with jittered exponential backoff for up to RETRY_DEADLINE seconds, then raise the
    last error itself, not tenacity's RetryError."""
    from tenacity import retry_if_exception, stop_after_delay, wait_random_exponential

    return {
        "retry": retry_if_exception(transient),
        "wait": wait_random_exponential(multiplier=0.2, max=5.0),
        "stop": stop_after_delay(RETRY_DEADLINE),
        "reraise": True,
    }
