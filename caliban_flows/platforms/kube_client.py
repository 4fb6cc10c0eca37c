"""The parts of the `kubernetes` client we call, without its package-wide imports.

`import kubernetes` runs the `__init__` of `kubernetes`, `kubernetes.client`, its `api` and
`models` packages: every API group and about 700 model classes, 0.4-0.8 s here, more than the
rest of `caliban status`. We call only the REST layer, BatchV1Api, CoreV1Api and the kubeconfig
loader, and read answers as JSON. So those four packages are made from their specs without
running their `__init__`; the first attribute one lacks runs it (PEP 562 `__getattr__`), so any
later user of `kubernetes` in the process still sees the whole package. If the client's layout
ever differs, this falls back to the plain import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

# Outermost first: a subpackage's spec is found through its parent's __path__.
DEFERRED_PACKAGES = (
    "kubernetes",
    "kubernetes.client",
    "kubernetes.client.api",
    "kubernetes.client.models",
)
_lock = threading.RLock()
_loaded: dict[str, object] | None = None


def _defer(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package")
    module = importlib.util.module_from_spec(spec)

    def complete(attr: str):
        if not attr.startswith("__"):  # `from package import submodule` asks for it first
            try:
                return importlib.import_module(f"{name}.{attr}")
            except ModuleNotFoundError as e:
                if e.name != f"{name}.{attr}":
                    raise
        with _lock:
            if module.__dict__.pop("__getattr__", None) is not None:
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    module.__getattr__ = complete
                    raise
        return getattr(module, attr)

    module.__getattr__ = complete
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _lean() -> dict[str, object]:
    for name in DEFERRED_PACKAGES:
        _defer(name)
    client = sys.modules["kubernetes.client"]
    api_client = importlib.import_module("kubernetes.client.api_client")
    configuration = importlib.import_module("kubernetes.client.configuration")
    # What `kubernetes.config` takes from the package, bound as its __init__ would bind them.
    for attr, module in (("ApiClient", api_client), ("Configuration", configuration)):
        if attr not in client.__dict__:
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
    global _loaded
    with _lock:
        if _loaded is None and "kubernetes" in sys.modules:
            _loaded = _full()  # imported already (prefect-kubernetes, or a caller of ours)
        elif _loaded is None:
            try:
                _loaded = _lean()
            except (ImportError, AttributeError):
                _undo()
                _loaded = _full()
        return _loaded


def _undo() -> None:
    for name in list(sys.modules):
        if name == "kubernetes" or name.startswith("kubernetes."):
            del sys.modules[name]


def api_exception() -> type[Exception]:
    return _names()["ApiException"]


def batch_api(api_client) -> object:
    return _names()["BatchV1Api"](api_client)


def core_api(api_client) -> object:
    return _names()["CoreV1Api"](api_client)


def config() -> ModuleType:
    """`kubernetes.config`: the kubeconfig loader, with exec plugins and client certificates."""
    return _names()["config"]
