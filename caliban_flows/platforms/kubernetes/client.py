"""The parts of the `kubernetes` client we call: its REST layer, BatchV1Api, CoreV1Api and the
kubeconfig loader, without the ~700 model classes and every API group its package `__init__`s
load (see `lean_import`). We read answers as JSON, so the models are never needed.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from caliban_flows.platforms.lean_import import lean_or_full

# Outermost first: a subpackage's spec is found through its parent's __path__.
DEFERRED_PACKAGES = (
    "kubernetes",
    "kubernetes.client",
    "kubernetes.client.api",
    "kubernetes.client.models",
)


def _lean() -> dict[str, object]:
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
        "config": importlib.import_module("kubernetes.config"),
    }


def _full() -> dict[str, object]:
    from kubernetes import client, config

    return {
        "ApiException": client.exceptions.ApiException,
        "BatchV1Api": client.BatchV1Api,
        "CoreV1Api": client.CoreV1Api,
        "config": config,
    }


def _names() -> dict[str, object]:
    return lean_or_full(DEFERRED_PACKAGES, _lean, _full)


def api_exception() -> type[Exception]:
    return _names()["ApiException"]


def batch_api(api_client) -> object:
    return _names()["BatchV1Api"](api_client)


def core_api(api_client) -> object:
    return _names()["CoreV1Api"](api_client)


def config() -> ModuleType:
    """`kubernetes.config`: the kubeconfig loader, with exec plugins and client certificates."""
    return _names()["config"]
