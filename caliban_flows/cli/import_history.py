"""`caliban import_history`: Caliban 0.4.2's experiment groups, brought into Prefect."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from caliban_flows.spec.errors import CalibanError


def import_history(
    location: Annotated[
        str | None,
        typer.Argument(
            metavar="[PATH|URL]",
            help="Caliban's history database: a SQLite file or a SQLAlchemy URL "
            "(default: $CALIBAN_DB_URL, else ~/.caliban/caliban.db).",
            show_default=False,
        ),
    ] = None,
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db_url",
            "--db-url",
            metavar="URL",
            help="The database as a SQLAlchemy URL, as "
            "Caliban's CALIBAN_DB_URL took it (e.g. postgresql://user@host/caliban).",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry_run", "--dry-run", help="List the groups; record nothing."),
    ] = False,
) -> None:
    """Record Caliban 0.4.2's experiment groups, jobs and their last known states in Prefect.

    They then show in `caliban status`; local jobs can be resubmitted from the image Caliban
    built. Importing again imports nothing twice."""
    from caliban_flows.spec.errors import SpecError
    from caliban_flows.state.caliban_history import db_url as resolve
    from caliban_flows.state.caliban_history import read_history
    from caliban_flows.state.history_import import import_runs

    if location and db_url:
        raise SpecError("give the database as PATH|URL or as --db_url, not both")
    url = resolve(db_url or location)
    groups = read_history(url)
    if not groups:
        print(f"no experiment group with jobs in {url}")
        return
    planned = [(group, import_runs(group)) for group in groups]
    if dry_run:
        for group, runs in planned:
            jobs = sum(len(r.final) for r in runs)
            where = ", ".join(dict.fromkeys(r.platform for r in runs))
            print(f"xgroup {group.name} (user {group.user}): {jobs} jobs on {where}")
        print("dry run: nothing recorded")
        return
    _record(planned)


def _record(planned: list) -> None:
    from caliban_flows.lean_httpx import httpx
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.server.ready import prefect_ready
    from caliban_flows.state import prefect_api
    from caliban_flows.state.history_import import group_flow_id, write_run

    url = prefect_ready()
    new = old = 0
    others: set[str] = set()
    try:
        with prefect_api.client(url) as http:
            flow_id = group_flow_id(http)
            for group, runs in planned:
                made = [write_run(http, flow_id, run) for run in runs]
                jobs = sum(len(r.final) for r in runs)
                what = "imported" if any(made) else "already imported"
                new, old = new + any(made), old + (not any(made))
                print(f"xgroup {group.name} (user {group.user}): {jobs} jobs {what}")
                for run in runs:
                    for note in run.notes:
                        print(f"  note: {note}", file=sys.stderr)
                if group.user != current_user():
                    others.add(group.user)
    except httpx.HTTPError as e:
        raise CalibanError(f"cannot record Caliban's groups in Prefect at {url}: {e}") from None
    print(f"{new} groups imported, {old} already imported")
    if others:
        print(f"groups of {', '.join(sorted(others))}: see them with `caliban status "
              "--all_users` (or --user NAME)")  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command(name="import_history")(import_history)
