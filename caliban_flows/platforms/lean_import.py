"""A client library's few modules we call, imported without its package-wide `__init__`s.

Generated clients import every API and model in their package `__init__`: `kubernetes` 0.4-0.8 s
here, `aiplatform_v1` 1.2-1.3 s, more than the rest of `caliban status`. `lean_or_full` makes
the named packages from their specs without running their `__init__`; the first attribute one
lacks runs it (PEP 562 module `__getattr__`), so any later user in the process still sees the
whole package. If the library is imported already, or its layout differs from what `lean`
expects, the plain import is used instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

T = TypeVar("T")
_lock = threading.RLock()
_done: dict[str, object] = {}  # what lean_or_full gave, by top package


def _defer(name: str) -> None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a package")
    loader = spec.loader  # a local: mypy keeps the None check above for it inside `complete`
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
                    loader.exec_module(module)
                except BaseException:
                    module.__dict__["__getattr__"] = complete
                    raise
        return getattr(module, attr)

    # Through __dict__: a module-level __getattr__ is a global of the module (PEP 562).
    module.__dict__["__getattr__"] = complete
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


def _forget(top: str) -> None:
    for name in [n for n in sys.modules if n == top or n.startswith(f"{top}.")]:
        del sys.modules[name]
    parent, _, child = top.rpartition(".")
    if parent in sys.modules and child in vars(sys.modules[parent]):
        delattr(sys.modules[parent], child)


def lean_or_full(packages: Sequence[str], lean: Callable[[], T], full: Callable[[], T]) -> T:
    """`lean()` with `packages` (outermost first) deferred, else `full()`; computed once."""
    top = packages[0]
    with _lock:
        if top not in _done:
            _done[top] = full() if top in sys.modules else _lean_else_full(packages, lean, full)
        return cast(T, _done[top])  # what this package's lean() or full() gave


def _lean_else_full(packages: Sequence[str], lean: Callable[[], T], full: Callable[[], T]) -> T:
    try:
        for name in packages:
            _defer(name)
        return lean()
    except (ImportError, AttributeError):
        _forget(packages[0])
        return full()
