"""Sweeps for deployments: a schedule, an event or a finished group starts one.

`caliban-sweep` plans the jobs as `caliban run` / `caliban cloud` do (the same experiment
expansion, job names, labels and job keys, so a group stays one group whoever submits to it)
and runs them as a `caliban-experiment-group` subflow tagged `caliban`, `xgroup:X` and
`platform:P`: `caliban status`, `stop` and `resubmit` see it exactly like a CLI submission.

`caliban-report-failures` reports the failed jobs of one group's flow run (an automation on
`prefect.flow-run.Failed` runs it): one log line per job and a markdown artifact.

deployments/prefect.yaml has examples of both.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, tags
from prefect.states import Cancelled, Completed, Failed

SWEEP_FLOW = "caliban-sweep"
REPORT_FLOW = "caliban-report-failures"
PLATFORMS = ("local", "vertex", "kubernetes")
# What `platform_options` may hold, per platform (a typo in a YAML file fails the run).
OPTIONS = {
    "local": {"parallel", "nogpu", "docker_run_args", "extras", "dirs", "no_cache",
              "max_running", "pool"},
    "vertex": {
        "project", "region", "machine_type", "nogpu", "gpu_spec", "tpu_spec",
        "accelerator_type", "accelerator_count", "max_qps", "service_account", "network",
        "spot", "timeout", "restart_on_worker_restart", "force", "vertex_block",
        "max_running", "pool",
    },
    "kubernetes": {
        "context", "namespace", "kubeconfig", "cluster_block", "nogpu", "gpu_spec", "tpu_spec",
        "min_cpu", "min_mem", "nonpreemptible", "backoff_limit", "max_qps", "max_running", "pool",
    },
}  # fmt: skip
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
    platform_options: dict = {},  # noqa: B006
    name: str | None = None,
    labels: dict[str, str] | None = None,
):
    """Expand `experiment_config` into jobs and run them as one experiment group.

    xgroup: the group; `{now:%Y-%m-%d}` in it becomes the run's scheduled start (UTC), so a
        nightly sweep gets a group per night. module: what runs, as for `caliban run`
        (`trainer.train`). experiment_config: Caliban's experiment config, as data.
    image: a prebuilt image (required on vertex), or build_context: the project folder to
        build (local; relative to the flow run's working directory).
    platform_options: local: parallel, nogpu, docker_run_args, extras, dirs, no_cache;
        vertex: project, region, machine_type, nogpu, gpu_spec / tpu_spec (as the CLI) or
        accelerator_type + accelerator_count, max_qps, service_account, network, spot, timeout,
        restart_on_worker_restart, force, vertex_block; kubernetes: context, namespace,
        kubeconfig, cluster_block, nogpu, gpu_spec, tpu_spec, min_cpu, min_mem, nonpreemptible,
        backoff_limit, max_qps; all: max_running and pool (the CLI's --max_running, --pool).
    """
    from prefect.task_runners import ThreadPoolTaskRunner

    from caliban_flows.flows.experiment_group import (
        LAST_RUN,
        experiment_group,
        group_tags,
        hand_over,
        mark_submitted,
    )

    group = expand_xgroup(xgroup)
    if platform not in PLATFORMS:
        raise ValueError(f"platform {platform!r} is not one of {', '.join(PLATFORMS)}")
    options = dict(platform_options or {})
    unknown = sorted(set(options) - OPTIONS[platform])
    if unknown:
        raise ValueError(
            f"platform_options for {platform} do not take {', '.join(unknown)}; "
            f"known: {', '.join(sorted(OPTIONS[platform]))}"
        )
    if image is None and build_context is None:
        raise ValueError("give `image` (a prebuilt image) or `build_context` (a folder to build)")
    if platform != "local" and image is None:
        raise ValueError(f"a {platform} sweep needs `image`: an image pushed where it pulls from")
    planned = dict(
        xgroup=group, module=module, config=experiment_config, args=list(script_args or []),
        name=name, labels=dict(labels or {}),
    )  # fmt: skip
    if platform == "local":
        submission = _local(image=image, build_context=build_context, options=options, **planned)
    elif platform == "kubernetes":
        submission = _kubernetes(image=image, options=options, **planned)
    else:
        submission = _vertex(image=image, options=options, **planned)
    logger = get_run_logger()
    logger.info("xgroup %s: %d %s job(s)", group, len(submission["jobs"]), platform)

    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state.limits import ensure_at, record

    limit = record(platform, group, options.get("max_running"), options.get("pool"))
    if limit is not None:
        ensure_at(PREFECT_API_URL.value(), limit)
    parallel = submission.get("parallel", 1)
    group_flow = experiment_group.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=max(parallel, 1))
    )
    jobs = submission.pop("jobs")
    with tags(*group_tags(group, platform, limit)):  # what `caliban status` finds the group by
        state = group_flow(**submission, submission=hand_over(jobs), limit=limit, return_state=True)
    message = f"xgroup {group}: {state.message or state.name}"
    if platform != "local" and state.is_completed():
        # As `caliban cloud` does: the group's run stays RUNNING while Vertex runs the jobs;
        # `caliban status` settles it when they end.
        run_id = state.state_details.flow_run_id or LAST_RUN.get("id")
        mark_submitted(str(run_id), state.message)
    if state.is_completed():
        return Completed(message=message)
    if state.is_cancelled():  # `caliban stop`
        return Cancelled(message=message)
    return Failed(message=message)


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


@contextlib.contextmanager
def _project(build_context: str | None) -> Iterator[Path | None]:
    """Inside the project folder, where Caliban's rules look for files; None without one."""
    if build_context is None:
        yield None
        return
    root = Path(build_context).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"build_context {build_context!r} is not a folder (from {Path.cwd()})")
    before = Path.cwd()
    os.chdir(root)  # a flow run is its own process under a worker
    try:
        yield root
    finally:
        os.chdir(before)


def _entrypoint(module: str, root: Path | None):
    """How `module` runs: by Caliban's rules in the project, else as the image has it.

    Without a project folder a dotted name is a module and a path is a file, unchecked.
    """
    from caliban_flows.plan import project as sub
    from caliban_flows.spec.entrypoint import resolve_entrypoint

    if root is not None:
        return sub.resolve_module(module)
    given = posixpath.normpath(module) if module else module

    def assumed(path: str) -> bool:
        if path == given:
            return path.endswith(".py") or not all(p.isidentifier() for p in path.split("."))
        return True

    return resolve_entrypoint(module, is_file=assumed, cwd="<image>")


def _specs(*, xgroup: str, config, args: list[str], name: str | None, labels: dict,
           image: str | None, gpu: bool, tpu: bool) -> list:  # fmt: skip
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.plan.project import PLACEHOLDER_IMAGE
    from caliban_flows.spec.experiment import ExperimentConfig
    from caliban_flows.spec.jobspec import default_job_name, job_specs
    from caliban_flows.spec.labels import parse_label

    job_name = name or default_job_name(current_user())
    if not job_name.strip():
        raise ValueError("name must not be empty")
    return job_specs(
        config=ExperimentConfig(config) if config is not None else None,
        script_args=[str(a) for a in args],
        job_name=job_name,
        image=image or PLACEHOLDER_IMAGE,
        gpu_enabled=gpu,
        tpu_enabled=tpu,
        user_labels=[parse_label(f"{k}={v}") for k, v in labels.items()],
    )


def _local(*, xgroup: str, module: str, config, args: list[str], name: str | None, labels: dict,
           image: str | None, build_context: str | None, options: dict) -> dict:  # fmt: skip
    """The group flow's parameters for the local engine, as `caliban run` makes them."""
    from caliban_flows.plan import project as sub
    from caliban_flows.platforms.images import image_tag
    from caliban_flows.platforms.local.adapter import docker_client, engine_gpu, local_attempts
    from caliban_flows.spec.jobspec import planned_jobs, runs_what

    client = docker_client()
    gpu = engine_gpu(client, not options.get("nogpu", False))
    run_args = sub.docker_run_args(options.get("docker_run_args"))
    with _project(build_context) as root:
        entrypoint = _entrypoint(module, root)
        specs = _specs(xgroup=xgroup, config=config, args=args, name=name, labels=labels,
                       image=image, gpu=gpu, tpu=False)  # fmt: skip
        build = None
        if image is None:  # built by the group flow's build-image task, recorded for resubmit
            extras = [str(e) for e in options.get("extras") or []]
            dirs = sub.check_dirs(options.get("dirs"))
            text = sub.dockerfile(gpu=gpu, extras=extras, dirs=dirs, entrypoint=entrypoint)
            image = image_tag(root, text)
            build = {
                "dockerfile": text,
                "root": str(root),
                "module": entrypoint.target,
                "gpu": gpu,
                "extras": extras,
                "dirs": list(dirs),
                "no_cache": bool(options.get("no_cache", False)),
            }
    previous = local_attempts(client, xgroup)
    next_attempts = {key: n + 1 for key, n in previous.items()}
    what = runs_what(entrypoint.command())
    jobs = planned_jobs(xgroup, specs, recipe=what, platform="local", attempts=next_attempts)
    return {
        "xgroup": xgroup,
        "platform": "local",
        "placement": {"gpu": gpu, "run_args": list(run_args)},
        "recipes": [_recipe(entrypoint, image, build, specs, name, labels, gpu, False)],
        "jobs": jobs,
        "parallel": int(options.get("parallel", 1)),
    }


def _vertex(*, xgroup: str, module: str, config, args: list[str], name: str | None,
            labels: dict, image: str, options: dict) -> dict:  # fmt: skip
    """The group flow's parameters for Vertex AI, as `caliban cloud --image_tag` makes them."""
    from dataclasses import asdict

    from caliban_flows.plan import gcloud
    from caliban_flows.plan import project as sub
    from caliban_flows.platforms.vertex.adapter import ENDPOINT_ENV
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec import vertex_job as vj
    from caliban_flows.spec.jobspec import planned_jobs, runs_what

    block = options.get("vertex_block")
    defaults = {}
    if block:
        from caliban_flows.blocks.vertex import settings_from_block

        defaults = settings_from_block(block)
    accelerator_type = options.get("accelerator_type")
    if accelerator_type:
        accelerator_type, count, gpu, tpu, machine = _raw_accelerator(options)
    else:
        gpu_spec, tpu_spec = options.get("gpu_spec"), options.get("tpu_spec")
        gpu, tpu = sub.accelerators(bool(options.get("nogpu", False)), gpu_spec, tpu_spec)
        machine = options.get("machine_type") or acc.default_machine_type(gpu=gpu, tpu=tpu)
        accelerator = tpu or gpu  # one accelerator per Vertex machine, as `caliban cloud`
        accelerator_type = accelerator.accelerator_type if accelerator else None
        count = accelerator.count if accelerator else 0
    region = gcloud.region(options.get("region") or defaults.get("region"))
    if not options.get("force"):
        region = acc.parse_region(region)
        machine = acc.parse_machine_type(machine)
        if not options.get("accelerator_type"):
            acc.validate_cloud_resources(machine_type=machine, gpu=gpu, tpu=tpu, region=region)
    timeout = options.get("timeout")
    placement = vj.Placement(
        project=gcloud.project_id(options.get("project") or defaults.get("project")),
        region=region,
        machine_type=machine,
        accelerator_type=accelerator_type,
        accelerator_count=count,
        service_account=options.get("service_account") or defaults.get("service_account"),
        network=options.get("network") or defaults.get("network"),
        spot=bool(options.get("spot") or defaults.get("spot")),
        timeout_seconds=vj.parse_timeout(str(timeout)) if timeout else None,
        restart_job_on_worker_restart=bool(options.get("restart_on_worker_restart", False)),
    )
    vj.check_image_uri(image, emulator=bool(os.environ.get(ENDPOINT_ENV)))
    entrypoint = _entrypoint(module, None)
    specs = _specs(xgroup=xgroup, config=config, args=args, name=name, labels=labels,
                   image=image, gpu=bool(gpu), tpu=bool(tpu))  # fmt: skip
    what = runs_what(entrypoint.command())
    jobs = planned_jobs(xgroup, specs, recipe=what, platform="vertex")  # attempt 1: no reruns
    vertex = {
        "project": placement.project,
        "region": placement.region,
        "placement": asdict(placement),
        "max_qps": options.get("max_qps") or defaults.get("max_qps"),
        "credentials_block": block,
    }
    return {
        "xgroup": xgroup,
        "platform": "vertex",
        "placement": vertex,
        "recipes": [_recipe(entrypoint, image, None, specs, name, labels, gpu, tpu)],
        "jobs": jobs,
        "wait": False,
    }


def _kubernetes(*, xgroup: str, module: str, config, args: list[str], name: str | None,
                labels: dict, image: str, options: dict) -> dict:  # fmt: skip
    """The group flow's parameters for Kubernetes, as `caliban cluster job submit
    --image_tag` makes them."""
    from caliban_flows.plan import project as sub
    from caliban_flows.platforms.kubernetes import kube_config
    from caliban_flows.platforms.kubernetes.adapter import Kubernetes
    from caliban_flows.spec import k8s_job as kj
    from caliban_flows.spec.jobspec import planned_jobs, runs_what

    block = options.get("cluster_block")
    defaults = {}
    if block:
        from caliban_flows.blocks.kubernetes import settings_from_block

        defaults = settings_from_block(block)
    gpu, tpu = sub.accelerators(bool(options.get("nogpu", False)), options.get("gpu_spec"),
                                options.get("tpu_spec"), validate_count=False)  # fmt: skip
    platform = Kubernetes(
        context=options.get("context") or defaults.get("context"),
        namespace=options.get("namespace") or defaults.get("namespace"),
        config_file=options.get("kubeconfig"),
        config_dict=kube_config({"cluster_block": block}),
    )
    backoff = options.get("backoff_limit", defaults.get("backoff_limit"))
    platform.resources = kj.resources(
        min_cpu=options.get("min_cpu"), min_mem=options.get("min_mem"), gpu=gpu, tpu=tpu,
        nonpreemptible=bool(options.get("nonpreemptible", False)), gke=platform.gke is not None,
        backoff_limit=kj.DEFAULT_BACKOFF_LIMIT if backoff is None else int(backoff),
    )  # fmt: skip
    entrypoint = _entrypoint(module, None)
    specs = _specs(xgroup=xgroup, config=config, args=args, name=name, labels=labels,
                   image=image, gpu=bool(gpu), tpu=bool(tpu))  # fmt: skip
    cluster = {**platform.record(), "cluster_block": block,
               "max_qps": options.get("max_qps") or defaults.get("max_qps")}  # fmt: skip
    return {
        "xgroup": xgroup,
        "platform": "kubernetes",
        "placement": cluster,
        "recipes": [_recipe(entrypoint, image, None, specs, name, labels, gpu, tpu)],
        "jobs": planned_jobs(
            xgroup, specs, recipe=runs_what(entrypoint.command()), platform="kubernetes"
        ),
        "wait": False,
    }


def _recipe(entrypoint, image, build, specs, name, labels, gpu, tpu) -> dict:
    """The submission's one recipe, as `caliban run` / `cloud` record theirs."""
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.spec.jobspec import default_job_name, recipe
    from caliban_flows.spec.labels import parse_label

    return recipe(
        command=entrypoint.command(),
        image=image,
        build=build,
        job_name=name or default_job_name(current_user()),
        labels=dict(parse_label(f"{k}={v}") for k, v in (labels or {}).items()),
        gpu=gpu,
        tpu=tpu,
    )


def _raw_accelerator(options: dict):
    """accelerator_type (an aiplatform_v1.AcceleratorType name) and count, as given."""
    from google.cloud import aiplatform_v1

    kind = str(options["accelerator_type"])
    if options.get("gpu_spec") or options.get("tpu_spec"):
        raise ValueError("accelerator_type conflicts with gpu_spec / tpu_spec: give one")
    if kind not in aiplatform_v1.AcceleratorType.__members__:
        raise ValueError(f"accelerator_type {kind!r} is not an aiplatform_v1.AcceleratorType")
    if not options.get("machine_type"):
        raise ValueError("accelerator_type needs machine_type as well")
    count = int(options.get("accelerator_count", 1))
    if count < 1:
        raise ValueError(f"accelerator_count {count} must be at least 1")
    tpu = kind.startswith("TPU")
    return kind, count, not tpu, tpu, str(options["machine_type"])


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
