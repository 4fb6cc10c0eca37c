"""Sweeps for deployments: a schedule, an event or a finished group starts one.

`caliban-sweep` takes the CLI's inputs as typed parameters and hands them to the CLI's own
planner (plan/group.py) and engine (flows/engine.py): the same expansion, job names, labels,
keys, placement and recipes, so a group stays one group whoever submits to it. It runs them
as a `caliban-experiment-group` subflow tagged `caliban`, `xgroup:X` and `platform:P`:
`caliban status`, `stop` and `resubmit` see it exactly like a CLI submission.

`caliban-report-failures` reports the failed jobs of one group's flow run (an automation on
`prefect.flow-run.Failed` runs it): one log line per job and a markdown artifact.

deployments/prefect.yaml has examples of both.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime, timezone

from prefect import flow, get_run_logger, tags
from prefect.states import Cancelled, Completed, Failed, State

from caliban_flows.plan.options import KubernetesOptions, LocalOptions, VertexOptions

SWEEP_FLOW = "caliban-sweep"
REPORT_FLOW = "caliban-report-failures"
FAILED_STATES = ("FAILED", "UNKNOWN")


@flow(name=SWEEP_FLOW, flow_run_name="sweep {xgroup}", persist_result=False)
def sweep(
    xgroup: str,
    module: str,
    platform: str = "local",
    experiment_config: dict | list | None = None,
    script_args: list[str] = [],  # noqa: B006 (Prefect validates into a new list)
    image: str | None = None,
    build_context: str | None = None,
    local: LocalOptions | None = None,
    vertex: VertexOptions | None = None,
    kubernetes: KubernetesOptions | None = None,
    platform_options: dict | None = None,
    name: str | None = None,
    labels: dict[str, str] | None = None,
):
    """Expand `experiment_config` into jobs and run them as one experiment group.

    xgroup: the group; `{now:%Y-%m-%d}` in it becomes the run's scheduled start (UTC), so a
        nightly sweep gets a group per night. module: what runs, as for `caliban run`
        (`trainer.train`). experiment_config: Caliban's experiment config, as data.
    image: a prebuilt image, or build_context: the project folder to build (relative to the
        flow run's working directory); a remote platform's build is pushed as the CLI does.
    local / vertex / kubernetes: the platform's options, the CLI's flags by name (`nogpu`,
        `gpu_spec`, `project_id`, `namespace` ...). platform_options: the same as plain data,
        for the platform named (what earlier releases took).
    """
    from caliban_flows.plan.group import GroupRequest, plan_group
    from caliban_flows.spec.experiment import ExperimentConfig

    group = expand_xgroup(xgroup)
    options = _options(platform, {"local": local, "vertex": vertex, "kubernetes": kubernetes},
                       platform_options)  # fmt: skip
    if image is None and build_context is None:
        raise ValueError("give `image` (a prebuilt image) or `build_context` (a folder to build)")
    request = GroupRequest(
        platform=platform,
        module=module,
        options=options,
        script_args=[str(a) for a in script_args or []],
        experiment_config=ExperimentConfig(experiment_config)
        if experiment_config is not None
        else None,
        xgroup=group,
        name=name,
        labels=[f"{k}={v}" for k, v in (labels or {}).items()],
        image=image,
        root=build_context,
    )
    plan = plan_group(request)
    get_run_logger().info("xgroup %s: %d %s job(s)", group, len(plan.jobs), platform)
    return run_in_flow(plan)


def run_in_flow(plan) -> State:
    """Run a planned submission as a subflow of the running flow: the group's own flow run,
    tagged as `caliban status` finds it. A remote group's run stays RUNNING (Submitted) while
    its jobs run, as a CLI submission's does."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from caliban_flows.flows.engine import ensure_limit, prepare_image
    from caliban_flows.flows.experiment_group import (
        experiment_group,
        group_tags,
        hand_over,
    )
    from caliban_flows.flows.group_runs import run_here
    from caliban_flows.flows.handover import handed_over
    from caliban_flows.state.secret_blocks import keep

    plan = prepare_image(plan)
    keep(plan.secrets)
    if plan.limit is not None:
        ensure_limit(plan.limit)
    group_flow = experiment_group.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=max(plan.parallel, 1))
    )
    args = plan.group_args()
    jobs = args.pop("jobs")
    with tags(*group_tags(plan.xgroup, plan.platform, plan.limit)):
        state = run_here(group_flow, parameters={**args, "submission": hand_over(jobs)})
    message = f"xgroup {plan.xgroup}: {state.message or state.name}"
    if state.is_completed() or handed_over(state):
        return Completed(message=message)
    if state.is_cancelled():  # `caliban stop`
        return Cancelled(message=message)
    return Failed(message=message)


