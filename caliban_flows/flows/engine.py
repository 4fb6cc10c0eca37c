"""Running planned jobs for real: the Docker engine, the Prefect backend, the group flow."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from caliban_flows.flows.interrupt import EXIT_CODE, exit_even_if_stuck
from caliban_flows.plan import project as sub
from caliban_flows.platforms.local.adapter import docker_client, engine_gpu, local_attempts
from caliban_flows.server.ready import check_external_api, prefect_ready, start_backend_early
from caliban_flows.spec.errors import CalibanError, SpecError


def _show_build_line(line: str) -> None:
    if line.strip():
        print(line, file=sys.stderr, flush=True)


def build_here(dockerfile: str, *, no_cache: bool):
    """Build the current folder's image now, streaming Docker's output to stderr."""
    from caliban_flows.platforms.images import ImageError, build_image
    from caliban_flows.tasks.progress import BuildProgress

    client = docker_client()
    try:
        with BuildProgress() as progress:
            return build_image(client, Path.cwd(), dockerfile, no_cache=no_cache, on_log=progress)
    except ImageError as e:
        raise CalibanError(str(e).splitlines()[0]) from e


def push_here(tag: str, target) -> str:
    """Push unless the registry has the tag already; return the pushed reference."""
    from caliban_flows.platforms.images import ImageError, push_image

    try:
        pushed = push_image(
            docker_client(), tag, target.registry, auth=target.auth, on_log=_show_build_line
        )
    except ImageError as e:
        raise CalibanError(str(e)) from e
    if not pushed.pushed:
        print(f"{pushed.reference} is already in the registry: nothing pushed", file=sys.stderr)
    else:  # for event-triggered deployments; only when a Prefect API is already up
        from caliban_flows.state.events import image_pushed

        image_pushed(pushed.reference, local_tag=tag)
    return pushed.reference


def build_recipe(plan: sub.Plan, *, gpu: bool) -> dict:
    """What a resubmit needs to rebuild the image from the current code."""
    return {
        "root": plan.root,
        "module": plan.entrypoint.target,
        "gpu": gpu,
        "extras": list(plan.extras),
        "dirs": list(plan.dirs),
    }


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
) -> int:
    """Run one submission of a group as a flow run; 0 when every job succeeded.

    Each job names its recipe (an index into `recipes`); `placement` is where the platform
    runs them. The jobs are recorded on the run as artifacts, not parameters (no size cap).

    On Vertex without `wait`, 0 once every job is submitted; the run is then left RUNNING
    (state name "Submitted") for `caliban status` to settle when the jobs end.
    """
    from caliban_flows.platforms import registry

    remote = registry.get(platform).remote
    prefect_ready(
        "prefect", "caliban_flows.flows.experiment_group", *registry.get(platform).preload
    )
    from prefect import tags
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.task_runners import ThreadPoolTaskRunner

    from caliban_flows.flows.experiment_group import (
        LAST_RUN,
        experiment_group,
        group_tags,
        hand_over,
        mark_submitted,
    )

    flow = experiment_group.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=max(parallel, 1))
    )
    if limit is not None:
        ensure_limit(limit)
    keys = {job["key"] for job in jobs}
    with exit_even_if_stuck(lambda: _stop_when_stuck(xgroup, remote, keys, LAST_RUN.get("id"))):
        try:
            with (
                temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
                tags(*group_tags(xgroup, platform, limit)),
            ):
                state = flow(
                    xgroup=xgroup,
                    platform=platform,
                    placement=placement,
                    recipes=recipes,
                    submission=hand_over(jobs),
                    parallel=parallel,
                    wait=wait,
                    limit=limit,
                    return_state=True,
                )
        except KeyboardInterrupt:
            if not remote:
                _record_stop(LAST_RUN.get("id"))
            print(_interrupted(xgroup, remote), file=sys.stderr)
            return EXIT_CODE
    if remote and not wait and state.is_completed():
        mark_submitted(LAST_RUN["id"], state.message)
    print(f"xgroup {xgroup!r}: {_one_line(state.message or state.name)}", file=sys.stderr)
    return 0 if state.is_completed() else 1


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


def run_local(plan: sub.Plan, *, image_id: str | None, run_args: list[str], no_cache: bool,
              parallel: int, limit: dict | None = None) -> int:  # fmt: skip
    client = docker_client()
    start_backend_early()
    if image_id is not None:
        import docker.errors

        try:
            client.images.get(image_id)
        except docker.errors.ImageNotFound:
            raise SpecError(
                f"--image_id {image_id!r} is not an image on this Docker engine"
            ) from None
    gpu = engine_gpu(client, plan.gpu)
    dockerfile = plan.dockerfile
    if gpu != plan.gpu and image_id is None:
        dockerfile = sub.dockerfile(
            gpu=False, extras=plan.extras, dirs=plan.dirs, entrypoint=plan.entrypoint
        )
    previous = local_attempts(client, plan.xgroup)
    next_attempts = {key: n + 1 for key, n in previous.items()}
    build = None
    image = image_id
    if image_id is None:
        # Built here, overlapping the server's start; the flow's build task then finds it
        # (and records it) instead of building while nothing else can happen.
        image = build_here(dockerfile, no_cache=no_cache).tag
        build = {"dockerfile": dockerfile, "no_cache": no_cache, **build_recipe(plan, gpu=gpu)}
    return run_group(
        xgroup=plan.xgroup,
        platform="local",
        placement={"gpu": gpu, "run_args": list(run_args)},
        recipes=[plan.recipe(image, build, gpu=gpu)],
        jobs=plan.records("local", next_attempts),
        parallel=parallel,
        limit=limit,
    )


def cloud_image(dockerfile: str, *, project: str, region: str, image_tag: str | None = None,
                no_cache: bool = False, registry: str | None = None,
                registry_block: str | None = None) -> str:  # fmt: skip
    """The image Vertex will pull: --image_tag as given, else built here and pushed."""
    from caliban_flows.plan.push_target import PushTarget, push_target
    from caliban_flows.platforms.vertex.adapter import ENDPOINT_ENV
    from caliban_flows.spec.vertex_job import check_image_uri

    emulator = bool(os.environ.get(ENDPOINT_ENV))
    if image_tag is not None:
        return check_image_uri(image_tag, emulator=emulator)
    target = push_target(registry, registry_block) or PushTarget(
        f"{region}-docker.pkg.dev/{project}/caliban"
    )
    check_image_uri(f"{target.registry.rstrip('/')}/x", emulator=emulator)  # before building
    built = build_here(dockerfile, no_cache=no_cache)
    return push_here(built.tag, target)


def run_cloud(plan: sub.Plan, placement, *, image_tag, no_cache, registry, registry_block,
              max_qps, wait, vertex_block: str | None = None,
              attempts: dict[str, int] | None = None,
              limit: dict | None = None) -> int:  # fmt: skip
    """Submit the plan's jobs to Vertex AI as one flow run of the group."""
    from dataclasses import asdict

    check_external_api()  # before building: a dead API must not cost a build and a push
    start_backend_early()
    image = cloud_image(plan.dockerfile, project=placement.project, region=placement.region,
                        image_tag=image_tag, no_cache=no_cache, registry=registry,
                        registry_block=registry_block)  # fmt: skip
    vertex = {
        "project": placement.project,
        "region": placement.region,
        "placement": asdict(placement),
        "max_qps": max_qps,
        "credentials_block": vertex_block,
    }
    code = _run_remote(plan, "vertex", image, vertex, prebuilt=image_tag is not None,
                       registry=registry, no_cache=no_cache, wait=wait, limit=limit,
                       attempts=attempts)  # fmt: skip
    if code == 0 and not wait:
        print(
            f"follow them with: caliban status --xgroup {plan.xgroup}\n"
            "or in the console: https://console.cloud.google.com/vertex-ai/training/custom-jobs"
            f"?project={placement.project}",
            file=sys.stderr,
        )
    return code


