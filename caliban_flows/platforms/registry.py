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
from typing import Any

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
    # Jobs a minute a submission makes, from the placement (its quota, its --max_qps); None:
    # as fast as it goes. A submission longer than state/background's threshold at this pace
    # is handed to the background submitter. Kubernetes has none: a cluster has no quota,
    # and a kubeconfig found through $KUBECONFIG is not recorded for another process to use.
    submit_per_minute: Callable[[dict], float | None] = lambda placement: None
    # Client modules a submission imports while the Prefect server starts (the two overlap).
    preload: tuple[str, ...] = ()
    # Where a built image goes when no registry is named, from the placement; None: nowhere
    # (a remote platform then needs --registry). Local images stay on the engine.
    default_registry: Callable[[dict], str | None] = lambda placement: None
    # Checks an image reference the platform will use (given, or where a build will be
    # pushed) before anything starts; SpecError when it cannot work.
    check_image: Callable[[str], object] = lambda reference: None
    # One line telling where to follow a submitted group outside caliban (a console URL).
    follow: Callable[[dict], str | None] = lambda placement: None
    # The adapter's `logs` are the job's own output (docker and pod logs), so `caliban results`
    # reads CALIBAN_METRICS lines there; Vertex AI's go to Cloud Logging.
    logs_hold_output: bool = True
    # For a platform registered from outside: its options (a subclass of plan.options'
    # SubmitOptions; None: only the options every platform takes) and the placement the
    # planner records, from (options, probe). caliban_flows.plan plans the built-in ones.
    options: type | None = None
    placement: Callable[[Any, bool], dict] = lambda options, probe: {}


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
