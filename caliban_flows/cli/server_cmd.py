"""`caliban ui` and `caliban server start|status|stop`: the Prefect UI's address, and the life
of the embedded Prefect server (caliban_flows.server.backend) caliban starts on its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Annotated

import typer

from caliban_flows.spec.errors import CalibanError

server_app = typer.Typer(
    help="The embedded Prefect server caliban runs when PREFECT_API_URL is not set.",
    no_args_is_help=True,
)
_CLOUD_API = re.compile(r"^https://api\.prefect\.cloud/api/accounts/([^/]+)/workspaces/([^/]+)$")


def ui_address(api_url: str) -> str:
    """The UI that belongs to a Prefect API: Prefect Cloud's workspace page, or the server's
    own UI, served where its API is, without `/api`."""
    url = api_url.rstrip("/")
    cloud = _CLOUD_API.match(url)
    if cloud:
        return f"https://app.prefect.cloud/account/{cloud[1]}/workspace/{cloud[2]}"
    return url.removesuffix("/api")


def _backend_call(call):
    from caliban_flows.server import backend

    try:
        return call(backend)
    except backend.BackendError as e:
        raise CalibanError(str(e)) from None


def _group_run_page(ui: str, api_url: str, xgroup: str, embedded: bool) -> str:
    """The page of the group's newest flow run (your own group of that name)."""
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.spec.errors import SpecError
    from caliban_flows.state import prefect_api
    from caliban_flows.state.groups import read_group_runs

    with prefect_api.client(api_url) as http:
        runs = read_group_runs(http, xgroup, users=frozenset({current_user()}))
    if not runs:
        raise SpecError(f"no experiment group named {xgroup!r} of user {current_user()}")
    # Prefect 3.8, which the embedded server runs, opens its new UI under /v2/; a server of
    # yours may run another version, whose classic pages every version keeps.
    return f"{ui}{'/v2' if embedded else ''}/runs/flow-run/{runs[-1].flow_run_id}"


def _browser_available() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _open_in_browser(url: str) -> bool:
    """Hand the URL to the desktop's browser in a detached process: a browser that takes
    long to start, or a terminal one, never holds this command."""
    if not _browser_available():
        return False
    try:
        subprocess.Popen(
            [sys.executable, "-m", "webbrowser", "-t", url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    return True


def ui(
    xgroup: Annotated[
        str | None,
        typer.Option("--xgroup", metavar="XGROUP", help="Link to this group's newest run."),
    ] = None,
    no_browser: Annotated[
        bool,
        typer.Option("--no_browser", "--no-browser", help="Print the address only."),
    ] = False,
) -> None:
    """Print the Prefect UI's address (starting the embedded server if needed), and open it
    in your browser when there is a display."""
    embedded = _backend_call(lambda backend: backend.external_url()) is None
    api_url = _backend_call(lambda backend: backend.wait_ready())
    ui_url = ui_address(api_url)
    page = _group_run_page(ui_url, api_url, xgroup, embedded) if xgroup else ui_url
    print(page)
    if embedded:
        from caliban_flows.server.home import caliban_home

        print(f"log in with the whole line of {caliban_home() / 'api-auth'}", file=sys.stderr)
    if not no_browser and _open_in_browser(page):
        print("opened in your browser", file=sys.stderr)


@server_app.command("start")
def start() -> None:
    """Start the embedded Prefect server; print its URL.

    A running one is reused; it stops after CALIBAN_SERVER_IDLE_MINUTES (30) idle minutes."""
    from caliban_flows.server import backend

    if backend.external_url() is not None:
        print(f"caliban uses your Prefect API at {backend.external_url()}: nothing to start")
        return
    url = _backend_call(lambda backend: backend.wait_ready())
    idle = os.environ.get("CALIBAN_SERVER_IDLE_MINUTES") or "30"
    print(f"running: {url} (UI {ui_address(url)}; it stops after {idle} idle minutes)")


@server_app.command("status")
def status() -> None:
    """Whether caliban's Prefect server runs, and where.

    Starts nothing; says so too for the server of PREFECT_API_URL."""
    known = _backend_call(lambda backend: backend.status())
    if known["mode"] == "external":
        answer = "answering" if known["running"] else "NOT answering"
        print(f"external: {known['url']} (PREFECT_API_URL or your Prefect profile), {answer}")
        return
    if known["running"]:
        print(f"running: {known['url']} (UI {ui_address(known['url'])}, pid {known['pid']})")
    elif known["pid"]:
        print(f"starting: {known['url']} (pid {known['pid']})")
    else:
        print("stopped")
    print(f"home: {known['home']}\nlog: {known['log']}")


@server_app.command("stop")
def stop() -> None:
    """Stop the embedded Prefect server.

    The next caliban command that needs it starts it again."""
    from caliban_flows.server import backend

    if backend.external_url() is not None:
        print(f"caliban uses your Prefect API at {backend.external_url()}: nothing to stop")
        return
    print("stopped" if _backend_call(lambda backend: backend.stop()) else "was not running")


def register(app: typer.Typer) -> None:
    app.command()(ui)
    app.add_typer(server_app, name="server")
