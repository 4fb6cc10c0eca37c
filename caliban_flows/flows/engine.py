"""Running planned jobs for real: the Docker engine, the Prefect backend, the group flow."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from caliban_flows.flows.images import build_here, push_here, push_target_for
from caliban_flows.flows.images import check_image as _check_image
from caliban_flows.flows.interrupt import EXIT_CODE, exit_even_if_stuck
from caliban_flows.plan import project
from caliban_flows.server.ready import check_external_api, prefect_ready, start_backend_early
from caliban_flows.spec.errors import CalibanError

if TYPE_CHECKING:
    from caliban_flows.plan.group import GroupPlan


def run_group(
    *,
    xgroup: str,
    platform: str,
    placement: dict | None,
    recipes: list[dict],
    jobs: list[dict],
    parallel: int = 1,
    wait: bool = False,
    limit: dict | None = None,
    secrets: dict | None = None,
) -> int:
    """Run one submission of a group as a flow run; 0 when every job succeeded.

    Each job names its recipe (an index into `recipes`); `placement` is where the platform
    runs them. The jobs are recorded on the run as artifacts, not parameters (no size cap).

    The run is made from the group deployment (flows.group_runs), so the Prefect UI can
    Retry it. On a remote platform without `wait`, 0 once every job is submitted; the run is
    then left RUNNING (state name "Submitted") for reconcile rounds to settle when the jobs end.
    """

    def start():  # once the Prefect API is ready: importing prefect reads where it is
        from prefect import tags
        from prefect.task_runners import ThreadPoolTaskRunner

        from caliban_flows.flows.experiment_group import experiment_group, group_tags, hand_over
        from caliban_flows.flows.group_runs import start_group

        flow = experiment_group.with_options(
            task_runner=ThreadPoolTaskRunner(max_workers=max(parallel, 1))
        )
        from caliban_flows.state.secret_blocks import keep

        keep(secrets or {})
        if limit is not None:
            ensure_limit(limit)
        parameters = {
            "xgroup": xgroup,
            "platform": platform,
            "placement": placement,
            "recipes": recipes,
            "submission": hand_over(jobs),
            "parallel": parallel,
            "wait": wait,
            "limit": limit,
        }
        run_tags = group_tags(xgroup, platform, limit)
        with tags(*run_tags):
            return start_group(flow, parameters, run_tags)

    return _run_here(xgroup, platform, {job["key"] for job in jobs}, start)


def rerun_group(xgroup: str, platform: str, flow_run_id: str, chosen: list[tuple[str, int]]) -> int:
    """Run a group's run again here (flows.group_runs.rerun), rerunning the `chosen` (key,
    attempt) of its jobs as their next attempt; 0 when every rerun job succeeded."""

    def start():
        from caliban_flows.flows.group_runs import rerun

        return rerun(flow_run_id, chosen)

    return _run_here(xgroup, platform, {key for key, _ in chosen}, start)


def _run_here(xgroup: str, platform: str, keys: set[str], start) -> int:
    """Run a group flow run in this process (`start` makes and runs it), Ctrl-C included."""
    from caliban_flows.platforms import registry

    remote = registry.get(platform).remote
    prefect_ready(
        "prefect", "caliban_flows.flows.experiment_group", *registry.get(platform).preload
    )
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from caliban_flows.flows.experiment_group import LAST_RUN

    with exit_even_if_stuck(lambda: _stop_when_stuck(xgroup, remote, keys, LAST_RUN.get("id"))):
        try:
            with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                state = start()
        except KeyboardInterrupt:
            if not remote:
                _record_stop(LAST_RUN.get("id"))
            print(_interrupted(xgroup, remote), file=sys.stderr)
            return EXIT_CODE
    from caliban_flows.flows.handover import handed_over

    print(f"xgroup {xgroup!r}: {_one_line(state.message or state.name)}", file=sys.stderr)
    return 0 if state.is_completed() or handed_over(state) else 1


def _interrupted(xgroup: str, remote: bool) -> str:
    if not remote:
        return f"\nstopped: the running jobs of xgroup {xgroup!r} were stopped"
    # What was submitted runs on; submitting again adds the rest.
    return (f"\ninterrupted: run the same command again to submit the rest of xgroup "
            f"{xgroup!r}, or stop it with: caliban stop --xgroup {xgroup}")  # fmt: skip


def _record_stop(flow_run_id: str | None) -> None:
    """The stopped run as Cancelled, over REST: Prefect's own client may be what hangs."""
    if flow_run_id is not None:
        from caliban_flows.state import prefect_api
        from caliban_flows.state.reconcile import mark_stopped

        with prefect_api.client(timeout=5.0) as http:
            mark_stopped(http, [flow_run_id])


def _stop_when_stuck(xgroup: str, remote: bool, keys: set[str], flow_run_id: str | None):
    """What a Ctrl-C still owes when Prefect hangs: local jobs stopped, the stop recorded."""
    if not remote:
        from caliban_flows.flows.experiment_group import stop_running

        stop_running(xgroup, keys)
        _record_stop(flow_run_id)
    print(_interrupted(xgroup, remote), file=sys.stderr)


def _one_line(text: str) -> str:
    # A flow that raised carries "Flow run encountered an exception: Type: text ...".
    return text.splitlines()[0] if text else text


def ensure_limit(limit: dict) -> None:
    """Create the group's Prefect concurrency limit, or set its cap, before the run starts."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state.limits import LimitError, ensure_at

    try:
        ensure_at(PREFECT_API_URL.value(), limit)
    except LimitError as e:
        raise CalibanError(str(e)) from None


def run_plan(plan: GroupPlan) -> int:
    """Run a planned submission from the terminal: check what it will use, build (and push)
    its image if it has none, then run the group; 0 when it all went well."""
    from caliban_flows.platforms import registry

    entry = registry.get(plan.platform)
    if entry.remote:
        check_external_api()  # before building: a dead API must not cost a build and a push
    plan = prepare_image(plan, early=start_backend_early)
    code = run_group(**plan.group_args(), secrets=plan.secrets)
    if code == 0 and entry.remote and not plan.wait:
        print(f"follow them with: caliban status --xgroup {plan.xgroup}", file=sys.stderr)
        hint = entry.follow(plan.placement)
        if hint:
            print(hint, file=sys.stderr)
    return code


def prepare_image(plan: GroupPlan, *, early=None) -> GroupPlan:
    """The plan with its image: a given one checked, else built from the project folder and,
    for a remote platform, pushed where it pulls from. `early` runs once every input is
    checked, before the build (the CLI starts the Prefect server there, overlapping it)."""
    recipe = plan.recipes[0]
    if recipe["image"] is not None:
        _check_image(plan.platform, recipe["image"])
        if early:
            early()
        return plan
    build = recipe["build"]
    target = push_target_for(plan.platform, plan.placement, build)  # bad input: before building
    if early:
        early()
    with project.inside(build["root"]):
        built = build_here(
            build["dockerfile"],
            no_cache=bool(build.get("no_cache")),
            credentials=tuple(build.get("credentials") or ()),
        )
        image = built.tag if target is None else push_here(built.tag, target)
    return plan.with_image(image)
