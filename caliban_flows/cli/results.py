"""`caliban results` (a group's jobs, args and metrics as one table) and `caliban pull` (their
output folders, copied here)."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.spec.errors import SpecError

Xgroup = Annotated[str, typer.Option("--xgroup", metavar="XGROUP", help="Experiment group.")]
# Long and per platform: in csv, json and parquet, not in the terminal's table.
NOT_IN_TABLE = ("output", "remote_id")


class ResultFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _warn(line: str) -> None:
    print(f"warning: {line}; its jobs show as UNKNOWN", file=sys.stderr, flush=True)


def results(
    xgroup: Xgroup,
    format: Annotated[
        ResultFormat, typer.Option("--format", help="table (default), csv, json or parquet.")
    ] = ResultFormat.table,
    sort: Annotated[
        str | None,
        typer.Option(
            "--sort",
            metavar="COLUMN[:max|min]",
            help="Sort by a metric or arg, largest first (:min: smallest first); "
            "default: the --objective.",
        ),
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, metavar="N", help="Only the first N rows.")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            "--objective",
            metavar="METRIC:max|min",
            help="The metric that makes a job best: its best job is named after the table "
            "(default: the one the group was submitted with).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Write to FILE instead of stdout."),
    ] = None,
    user: o.User = None,
    all_users: o.AllUsers = False,
) -> None:
    """One row per job of the group (its latest attempt): name, state, attempt, each
    experiment arg and each metric the job reported, as typed columns.

    A job reports metrics in its output folder ($CALIBAN_OUTPUT_DIR): metrics.json (one
    object) or metrics.jsonl (one object per line, the last value of each key wins); or by
    printing lines `CALIBAN_METRICS {"accuracy": 0.93}` (read from docker and pod logs). The
    `metrics` column says `latest` for a job still running, `final` once it ended.
    Exits 1, after the table, when some platform or bucket did not answer."""
    from caliban_flows.cli.history import _users
    from caliban_flows.spec.objective import parse_objective
    from caliban_flows.state.reading import group_table
    from caliban_flows.state.results import arranged, best

    goal = parse_objective(objective) if objective else None
    order = parse_objective(sort, "--sort") if sort else None
    if format is ResultFormat.parquet and out is None and sys.stdout.isatty():
        raise SpecError("--format parquet writes binary data: give --out FILE or redirect stdout")
    unreached: list[str] = []

    def warn(line: str) -> None:
        unreached.append(line)
        _warn(line)

    def unread(line: str) -> None:
        unreached.append(line)
        print(f"warning: {line}; those jobs show no metrics", file=sys.stderr, flush=True)

    runs, table = group_table(xgroup, users=_users(user, all_users), warn=warn, unread=unread)
    table, goal = arranged(table, runs, order, goal, top)
    _write(table, format, out)
    if not (table["metrics"] != "").any():
        print("no job reported metrics yet: a job writes metrics.json into $CALIBAN_OUTPUT_DIR "
              "or prints CALIBAN_METRICS {...} lines", file=sys.stderr)  # fmt: skip
    elif goal is not None:
        top_row = best(table, goal)
        if top_row is None:
            print(f"no job reported {goal.metric!r}", file=sys.stderr)
        else:
            print(f"best under {goal}: {top_row['name']} ({goal.metric} "
                  f"{top_row.get(goal.metric, top_row.get(f'{goal.metric} (metric)'))}), "
                  f"outputs: {top_row['output'] or '-'}", file=sys.stderr)  # fmt: skip
    if unreached:
        raise typer.Exit(1)


def _write(table, format: ResultFormat, out: Path | None) -> None:
    import json

    from caliban_flows.state.results import plain

    if format is ResultFormat.parquet:
        target = out if out is not None else sys.stdout.buffer
        table.to_parquet(target, index=False)
        return
    if format is ResultFormat.csv:
        text = table.to_csv(index=False)
    elif format is ResultFormat.json:
        records = [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]
        text = json.dumps(records, indent=2) + "\n"
    elif table.empty:
        text = "no jobs\n"
    else:
        shown = table.drop(columns=[c for c in NOT_IN_TABLE if c in table.columns])
        text = shown.to_string(index=False, na_rep="-") + "\n"
    if out is not None:
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def pull(
    xgroup: Xgroup,
    dest: Annotated[
        Path | None,
        typer.Argument(metavar="[DEST]", help="Folder to copy into (default: ./XGROUP)."),
    ] = None,
    job: Annotated[
        list[str] | None,
        typer.Option("--job", metavar="NAME", help="Only this job (repeatable)."),
    ] = None,
    user: o.User = None,
    all_users: o.AllUsers = False,
) -> None:
    """Copy the output folders of the group's jobs (their latest attempts) to DEST, one folder
    per job: DEST/<name>-<key>/<attempt>/."""
    from caliban_flows.cli.history import _users
    from caliban_flows.state.pull import pull_outputs

    copied, jobs, target = pull_outputs(xgroup, dest, job or [], users=_users(user, all_users),
                                        warn=lambda line: print(f"warning: {line}",
                                                                file=sys.stderr))  # fmt: skip
    print(f"copied {copied} files of {jobs} job{'s' if jobs != 1 else ''} to {target}")


def register(app: typer.Typer) -> None:
    app.command()(results)
    app.command()(pull)
