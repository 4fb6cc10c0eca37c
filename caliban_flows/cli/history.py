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

ACTIVE = ("QUEUED", "SUBMITTED", "RUNNING")
PAST = {"stop": "stopped", "resubmit": "resubmitted"}


class Format(str, Enum):
    text = "text"
    table = "table"
    json = "json"
    csv = "csv"


def _rows(xgroup: str | None) -> tuple[list, list[dict]]:
    from caliban_flows.lean_httpx import httpx
    from caliban_flows.server import backend
    from caliban_flows.server.ready import prefect_ready
    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import PlatformError, reconcile
    from caliban_flows.tasks.credentials import platforms

    known = backend.status()
    if known["mode"] == "local" and not known["initialized"]:
        return [], []  # caliban has never recorded a group here: no server to start for that
    url = prefect_ready()
    try:
        with prefect_api.client(url) as http:
            return reconcile(http, platforms(), xgroup)
    except PlatformError as e:
        raise CalibanError(str(e)) from None
    except httpx.HTTPError as e:
        raise CalibanError(f"cannot read experiment groups from Prefect at {url}: {e}") from None


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


def _text(rows: list[dict], commands: dict[str, str]) -> str:
    """Caliban's hierarchy: xgroup, experiment command, its jobs."""
    lines: list[str] = []
    for xgroup in dict.fromkeys(r["xgroup"] for r in rows):
        lines.append(f"xgroup {xgroup}:")
        group = [r for r in rows if r["xgroup"] == xgroup]
        for key in dict.fromkeys(r["key"] for r in group):
            jobs = [r for r in group if r["key"] == key]
            command = " ".join([commands.get(jobs[0]["flow_run_id"], ""), *jobs[0]["args"]])
            lines.append(f"  experiment {key}: {command.strip()}")
            for r in jobs:
                exit_code = "" if r["exit_code"] is None else f" exit {r['exit_code']}"
                lines.append(
                    f"    job {r['name']:<20} {r['state']:9s} {r['platform'].upper():>8s} "
                    f"{r['created']} id: {(r['remote_id'] or '-').rsplit('/', 1)[-1][-12:]} image: "
                    f"{r['image'] or '-'} attempt {r['attempt']}/{r['attempts']}{exit_code}"
                )
        lines.append("")
    return "\n".join(lines)


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
    """Show experiment groups, their experiments and jobs (reconciled with Docker first)."""
    runs, rows = _rows(xgroup)
    if xgroup is not None and not runs:
        raise SpecError(f"no experiment group named {xgroup!r}")
    rows = _limit(rows, xgroup, max_jobs)
    if format is Format.json:
        print(json.dumps(rows, indent=2))
        return
    if format in (Format.table, Format.csv):
        import pandas as pd

        frame = pd.DataFrame(rows)
        if format is Format.csv:
            sys.stdout.write(frame.to_csv(index=False))
        else:
            cols = ["xgroup", "name", "state", "attempt", "attempts", "exit_code", "args"]
            print(frame[cols].to_string(index=False) if rows else "no jobs")
        return
    commands = {run.flow_run_id: " ".join(run.command) for run in runs}
    print(_text(rows, commands) if rows else "no jobs yet")


def _latest(xgroup: str) -> tuple[list, list[dict]]:
    """The group's runs and the newest attempt of each of its experiments."""
    runs, rows = _rows(xgroup)
    if not runs:
        raise SpecError(f"no experiment group named {xgroup!r}")
    return runs, _limit(rows, xgroup, 1)


def _ask(rows: list[dict], verb: str, kind: str, xgroup: str, *, dry_run: bool, yes: bool):
    """List what `verb` would touch; True when it should go ahead."""
    if not rows:
        print(f"no {kind} jobs in xgroup {xgroup!r}")
        return False
    print(f"the following jobs would be {PAST[verb]}:")
    for r in rows:
        print(f"  {r['name']} {r['state']} {' '.join(r['args'])}")
    return not dry_run and _confirm(f"do you wish to {verb} these {len(rows)} jobs?", yes)