def _options(platform: str, typed: dict, untyped: dict | None):
    """The options of `platform`: its typed parameter or `platform_options`, not both, and
    none for another platform (a form filled in the wrong section is a mistake)."""
    from caliban_flows.plan.options import options_for

    given = {name: value for name, value in typed.items() if value is not None}
    wrong = sorted(set(given) - {platform})
    if wrong:
        raise ValueError(f"platform is {platform!r} but options were given for {', '.join(wrong)}")
    if platform in given and untyped:
        raise ValueError(f"give `{platform}` or `platform_options`, not both")
    return options_for(platform, given.get(platform) or untyped or {})


def expand_xgroup(template: str, when: datetime | None = None) -> str:
    """The group's name: `{now:<strftime>}` in it is the run's scheduled start, in UTC."""
    if not template or not template.strip():
        raise ValueError("xgroup must not be empty")
    if "{" not in template:
        return template
    if when is None:
        when = _scheduled_start()
    try:
        name = template.format_map({"now": when})
    except (KeyError, ValueError, IndexError, AttributeError) as e:
        raise ValueError(
            f"xgroup {template!r}: only {{now:FORMAT}} (strftime) may appear in braces ({e})"
        ) from None
    if not name.strip():
        raise ValueError(f"xgroup {template!r} is empty once expanded")
    return name


def _scheduled_start() -> datetime:
    try:
        from prefect.runtime import flow_run

        when = flow_run.scheduled_start_time
    except Exception:
        when = None
    if not isinstance(when, datetime):
        return datetime.now(timezone.utc)
    return when.astimezone(timezone.utc)


# ---------------------------------------------------------------------------------------------
# failure reports


@flow(name=REPORT_FLOW, flow_run_name="report {flow_run_id}", persist_result=False)
def report_failures(flow_run_id: str) -> dict:
    """Report the failed jobs of one experiment group's flow run.

    flow_run_id: the run's id, or an event's resource id (`prefect.flow-run.<id>`), so an
    automation can pass `{{ event.resource.id }}`. Each failed job becomes a warning log line;
    a markdown artifact `caliban-failures-<xgroup>` lists them all.
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import Platforms as platforms
    from caliban_flows.state.reconcile import reconcile

    logger = get_run_logger()
    run_id = flow_run_id.strip().removeprefix("prefect.flow-run.")
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        response = http.get(f"/flow_runs/{run_id}")
        response.raise_for_status()
        run = response.json()
        xgroup = (run.get("parameters") or {}).get("xgroup")
        if not xgroup or "caliban" not in (run.get("tags") or []):
            logger.info("flow run %s is not a caliban experiment group: nothing to report", run_id)
            return {"flow_run_id": run_id, "xgroup": None, "failed": []}
        _, rows = reconcile(http, platforms(), xgroup)
    mine = [r for r in rows if r["flow_run_id"] == run_id]
    failed = [r for r in mine if r["state"] in FAILED_STATES]
    for r in failed:
        logger.warning(
            "xgroup %s: job %s %s%s: %s%s", xgroup, r["name"], r["state"],
            "" if r["exit_code"] is None else f" (exit code {r['exit_code']})",
            " ".join(r["args"]) or "(no args)", f"; {r['detail']}" if r.get("detail") else "",
        )  # fmt: skip
    summary = f"{len(failed)} of {len(mine)} jobs failed in xgroup {xgroup}"
    logger.info(summary)
    create_markdown_artifact(
        key=_artifact_key(xgroup),
        markdown=_markdown(xgroup, run, failed, len(mine)),
        description=summary,
    )
    print(summary, file=sys.stderr)
    keep = ("name", "key", "attempt", "args", "state", "exit_code", "remote_id", "detail")
    return {
        "flow_run_id": run_id,
        "xgroup": xgroup,
        "failed": [{k: r.get(k) for k in keep} for r in failed],
    }


def _artifact_key(xgroup: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", xgroup.lower()).strip("-")[:80] or "group"
    return f"caliban-failures-{slug}"


def _markdown(xgroup: str, run: dict, failed: list[dict], total: int) -> str:
    state = (run.get("state") or {}).get("message") or (run.get("state") or {}).get("type", "")
    lines = [
        f"# Failed jobs of xgroup `{xgroup}`",
        "",
        f"Flow run `{run.get('name')}` ({run.get('id')}): {state}",
        "",
        f"{len(failed)} of {total} jobs failed. Rerun them with "
        f"`caliban resubmit --xgroup {xgroup}`.",
        "",
    ]
    if failed:
        lines += ["| job | state | exit code | args | detail |", "|---|---|---|---|---|"]
        for r in failed:
            cells = [r["name"], r["state"], "" if r["exit_code"] is None else str(r["exit_code"]),
                     " ".join(r["args"]), (r.get("detail") or "")[:200]]  # fmt: skip
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
