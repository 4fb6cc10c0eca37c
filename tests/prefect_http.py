"""Tests' own calls to a caliban home's Prefect API, with that home's API secret.

caliban's embedded server requires its home's secret (`<CALIBAN_HOME>/api-auth`, Prefect's
auth string) on every request but `/health`. A test that calls the API itself must send the
secret of the home whose server it asks: PREFECT_API_AUTH_STRING in the pytest process is set
only by an in-process `backend` call, and may still be another test's home's.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

AUTH_ENV = "PREFECT_API_AUTH_STRING"  # what Prefect's clients (and caliban's) send


class _HasEnv(Protocol):
    env: Mapping[str, str]  # tests.conftest.caliban_runner keeps the CLI's env on it


Where = str | os.PathLike[str] | Mapping[str, str] | _HasEnv


def home_of(where: Where) -> Path:
    """The caliban home of a `caliban_runner` (its `.env`), of an env dict, or a home path."""
    env = getattr(where, "env", where)
    if isinstance(env, Mapping):
        return Path(env["CALIBAN_HOME"])
    return Path(env)


def auth_string(where: Where) -> str | None:
    """The home's secret; None before its server ever started (and so for no server of it)."""
    try:
        return (home_of(where) / "api-auth").read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None


def auth_headers(where: Where) -> dict[str, str]:
    """The Authorization header the home's server wants; none for a home without a secret."""
    auth = auth_string(where)
    return {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}


def auth_env(where: Where) -> dict[str, str]:
    """PREFECT_API_AUTH_STRING for a process that is given PREFECT_API_URL of the home's server
    (a Prefect CLI or worker): caliban sets it only where it finds the local server itself."""
    auth = auth_string(where)
    return {AUTH_ENV: auth} if auth else {}


def use_auth(mp: pytest.MonkeyPatch, where: Where) -> None:
    """Make this process's clients (prefect_api.client, Prefect's own) send the home's secret
    and no other home's, until `mp` is undone."""
    auth = auth_string(where)
    if auth:
        mp.setenv(AUTH_ENV, auth)
    else:
        mp.delenv(AUTH_ENV, raising=False)


def api_client(url: str, where: Where, **kwargs: Any) -> httpx.Client:
    """An httpx client on the home's API at `url`; no proxy (the server is on loopback)."""
    kwargs.setdefault("trust_env", False)
    return httpx.Client(base_url=url, headers=auth_headers(where), **kwargs)


@contextlib.contextmanager
def own_server(home: Path) -> Iterator[str]:
    """The embedded Prefect server of a new caliban home, started in another process; its
    API URL, with this process's clients sending its secret until it is stopped."""
    from tests.conftest import BIN

    env = {**os.environ, "CALIBAN_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    code = "from caliban_flows.server import backend; print(backend.use_backend())"
    out = subprocess.run([str(BIN / "python"), "-c", code], env=env, capture_output=True,
                         text=True, timeout=180, check=True)  # fmt: skip
    mp = pytest.MonkeyPatch()
    use_auth(mp, home)  # prefect_api.client in this process: the server is another process's
    try:
        yield out.stdout.strip().splitlines()[-1]
    finally:
        mp.undo()
        stop = "from caliban_flows.server import backend; backend.stop()"
        subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)
