"""Groups as `caliban status`, `results` and the Python API read them: from the Prefect server
caliban uses, brought up to date with the platforms first."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from caliban_flows.spec.errors import CalibanError, SpecError

if TYPE_CHECKING:
    import pandas

    from caliban_flows.state.groups import GroupRun


def no_group(xgroup: str, users: frozenset[str] | None) -> str:
    """What status, stop, resubmit, results and pull say of a group they cannot find."""
    whose = "" if users is None else f" of user {', '.join(sorted(users))} (--all_users: anyone's)"
    return f"no experiment group named {xgroup!r}{whose}"


def read_groups(
    xgroup: str | None,
    credentials_file: str | None = None,
    users: frozenset[str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[list, list[dict]]:
    """The groups' runs and job rows (reconciled); CalibanError, one line, when Prefect or a
    platform cannot be read. `warn` gets one line per platform place that did not answer (its
    jobs are UNKNOWN). With caliban's embedded server never started, there is nothing yet."""
    from caliban_flows.lean_httpx import httpx
    from caliban_flows.server import backend
    from caliban_flows.server.ready import prefect_ready
    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import PlatformError, Platforms, reconcile

    known = backend.status()
    if known["mode"] == "local" and not known["initialized"]:
        return [], []
    url = prefect_ready()
    try:
        with prefect_api.client(url) as http:
            return reconcile(http, Platforms(credentials_file), xgroup, warn=warn, users=users)
    except PlatformError as e:
        raise CalibanError(str(e)) from None
    except httpx.HTTPError as e:
        raise CalibanError(f"cannot read experiment groups from Prefect at {url}: {e}") from None


def group_table(
    xgroup: str,
    *,
    users: frozenset[str] | None = None,
    warn: Callable[[str], None] | None = None,
    unread: Callable[[str], None] | None = None,
) -> tuple[list[GroupRun], pandas.DataFrame]:
    """The group's runs and its results table (state.results: every job's latest attempt);
    SpecError when no such group is recorded. `unread` gets one line per output root that
    could not be read (its jobs show no metrics); without it, that is a CalibanError."""
    from caliban_flows.state.groups import latest_attempts
    from caliban_flows.state.reconcile import Platforms
    from caliban_flows.state.results import collect, frame

    # pandas' import (0.3-0.4 s) goes on while the platforms answer (waits on sockets)
    pandas_loaded = _import_meanwhile("pandas")
    runs, rows = read_groups(xgroup, users=users, warn=warn)
    if not runs:
        raise SpecError(no_group(xgroup, users))
    latest = [r for r in latest_attempts(rows) if r["xgroup"] == xgroup]
    records = collect(runs, latest, Platforms(), unread)
    pandas_loaded.join()
    return runs, frame(records)


def _import_meanwhile(module: str):
    """Import `module` in a daemon thread; join the thread before using it. A failure there
    is left for the import that follows to raise (or to succeed at)."""
    import contextlib
    import importlib
    import threading

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(module)

    thread = threading.Thread(target=load, name=f"import-{module}", daemon=True)
    thread.start()
    return thread