def cluster_push_target(gke: dict | None, registry: str | None, registry_block: str | None):
    """Where images for the cluster go: the registry named, else on GKE the project's
    Artifact Registry in the cluster's region; none is bad input."""
    from caliban_flows.plan.push_target import HINT, PushTarget, push_target

    target = push_target(registry, registry_block)
    if target is None and gke is not None:
        from caliban_flows.spec.gke import region_of

        region = region_of(gke["location"])
        target = PushTarget(f"{region}-docker.pkg.dev/{gke['project']}/caliban")
    if target is None:
        raise SpecError(f"no registry the cluster can pull from: {HINT}")
    return target


def cluster_image(dockerfile: str, target, *, no_cache: bool = False) -> str:
    """Build here and push to `target` (a cluster_push_target): the image the cluster pulls."""
    built = build_here(dockerfile, no_cache=no_cache)
    return push_here(built.tag, target)


def run_cluster(
    plan: sub.Plan,
    platform,
    *,
    image_tag,
    no_cache,
    registry,
    registry_block,
    max_qps,
    wait,
    cluster_block: str | None = None,
    attempts: dict[str, int] | None = None,
    limit: dict | None = None,
) -> int:
    """Submit the plan's jobs to Kubernetes as one flow run of the group."""
    check_external_api()
    target = None
    if image_tag is None:  # bad input: say so before starting anything
        target = cluster_push_target(platform.gke, registry, registry_block)
    start_backend_early()
    image = image_tag or cluster_image(plan.dockerfile, target, no_cache=no_cache)
    cluster = {**platform.record(), "cluster_block": cluster_block, "max_qps": max_qps}
    code = _run_remote(plan, "kubernetes", image, cluster, prebuilt=image_tag is not None,
                       registry=registry, no_cache=no_cache, wait=wait, limit=limit,
                       attempts=attempts)  # fmt: skip
    if code == 0 and not wait:
        print(f"follow them with: caliban status --xgroup {plan.xgroup}", file=sys.stderr)
    return code


def _run_remote(plan: sub.Plan, platform: str, image: str, placement: dict, *, prebuilt: bool,
                registry, no_cache, wait, limit, attempts) -> int:  # fmt: skip
    """One flow run of the group on a remote platform, at `placement`. A built image records
    how to rebuild it, for resubmit."""
    build = None
    if not prebuilt:
        build = {**build_recipe(plan, gpu=plan.gpu), "registry": registry, "no_cache": no_cache}
    return run_group(
        xgroup=plan.xgroup,
        platform=platform,
        placement=placement,
        recipes=[plan.recipe(image, build)],
        jobs=plan.records(platform, attempts),  # attempt 1: reruns add none
        wait=wait,
        limit=limit,
    )
