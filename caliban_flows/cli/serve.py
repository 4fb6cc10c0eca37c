"""`caliban serve`: the reconcile service, as a served Prefect deployment."""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def serve(
    interval: Annotated[
        float,
        typer.Option("--interval", min=1.0, metavar="SECONDS", help="Seconds between rounds."),
    ] = 30.0,
) -> None:
    """Keep every active group's state and artifacts current in Prefect, and carry out Retry
    in the Prefect UI on a group's run, until Ctrl-C."""
    from caliban_flows.flows.engine import prefect_ready

    url = prefect_ready("prefect", "caliban_flows.flows.reconcile")
    from prefect import serve as serve_all
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from caliban_flows.flows.group_runs import group_deployment
    from caliban_flows.flows.reconcile import DEPLOYMENT, reconcile_active_groups, release_rounds

    print(f"reconciling active groups every {interval:g} s against {url}, and running the "
          "groups retried in the Prefect UI (Ctrl-C stops)", flush=True)  # fmt: skip
    # One round at a time (Prefect's deployment concurrency limit): each runs in its own
    # process (~2 s of imports), and a slow round must not pile up behind a short interval;
    # retried groups run beside the rounds, however long they take.
    one_round = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
    )
    rounds = reconcile_active_groups.to_deployment(
        name=DEPLOYMENT, interval=interval, concurrency_limit=one_round
    )
    release_rounds(url)  # a service stopped uncleanly (kill -9, a crash) left its round held
    try:
        serve_all(rounds, group_deployment(), print_starting_message=False, query_seconds=2)
    finally:  # Ctrl-C: the round the runner had claimed would hold the slot for 300 s
        try:
            release_rounds(url)
        except Exception as e:  # the server went first: the lease lapses in 300 s instead
            print(f"warning: the round in flight stays held till its lease lapses: {e}",
                  file=sys.stderr)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command()(serve)
