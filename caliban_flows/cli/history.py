"""Experiment groups: status, stop, resubmit. Their state will live in Prefect (issue #3)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.output import not_built

HISTORY_ISSUE = 3


class Format(str, Enum):
    text = "text"
    table = "table"
    json = "json"
    csv = "csv"


def status(
    xgroup: o.Xgroup = None,
    max_jobs: Annotated[
        int | None,
        typer.Option(
            "--max_jobs",
            "--max-jobs",
            min=0,
            help="With --xgroup: newest jobs per experiment (default 1); without: newest jobs "
            "overall (default 8); 0 means all.",
        ),
    ] = None,
    format: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.text,
) -> None:
    """Show experiment groups, their experiments and jobs."""
    raise not_built("reading experiment groups from Prefect", HISTORY_ISSUE)


def stop(
    xgroup: o.XgroupRequired,
    dry_run: o.DryRun = False,
    yes: o.Yes = False,
) -> None:
    """Stop the group's submitted and running jobs, after asking."""
    raise not_built("stopping experiment groups", HISTORY_ISSUE)


def resubmit(
    xgroup: o.XgroupRequired,
    dry_run: o.DryRun = False,
    all_jobs: Annotated[
        bool,
        typer.Option(
            "--all_jobs", "--all-jobs", help="Rerun every job, not only failed and stopped ones."
        ),
    ] = False,
    project_id: o.ProjectId = None,
    cloud_key: o.CloudKey = None,
    yes: o.Yes = False,
) -> None:
    """Rebuild from the current code and rerun the group's failed and stopped jobs."""
    raise not_built("resubmitting experiment groups", HISTORY_ISSUE)


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(stop)
    app.command()(resubmit)