def stop(
    xgroup: o.XgroupRequired,
    dry_run: o.DryRun = False,
    yes: o.Yes = False,
) -> None:
    """Stop the group's submitted and running jobs, after asking."""
    runs, latest = _latest(xgroup)
    active = [r for r in latest if r["state"] in ACTIVE]
    if not _ask(active, "stop", "submitted or running", xgroup, dry_run=dry_run, yes=yes):
        return
    _stop(runs, active)
    print(f"stopped {len(active)} jobs in xgroup {xgroup!r}")


def _stop(runs, active: list[dict]) -> None:
    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import mark_stopped
    from caliban_flows.tasks.credentials import platforms as make_platforms

    # Mark first, so the flow (if still running) sees it and starts nothing more.
    run_ids = dict.fromkeys(r["flow_run_id"] for r in active)
    with prefect_api.client() as http:
        mark_stopped(http, run_ids)
    by_id = {run.flow_run_id: run for run in runs}

    platforms = make_platforms()
    for run_id in run_ids:
        ids = [r["remote_id"] for r in active if r["flow_run_id"] == run_id and r["remote_id"]]
        if ids:
            platforms.get(by_id[run_id]).cancel(ids)


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
    runs, latest = _latest(xgroup)
    wanted = latest if all_jobs else [r for r in latest if r["state"] in ("FAILED", "STOPPED")]
    if not _ask(wanted, "resubmit", "failed or stopped", xgroup, dry_run=dry_run, yes=yes):
        return
    last = runs[-1]
    if last.platform != "local":
        raise typer.Exit(_resubmit_remote(runs, wanted))
    if not last.build:
        raise CalibanError(f"xgroup {xgroup!r} was run from an --image_id; run it again instead")
    raise typer.Exit(_resubmit_local(runs, wanted))


def _resubmit_local(runs, wanted: list[dict]) -> int:
    from pathlib import Path

    from caliban_flows.cli.execute import run_group

    last = runs[-1]
    recipe = last.build
    originals = {job["key"]: job for run in runs for job in run.jobs}  # newest wins
    root = Path(recipe["root"])
    text = _rebuild_recipe(recipe)
    jobs = [{**originals[r["key"]], "attempt": r["attempt"] + 1} for r in wanted]
    from caliban_flows.platforms.images import image_tag

    return run_group(
        xgroup=last.xgroup,
        jobs=jobs,
        command=last.command,
        image=image_tag(root, text),
        build={**recipe, "dockerfile": text},
        parallel=1,
    )


def _rebuild_recipe(recipe: dict) -> str:
    """Change into the group's project folder; the Dockerfile its current code builds with."""
    import os
    from pathlib import Path

    from caliban_flows.plan import project as sub

    root = Path(recipe["root"])
    if not root.is_dir():
        raise CalibanError(f"the group's project folder {root} is gone; cannot rebuild")
    os.chdir(root)
    return sub.dockerfile(
        gpu=recipe["gpu"],
        extras=recipe["extras"],
        dirs=recipe["dirs"],
        entrypoint=sub.resolve_module(recipe["module"]),
    )


def _resubmit_remote(runs, wanted: list[dict]) -> int:
    """Attempt N+1 of each chosen job, from the current code (or the same --image_tag)."""
    from caliban_flows.cli.execute import cloud_image, cluster_image, cluster_push_target, run_group
    from caliban_flows.platforms.kubernetes.adapter import gke_of
    from caliban_flows.server.ready import check_external_api

    check_external_api()
    last = runs[-1]
    originals = {job["key"]: job for run in runs for job in run.jobs}  # newest wins
    image = last.image
    if last.build and last.platform == "vertex":
        image = cloud_image(
            _rebuild_recipe(last.build),
            project=last.vertex["project"],
            region=last.vertex["region"],
            registry=last.build.get("registry"),
        )
    elif last.build:
        target = cluster_push_target(
            gke_of(last.cluster.get("context")), last.build.get("registry"), None
        )
        image = cluster_image(_rebuild_recipe(last.build), target)
    jobs = [{**originals[r["key"]], "attempt": r["attempt"] + 1} for r in wanted]
    return run_group(
        xgroup=last.xgroup,
        jobs=jobs,
        command=last.command,
        image=image,
        build=last.build,
        platform=last.platform,
        vertex=last.vertex,
        cluster=last.cluster,
        limit=last.limit,
    )


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(stop)
    app.command()(resubmit)
