"""Experiment groups: status, stop, resubmit — read from and written to Prefect."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.output import confirm as _confirm
from caliban_flows.spec.errors import CalibanError, SpecError
from caliban_flows.state.reading import no_group

ACTIVE = ("QUEUED", "SUBMITTED", "RUNNING")
PAST = {"stop": "stopped", "resubmit": "resubmitted"}


class Format(str, Enum):
    text = "text"
    table = "table"
    json = "json"
    csv = "csv"


def _users(user: str | None, all_users: bool) -> frozenset[str] | None:
    """Whose groups a command acts on: yours, `--user NAME`'s, or everyone's (None)."""
    if user is not None and all_users:
        raise SpecError("give --user NAME or --all_users, not both")
    from caliban_flows.server.cloud_user import identify

    identify()  # on Prefect Cloud, you are your handle there (server.cloud_user)
    if all_users:
        return None
    if user is not None:
        if not user.strip():
            raise SpecError("--user must not be empty")
        return frozenset({user})
    from caliban_flows.plan.inputs import current_user

    return frozenset({current_user()})


def _rows(
    xgroup: str | None, credentials_file: str | None = None, users: frozenset[str] | None = None
) -> tuple[list, list[dict], list[str]]:
    """The groups' runs and job rows, and one line per platform place that did not answer
    (printed at once: its jobs show as UNKNOWN). `credentials_file`: a key to use in place of
    the one a run recorded; `users`: whose runs (None: everyone's)."""
    from caliban_flows.state.reading import read_groups

    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        print(f"warning: {line}; its jobs show as UNKNOWN", file=sys.stderr, flush=True)

    runs, rows = read_groups(xgroup, credentials_file, users, warn)
    return runs, rows, warnings


def _limit(rows: list[dict], xgroup: str | None, max_jobs: int | None) -> list[dict]:
    """Caliban's --max_jobs: per experiment with --xgroup (default 1), else overall (8)."""
    from caliban_flows.state.groups import latest_attempts

    if xgroup is None:
        n = 8 if max_jobs is None else max_jobs
        counted = latest_attempts(rows)
        return counted[-n:] if n else counted
    n = 1 if max_jobs is None else max_jobs
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
    out = []
    for attempts in by_key.values():
        attempts.sort(key=lambda r: r["attempt"])
        out.extend({**r, "attempts": len(attempts)} for r in (attempts[-n:] if n else attempts))
    return out


def _text(rows: list[dict]) -> str:
    """Caliban's hierarchy: xgroup, experiment (entry point and args), its jobs: one run of
    it per platform, the latest attempts."""
    lines: list[str] = []
    from caliban_flows.plan.inputs import current_user

    me = current_user()
    for xgroup, user in dict.fromkeys((r["xgroup"], r.get("user")) for r in rows):
        whose = f" (user {user})" if user not in (None, me) else ""
        lines.append(f"xgroup {xgroup}{whose}:")
        group = [r for r in rows if r["xgroup"] == xgroup and r.get("user") == user]
        for experiment in dict.fromkeys(r["experiment"] for r in group):
            jobs = [r for r in group if r["experiment"] == experiment]
            command = " ".join([*jobs[0]["command"], *jobs[0]["args"]])
            lines.append(f"  experiment {experiment}: {command.strip()}")
            for r in jobs:
                exit_code = "" if r["exit_code"] is None else f" exit {r['exit_code']}"
                lines.append(
                    f"    job {r['name']:<20} {r['state']:9s} {r['platform'].upper():>8s} "
                    f"{r['created']} id: {(r['remote_id'] or '-').rsplit('/', 1)[-1][-12:]} image: "
                    f"{r['image'] or '-'} attempt {r['attempt']}/{r['attempts']}{exit_code}"
                    + _duplicates(r)
                    + _restarted(r)
                )
        lines.append("")
    return "\n".join(lines)


def _restarted(row: dict) -> str:
    """Why --max_restarts made this attempt (what ended the one before), and the restarts
    the platform made inside it (a Kubernetes Job's replaced pods)."""
    why = row.get("restart_reason")
    inside = row.get("restarts") or []
    return (f" (restarted: {why})" if why else "") + (
        f" (restarted {len(inside)}x: {'; '.join(inside)})" if inside else ""
    )


def _duplicates(row: dict) -> str:
    extra = row.get("duplicates") or []
    return (
        f" (+{len(extra)} duplicate{'s' if len(extra) > 1 else ''}: {', '.join(extra)})"
        if extra
        else ""
    )


def status(
    xgroup: o.XgroupShown = None,
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
    user: o.User = None,
    all_users: o.AllUsers = False,
) -> None:
    """Show experiment groups, their experiments and jobs (first brought up to date from Docker,
    Vertex AI or Kubernetes).

    Exits 1, after the whole output, when some platform did not answer."""
    users = _users(user, all_users)
    runs, rows, warnings = _rows(xgroup, users=users)
    if xgroup is not None and not runs:
        raise SpecError(no_group(xgroup, users))
    rows = _limit(rows, xgroup, max_jobs)
    if format is Format.json:
        print(json.dumps(rows, indent=2))
    elif format in (Format.table, Format.csv):
        _frame(rows, format)
    else:
        print(_text(rows) if rows else "no jobs yet")
    from caliban_flows.state.background import progress_line

    for run in runs:  # a large group still being submitted: how far, and until when
        line = progress_line(run, rows)
        if line:
            print(line, file=sys.stderr)
    doubled = sum(len(r.get("duplicates") or ()) for r in rows)
    if doubled:
        print(f"warning: {doubled} duplicate remote job(s) (listed with their jobs); "
              "caliban stop cancels them with their jobs", file=sys.stderr)  # fmt: skip
    if warnings:
        raise typer.Exit(1)


def _frame(rows: list[dict], format: Format) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if format is Format.csv:
        sys.stdout.write(frame.to_csv(index=False))
    else:
        cols = ["xgroup", "name", "state", "attempt", "attempts", "exit_code", "args"]
        print(frame[cols].to_string(index=False) if rows else "no jobs")


def _latest(
    xgroup: str,
    credentials_file: str | None = None,
    *,
    users: frozenset[str] | None,
    every_place: bool = False,
) -> tuple[list, list[dict]]:
    """The group's runs and the newest attempt of each of its experiments. `every_place`:
    a platform place that did not answer is an error, not UNKNOWN rows."""
    runs, rows, unanswered = _rows(xgroup, credentials_file, users)
    if not runs:
        raise SpecError(no_group(xgroup, users))
    if every_place and unanswered:
        raise CalibanError(f"cannot tell which jobs of xgroup {xgroup!r} to rerun: nothing done")
    return runs, _limit(rows, xgroup, 1)


def _ask(rows: list[dict], verb: str, kind: str, xgroup: str | None, *, dry_run: bool, yes: bool):
    """List what `verb` would touch; True when it should go ahead. Another user's jobs are
    always asked about, --yes or not. `xgroup` None: the jobs of every group, each named."""
    from caliban_flows.plan.inputs import current_user

    if not rows:
        print(f"no {kind} jobs in {_where(xgroup)}")
        return False
    print(f"the following jobs would be {PAST[verb]}:")
    for r in rows:
        group = "" if xgroup else f"xgroup {r['xgroup']}: "
        print(f"  {group}{r['name']} {r['state']} {' '.join(r['args'])}")
    others = sorted({r["user"] for r in rows if r.get("user") not in (None, current_user())})
    if dry_run:
        return False
    if others and not _confirm(
        f"{len([r for r in rows if r.get('user') in others])} of these jobs belong to "
        f"{', '.join(others)}: {verb} them anyway?",
        False,
    ):
        return False
    return _confirm(f"do you wish to {verb} these {len(rows)} jobs?", yes or bool(others))


def _where(xgroup: str | None) -> str:
    return f"xgroup {xgroup!r}" if xgroup else "any group"


def stop(
    xgroup: Annotated[
        str | None,
        typer.Option(
            "--xgroup", metavar="XGROUP", help="Experiment group (default: all your groups)."
        ),
    ] = None,
    dry_run: o.DryRunStop = False,
    yes: o.Yes = False,
    user: o.User = None,
    all_users: o.AllUsers = False,
) -> None:
    """Stop the group's submitted and running jobs (without --xgroup: those of all your
    groups), after listing them and asking."""
    users = _users(user, all_users)
    if xgroup is None:
        from caliban_flows.state.groups import latest_attempts

        runs, rows, _ = _rows(None, users=users)
        latest = latest_attempts(rows)
    else:
        runs, latest = _latest(xgroup, users=users)
    active = [r for r in latest if r["state"] in ACTIVE]
    if not _ask(active, "stop", "submitted or running", xgroup, dry_run=dry_run, yes=yes):
        return
    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import Platforms, stop_jobs

    with prefect_api.client() as http:
        stop_jobs(http, Platforms(), runs, active)
    groups = len({r["xgroup"] for r in active})
    where = _where(xgroup) if xgroup else f"{groups} group{'s' if groups > 1 else ''}"
    print(f"stopped {len(active)} jobs in {where}")


def resubmit(
    xgroup: o.XgroupToResubmit,
    dry_run: o.DryRunResubmit = False,
    all_jobs: Annotated[
        bool,
        typer.Option(
            "--all_jobs", "--all-jobs", help="Rerun every job, not only failed and stopped ones."
        ),
    ] = False,
    project_id: o.ProjectIgnored = None,
    cloud_key: o.CloudKey = None,
    yes: o.Yes = False,
    user: o.User = None,
    all_users: o.AllUsers = False,
) -> None:
    """Rebuild from the current code and rerun the group's failed and stopped jobs."""
    from caliban_flows.plan.inputs import service_account_key

    key = service_account_key(cloud_key) if cloud_key else None
    runs, latest = _latest(xgroup, key, users=_users(user, all_users), every_place=True)
    wanted = latest if all_jobs else [r for r in latest if r["state"] in ("FAILED", "STOPPED")]
    if not _ask(wanted, "resubmit", "failed or stopped", xgroup, dry_run=dry_run, yes=yes):
        return
    from caliban_flows.flows.resubmit import resubmit as rerun

    raise typer.Exit(rerun(runs, wanted, credentials_file=key))


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(stop)
    app.command()(resubmit)
