"""Which adapter runs a platform's jobs: a platform's name -> its entry.

The engine, the reconcile rounds and `caliban status` find every platform here and nowhere
else. A platform is a folder under `platforms/` whose package defines `ENTRY`; the built-in
ones are listed in BUILTIN, and code outside the package adds its own with `register`.
Looking a platform up imports no client library: `open` does, when jobs are really touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from caliban_flows.platforms.base import Platform
from caliban_flows.spec.errors import SpecError

BUILTIN = ("local", "vertex", "kubernetes")


@dataclass(frozen=True)
class PlatformEntry:
    name: str
    title: str  # how messages name it: "Vertex AI"
    # An adapter for a run's recorded placement (no credentials in it: `open` finds them).
    open: Callable[[dict], Platform]
    # What one list call covers, from the placement: (project, region), (kubeconfig, context,
    # namespace), () for the one local engine.
    place: Callable[[dict], tuple]
    # Remote jobs outlive the process that submits them: submitted at once (paced by
    # `default_max_qps`), settled by reconcile rounds. Local ones run inside the group's flow.
    remote: bool = True
    default_max_qps: float = 10.0
    # Client modules a submission imports while the Prefect server starts (the two overlap).
    preload: tuple[str, ...] = ()


_ENTRIES: dict[str, PlatformEntry] = {}


def register(entry: PlatformEntry) -> None:
    """Add (or replace) a platform: its jobs then plan, run, show, stop and resubmit."""
    _ENTRIES[entry.name] = entry


def get(name: str) -> PlatformEntry:
    if name not in _ENTRIES and name in BUILTIN:
        register(importlib.import_module(f"caliban_flows.platforms.{name}").ENTRY)
    try:
        return _ENTRIES[name]
    except KeyError:
        known = ", ".join(sorted({*BUILTIN, *_ENTRIES}))
        raise SpecError(f"unknown platform {name!r}; known: {known}") from None
