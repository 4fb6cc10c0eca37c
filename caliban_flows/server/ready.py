"""Caliban's Prefect backend made ready for a command: the API checked, the local server
started early or waited for, settings blocks loaded. Prefect itself is imported lazily, so
`caliban --help` imports none of it."""

from __future__ import annotations

import os
import sys

from caliban_flows.spec.errors import CalibanError, SpecError


def check_external_api() -> None:
    """Fail fast, before anything is built or submitted, when PREFECT_API_URL does not answer."""
    from caliban_flows.server import backend

    known = backend.status()
    if known["mode"] == "external" and not known["running"]:
        raise CalibanError(
            f"the Prefect API at {known['url']} (PREFECT_API_URL) is not answering; "
            "nothing was submitted"
        )


def prefect_ready(*preload: str) -> str:
    """Point Prefect at caliban's backend before prefect is imported; return the API URL.

    The modules in `preload` are imported while a starting server gets ready, so the import
    (1.5-2 s) and the server's start overlap. Prefect's own log lines are quieted: caliban
    prints each job's outcome itself.
    """
    import gc
    import importlib
    import time

    from caliban_flows.server import backend

    # Quiet on the terminal (caliban prints outcomes itself), but the runs keep their logs.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    check_external_api()
    try:
        early = backend.point_prefect_at(backend.start_in_background()) if preload else None
        gc.disable()  # Prefect's imports build many pydantic objects: ~20% faster without
        try:
            for module in preload:
                importlib.import_module(module)
        finally:
            gc.enable()
        start = time.perf_counter()
        url = backend.use_backend()
    except backend.BackendError as e:
        raise CalibanError(str(e)) from None
    if early is not None and url != early:  # the port was taken as it started; settings are set
        raise CalibanError("the local Prefect server changed port while starting; run again")
    waited = time.perf_counter() - start
    if waited > 1.0:  # say why the command paused: a cold server imports and migrates first
        print(f"waited {waited:.1f} s for the Prefect server to start", file=sys.stderr)
    return url


def start_backend_early() -> None:
    """Let the Prefect server start (5-15 s when cold) while the image builds."""
    from caliban_flows.server import backend

    try:
        backend.start_in_background()
    except backend.BackendError as e:
        raise CalibanError(str(e)) from None


def block_settings(module: str, name: str | None) -> dict:
    """A settings block's plain settings (`module`'s settings_from_block); a missing or bad
    block is bad input. Prefect starts first: loading a block needs the API."""
    if not name:
        return {}
    import importlib

    prefect_ready()
    try:
        return importlib.import_module(module).settings_from_block(name)
    except ValueError as e:
        raise SpecError(str(e)) from None
