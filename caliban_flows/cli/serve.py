"""`caliban serve`: the reconcile service, as a served Prefect deployment."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    interval: Annotated[
        float,
        typer.Option("--interval", min=1.0, metavar="SECONDS", help="Seconds between rounds."),
    ] = 30.0,
) -> None:
    """Keep every active group's state and artifacts current in Prefect, until Ctrl-C."""
    from caliban_flows.flows.engine import prefect_ready

    url = prefect_ready("prefect", "caliban_flows.flows.reconcile")
    from caliban_flows.flows.reconcile import DEPLOYMENT, reconcile_active_groups

    print(f"reconciling active groups every {interval:g} s against {url} (Ctrl-C stops)",
          flush=True)  # fmt: skip
    # One round at a time: each runs in its own process (~2 s of imports), and a slow round
    # must not pile up behind a short interval.
    reconcile_active_groups.serve(
        name=DEPLOYMENT, interval=interval, limit=1, print_starting_message=False
    )


def register(app: typer.Typer) -> None:
    app.command()(serve)
