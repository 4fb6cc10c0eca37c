"""Resubmit: each chosen job runs again as attempt N+1, by its own recipe, on its own platform.

A group may hold jobs of several entry points, images and platforms (Caliban's experiment
groups did). Each job's record names its run (platform, placement) and its recipe (entry
point, image, how to rebuild it), so a rerun never borrows another submission's settings.
Each distinct image is rebuilt (and pushed) once, from the project folder's current code;
a prebuilt image is reused as it is. Jobs that share platform and placement go in one new
flow run; remote platforms are submitted first, local jobs then run in the terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from caliban_flows.spec.errors import CalibanError


def resubmit(runs, rows: list[dict]) -> int:
    """Rerun `rows` (status rows, each its job's latest attempt); 0 when all went well."""
    from caliban_flows.flows.engine import check_external_api, run_group
    from caliban_flows.platforms import registry

    check_external_api()
    batches = batches_of(runs, rows)
    batches.sort(key=lambda b: not registry.get(b["platform"]).remote)
    images: dict[str, str] = {}
    code = 0
    for batch in batches:
        recipes = [_with_image(batch, r, images) for r in batch["recipes"]]
        result = run_group(
            xgroup=batch["xgroup"],
            platform=batch["platform"],
            placement=batch["placement"],
            recipes=recipes,
            jobs=batch["jobs"],
            limit=batch["limit"],
        )
        code = max(code, result)
    return code


def batches_of(runs, rows: list[dict]) -> list[dict]:
    """The new submissions: one per platform and placement, each job with its own recipe."""
    by_run = {run.flow_run_id: run for run in runs}
    recorded = {(run.flow_run_id, j["key"], j["attempt"]): j for run in runs for j in run.jobs}
    batches: dict[str, dict] = {}
    for row in rows:
        run = by_run[row["flow_run_id"]]
        job = recorded.get((run.flow_run_id, row["key"], row["attempt"]))
        if job is None:
            raise CalibanError(
                f"job {row['key']} attempt {row['attempt']} is not in its run's record"
            )
        where = json.dumps([run.platform, run.placement, run.limit], sort_keys=True)
        batch = batches.setdefault(where, {
            "xgroup": run.xgroup, "platform": run.platform, "placement": run.placement,
            "limit": run.limit, "recipes": [], "jobs": [],
        })  # fmt: skip
        recipe = run.recipe_of(job)
        if recipe not in batch["recipes"]:
            batch["recipes"].append(recipe)
        again = {**job, "attempt": row["attempt"] + 1, "recipe": batch["recipes"].index(recipe)}
        batch["jobs"].append(again)
    return list(batches.values())


def _with_image(batch: dict, recipe: dict, images: dict[str, str]) -> dict:
    """The recipe with its image rebuilt from the current code (once per distinct build)."""
    build = recipe.get("build")
    if not build:
        if not recipe.get("image"):
            raise CalibanError("a job of this group has neither an image nor a way to build one")
        return recipe
    where = json.dumps([build, batch["platform"], batch["placement"]], sort_keys=True)
    if where not in images:
        images[where], dockerfile = _rebuild(batch["platform"], batch["placement"], build)
        build = {**build, "dockerfile": dockerfile}
    return {**recipe, "image": images[where], "build": build}


def _rebuild(platform: str, placement: dict | None, build: dict) -> tuple[str, str]:
    """Build the recipe's image from its project folder's current code; for a remote
    platform, push it where that platform pulls from. The reference and the Dockerfile."""
    from caliban_flows.flows import engine

    with _inside(build["root"]):
        dockerfile = _dockerfile(build)
        target = engine.push_target_for(platform, placement, build)
        built = engine.build_here(dockerfile, no_cache=bool(build.get("no_cache")))
        return (built.tag if target is None else engine.push_here(built.tag, target)), dockerfile


def _dockerfile(build: dict) -> str:
    from caliban_flows.plan import project

    return project.dockerfile(
        gpu=build["gpu"],
        extras=build.get("extras") or (),
        dirs=build.get("dirs") or (),
        entrypoint=project.resolve_module(build["module"]),
    )


@contextlib.contextmanager
def _inside(root: str) -> Iterator[None]:
    """In the project folder, where Caliban's rules find requirements.txt and the module."""
    folder = Path(root)
    if not folder.is_dir():
        raise CalibanError(f"the group's project folder {folder} is gone; cannot rebuild")
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)
