"""A group's run, run again in place: which jobs rerun, as which attempt, from which image.

Retry in the Prefect UI and `caliban resubmit` both come here, inside the group flow's next
run (flows.group_runs). The jobs that rerun are this run's whose newest attempt in the group
failed or was stopped (or those `caliban resubmit` chose); each reruns as attempt N+1 by its
own recipe, its image rebuilt once from its project folder's current code (and pushed, for a
remote platform). New recipes are added to the run's parameters, so every attempt keeps the
image it ran.
"""

from __future__ import annotations

import json

from caliban_flows.spec.errors import CalibanError

RERUN_STATES = ("FAILED", "STOPPED")


def claim(http, flow_run_id: str, run_count: int) -> None:
    """Make this process the run's owner for this run of it, unless it is already (a runner
    started it: the owner recorded is the process of an earlier run)."""
    from caliban_flows.server.owner import claim_tags, owned_run

    tags = http.get(f"/flow_runs/{flow_run_id}").json().get("tags") or []
    if owned_run(tags) < run_count:
        response = http.patch(
            f"/flow_runs/{flow_run_id}", json={"tags": claim_tags(tags, run_count)}
        )
        response.raise_for_status()


def jobs_to_rerun(
    http, xgroup: str, flow_run_id: str, chosen: list[tuple[str, int]] | None
) -> tuple[list[dict], list[tuple[int, dict]]]:
    """The run's jobs to rerun, each as its next attempt, and the recipes they use (index in
    the run's recipes, recipe), from the group as the platforms report it now."""
    from caliban_flows.state.groups import latest_attempts
    from caliban_flows.state.reconcile import Platforms, reconcile

    runs, rows = reconcile(http, Platforms(), xgroup)
    mine = next((r for r in runs if r.flow_run_id == flow_run_id), None)
    if mine is None:
        raise CalibanError(f"run {flow_run_id} is not a run of xgroup {xgroup!r}")
    latest = [r for r in latest_attempts(rows) if r["flow_run_id"] == flow_run_id]
    if chosen is None:
        picked = [r for r in latest if r["state"] in RERUN_STATES]
    else:
        wanted = {(key, attempt) for key, attempt in chosen}
        picked = [r for r in latest if (r["key"], r["attempt"]) in wanted]
    recorded = {(j["key"], j["attempt"]): j for j in mine.jobs}
    jobs = [{**recorded[r["key"], r["attempt"]], "attempt": r["attempt"] + 1} for r in picked]
    used = sorted({j.get("recipe", 0) for j in jobs})
    return jobs, [(i, mine.recipes[i]) for i in used]


def fresh_recipe(platform: str, placement: dict | None, recipe: dict) -> dict:
    """The recipe for a rerun: a prebuilt image as it is; else the project folder's current
    code, built now (and pushed, for a remote platform)."""
    from caliban_flows.flows import images

    build = recipe.get("build")
    if not build:
        if not recipe.get("image"):
            raise CalibanError("a job of this group has neither an image nor a way to build one")
        return recipe
    from caliban_flows.plan import project

    with project.inside(build["root"]):
        build = {**build, "dockerfile": _dockerfile(build)}
        target = images.push_target_for(platform, placement, build)  # None: local Docker
        built = images.build_here(
            build["dockerfile"],
            no_cache=bool(build.get("no_cache")),
            credentials=tuple(build.get("credentials") or ()),
        )
        image = built.tag if target is None else images.push_here(built.tag, target)
    return {**recipe, "image": image, "build": build}


def record_recipes(http, flow_run_id: str, parameters: dict, recipes: list[dict]) -> None:
    """The run's parameters with every recipe, old and new: what status and later reruns read."""
    body = {"parameters": json.loads(json.dumps({**parameters, "recipes": recipes}))}
    http.patch(f"/flow_runs/{flow_run_id}", json=body).raise_for_status()


def _dockerfile(build: dict) -> str:
    from caliban_flows.plan import project

    return project.dockerfile(
        gpu=build["gpu"],
        extras=build.get("extras") or (),
        dirs=build.get("dirs") or (),
        entrypoint=project.resolve_module(build["module"]),
    )
