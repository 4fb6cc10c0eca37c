"""One experiment group submission = one Prefect flow run: build, then one task run per job."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from prefect import flow
from prefect.states import Cancelled, Completed, Failed, Running
from prefect.utilities.annotations import quote

from caliban_flows.flows.background import hand_to_runner, ready_for_it, recorded_jobs, resuming
from caliban_flows.flows.handover import SUBMITTED, hands_over
from caliban_flows.platforms.base import JobRequest, JobState
from caliban_flows.state import background
from caliban_flows.state.groups import FLOW_NAME, STOPPED_MESSAGE
from caliban_flows.tasks.jobs import build_image, expand_sweep, record_jobs, run_job

LAST_RUN: dict[str, str] = {}
# What `caliban resubmit` chose to rerun ((key, attempt) pairs) in a run it runs again here.
RERUN: dict[str, list[tuple[str, int]]] = {}
CANCEL_POLL_SECONDS = 2.0  # how soon Cancel in the UI stops a local group's containers


def group_tags(xgroup: str, platform: str, limit: dict | None = None) -> list[str]:
    """Tags that find a group's flow runs again (Prefect filters tags server-side), and the
    process that runs it: set when the run is created, so no crash leaves a run without it."""
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.server.owner import owner_tag
    from caliban_flows.state.limits import limit_tag
    from caliban_flows.state.users import user_tag

    capped = [limit_tag(limit["name"])] if limit else []
    return ["caliban", f"xgroup:{xgroup}", f"platform:{platform}", *capped, owner_tag(),
            user_tag(current_user())]  # fmt: skip


# Jobs on their way into a flow run of this process. A group of 100,000 jobs is far beyond
# Prefect's 512 KiB cap on a run's parameters, so they travel beside the call and the flow
# records them on its run as artifacts (state.records) before anything starts.
_HANDED_OVER: dict[str, list[dict]] = {}


def hand_over(jobs: list[dict]) -> str:
    """Keep the jobs for the next group flow of this process; the id to pass it."""
    import uuid

    submission = uuid.uuid4().hex
    _HANDED_OVER[submission] = jobs
    return submission


def _stop_its_jobs(flow, flow_run, state) -> None:
    """Cancel in the UI of a run a runner runs (a Retry): its jobs stop, as caliban stop."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api
    from caliban_flows.state.groups import latest_attempts
    from caliban_flows.state.reconcile import Platforms, reconcile, stop_jobs

    platforms = Platforms()
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        runs, rows = reconcile(http, platforms, flow_run.parameters["xgroup"])
        active = [
            r
            for r in latest_attempts(rows)
            if r["flow_run_id"] == str(flow_run.id) and not JobState(r["state"]).terminal
        ]
        stop_jobs(http, platforms, runs, active)


@flow(
    name=FLOW_NAME,
    flow_run_name="{xgroup}",
    persist_result=False,
    on_cancellation=[_stop_its_jobs],
)
def experiment_group(
    xgroup: str,
    platform: str,
    recipes: list[dict],
    submission: str,
    placement: dict | None = None,
    parallel: int = 1,
    wait: bool = False,
    limit: dict | None = None,
):
    """Record the jobs, build their images, then run every job (one submission of a group).

    The parameters are the submission's record: its platform, where it runs (`placement`:
    Vertex's project, region and machine; the cluster's context and resources; local GPU mode
    and docker run args) and its recipes (entry point, image, how to rebuild it). Each job,
    recorded as artifacts on this run, names its recipe. The run fails when any job fails.
    Run by this process (flows.group_runs.run_here), a remote run ends its part once every
    job is submitted, unless `wait`, and stays RUNNING ("Submitted") until reconcile rounds
    settle it when the jobs end; run by a runner (the UI's Retry), it waits for its jobs.
    With `limit` (--max_running: a Prefect concurrency limit's name and cap) at most that
    many jobs run at once. Run again (Retry in the UI, `caliban resubmit`), it reruns its
    failed and stopped jobs as their next attempt (flows.retry).
    """
    from prefect.runtime import flow_run

    from caliban_flows.platforms import registry

    LAST_RUN["id"] = flow_run.id  # for the caller, should the run end with Ctrl-C
    jobs = _HANDED_OVER.pop(submission, None)
    round_ = 1
    resumed = jobs is None and flow_run.run_count > 1 and resuming(flow_run.id, flow_run.tags)
    if resumed:  # the background submitter: the recorded jobs, submitted here
        jobs = recorded_jobs(flow_run.id, flow_run.run_count)
    elif jobs is None and flow_run.run_count > 1:
        jobs, recipes = _again(xgroup, platform, placement, recipes)
        if not jobs:
            return Completed(message="nothing to rerun: no job of this run failed or stopped")
        round_ = flow_run.run_count
    if jobs is None:
        return Failed(message="this run's jobs were handed to another process; submit again")
    if not resumed:
        record_jobs(quote(jobs), round_)
    remote = registry.get(platform).remote
    recipes = [dict(r) for r in recipes]
    used = {j.get("recipe", 0) for j in jobs}
    for index, recipe in enumerate(recipes):  # remote platforms get a pushed image
        build = recipe.get("build")
        if index in used and build is not None and not remote and build.get("dockerfile"):
            built = build_image(build["root"], build["dockerfile"], build.get("no_cache", False),
                                build.get("credentials"))  # fmt: skip
            recipe["image"] = built["tag"]
    # quote(): Prefect need not walk a thousand jobs looking for futures to resolve.
    requests = expand_sweep(xgroup, recipes, placement or {}, quote(jobs))
    if remote:
        outcome = _remote_group(xgroup, requests, platform, placement or {}, wait, limit,
                                resumed)  # fmt: skip
        _publish(xgroup)
        return outcome
    try:
        keys = {r.key for r in requests}
        # A second run of the group finds these jobs; Cancel in the UI stops them.
        with one_submitter(xgroup, platform), _stop_when_cancelled(xgroup, keys):
            states = _run_all(requests, parallel, limit["name"] if limit else None)
    except KeyboardInterrupt:  # Ctrl-C: stop what runs; the caller records it as a stop
        stop_running(xgroup, {r.key for r in requests})
        raise
    outcome = _local_outcome(states)
    _publish(xgroup, settled_as=outcome.type.value)  # its jobs all ended: the results event
    return outcome


def _local_outcome(states: list):
    if _stopped():  # `caliban stop` cancelled this run: keep it cancelled, not failed
        return Cancelled(message=STOPPED_MESSAGE)
    failed = sum(1 for s in states if not s.is_completed())
    if failed:
        return Failed(message=f"{failed} of {len(states)} jobs failed")
    return Completed(message=f"{len(states)} jobs succeeded")


def _again(xgroup: str, platform: str, placement: dict | None, recipes: list[dict]):
    """This run, run again: the jobs to rerun as their next attempt, and the recipes with
    those jobs' fresh ones added (flows.retry)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.flows import retry
    from caliban_flows.state import prefect_api

    with prefect_api.client(PREFECT_API_URL.value()) as http:
        retry.claim(http, flow_run.id, flow_run.run_count)
        chosen = RERUN.pop(flow_run.id, None)
        jobs, used = retry.jobs_to_rerun(http, xgroup, flow_run.id, chosen)
        recipes = list(recipes)
        moved: dict[int, int] = {}
        for index, recipe in used:
            recipes.append(retry.fresh_recipe(platform, placement, recipe))
            moved[index] = len(recipes) - 1
        jobs = [{**job, "recipe": moved[job.get("recipe", 0)]} for job in jobs]
        if jobs:
            retry.record_recipes(http, flow_run.id, flow_run.parameters, recipes)
    return jobs, recipes


@contextlib.contextmanager
def _stop_when_cancelled(xgroup: str, keys: set[str]) -> Iterator[None]:
    """While a local group runs here: Cancel in the UI stops its containers, as caliban stop
    does (the run then ends Cancelled)."""
    import threading

    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api

    run_id, url, done = flow_run.id, PREFECT_API_URL.value(), threading.Event()

    def watch() -> None:
        with prefect_api.client(url) as http:
            while not done.wait(CANCEL_POLL_SECONDS):
                try:
                    state = (http.get(f"/flow_runs/{run_id}").json().get("state") or {}).get("type")
                except Exception:  # the server busy or restarting: ask again next time
                    continue
                if state in ("CANCELLING", "CANCELLED"):
                    stop_running(xgroup, keys)
                    return

    watcher = threading.Thread(target=watch, name="caliban-cancel-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


def _remote_group(xgroup: str, requests: list[JobRequest], platform: str, record: dict,
                  wait: bool, limit: dict | None, resumed: bool = False):  # fmt: skip
    from caliban_flows.platforms import registry
    from caliban_flows.state.groups import FLOW_NAME, GROUP_DEPLOYMENT
    from caliban_flows.tasks.remote import fill_slots, monitor_jobs, submit_jobs

    entry = registry.get(platform)
    where = entry.title
    per_minute = entry.submit_per_minute(record)
    large = background.goes_to_background(len(requests), per_minute)
    if large and not (resumed or wait or limit) and hands_over():
        if ready_for_it(f"{FLOW_NAME}/{GROUP_DEPLOYMENT}"):
            return hand_to_runner(xgroup, len(requests), per_minute)
        print(f"xgroup {xgroup!r}: no runner serves the group deployment, so this terminal "
              f"submits: {background.queued_message(len(requests), per_minute)}",
              file=sys.stderr, flush=True)  # fmt: skip

    with one_submitter(xgroup, platform):  # a second submission waits, then finds them all
        if limit:
            submitted = fill_slots(limit["name"])
            queued = len(requests) - len(submitted)
            message = (f"{len(submitted)} jobs submitted to {where}, {queued} queued "
                       f"behind --max_running {limit['max_running']}")  # fmt: skip
        elif resumed and per_minute:  # in pieces: `caliban stop` ends it within one
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            shown = create_progress_artifact(
                0.0, description=f"xgroup {xgroup}: jobs submitted by the background submitter"
            )
            submitted = []
            size = background.piece_size(per_minute)
            for start in range(0, len(requests), size):
                if _stopped():
                    break
                piece = requests[start : start + size]
                submitted += submit_jobs(quote(piece), platform, record)
                update_progress_artifact(shown, 100.0 * len(submitted) / len(requests))
            message = f"{len(submitted)} jobs submitted to {where} in the background"
        else:
            submitted = submit_jobs(quote(requests), platform, record)
            message = f"{len(submitted)} jobs submitted to {where}"
    if not wait and hands_over():
        # One write, RUNNING to RUNNING: mirrored by reconcile rounds, and cancellable in the
        # UI, until its jobs end. Its event is prefect.flow-run.Submitted: triggers on
        # prefect.flow-run.Completed fire once, when the jobs have ended.
        _claim_next_entry()
        return Running(name=SUBMITTED, message=message)
    refill = (lambda: fill_slots.fn(limit["name"])) if limit else None
    ended = monitor_jobs(xgroup, platform, record, submitted, _stopped, len(requests), refill)
    if _stopped():
        return Cancelled(message=STOPPED_MESSAGE)
    failed = sum(1 for j in ended if j.state is not JobState.SUCCEEDED)
    if failed:
        return Failed(message=f"{failed} of {len(ended)} jobs failed")
    return Completed(message=f"{len(ended)} jobs succeeded")


SUBMITTER_WAIT_SECONDS = 900.0


@contextlib.contextmanager
def one_submitter(xgroup: str, platform: str) -> Iterator[None]:
    """Hold the group's submission lease (state.leases) while its jobs are submitted: two
    submissions of one group (a double Enter, two terminals, an overlapping schedule) take
    turns, and the second finds the first one's jobs instead of creating them again."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.spec.limits import limit_name
    from caliban_flows.state import prefect_api
    from caliban_flows.state.leases import held

    def waiting() -> None:
        print(f"xgroup {xgroup!r} is being submitted by another caliban: waiting for it",
              file=sys.stderr, flush=True)  # fmt: skip

    def busy() -> Exception:
        return RuntimeError(
            f"xgroup {xgroup!r} is still being submitted elsewhere after "
            f"{SUBMITTER_WAIT_SECONDS:g} s: try again when it is done"
        )

    name = f"{limit_name(platform, xgroup)}-submit"
    with (
        prefect_api.client(PREFECT_API_URL.value()) as http,
        held(http, name, wait=SUBMITTER_WAIT_SECONDS, on_wait=waiting, busy=busy),
    ):
        yield


def _run_all(requests: list[JobRequest], parallel: int, limit: str | None) -> list:
    states = []
    if parallel <= 1:  # Caliban's way: one after another, output streamed to the terminal
        for request in requests:
            if _stopped():
                break
            print(f"Job {request.name} - Experiment args: {list(request.args)}", flush=True)
            state = run_job(request, stream=True, limit=limit, return_state=True)
            print(_outcome(request, state), flush=True)
            states.append(state)
    else:
        futures = [run_job.submit(r, stream=False, limit=limit) for r in requests]
        for request, future in zip(requests, futures):
            future.wait()
            states.append(future.state)
            print(_outcome(request, future.state), flush=True)
    return states


def _publish(xgroup: str, *, settled_as: str | None = None) -> None:
    """The run's jobs and results tables and summary (with `settled_as`, the state its jobs
    all ended in: the `caliban.group.results` event too); a failure never fails the group."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import Platforms, publish_group

    try:
        with prefect_api.client(PREFECT_API_URL.value()) as http:
            publish_group(http, Platforms(), xgroup, flow_run.id, settled_as=settled_as)
    except Exception as e:
        print(f"warning: the jobs table was not published: {e}", file=sys.stderr)


def stop_running(xgroup: str, keys: set[str]) -> None:
    from caliban_flows.platforms.local.adapter import LocalDocker

    local = LocalDocker()
    local.cancel(
        [j.remote_id for j in local.poll(xgroup) if j.key in keys and not j.state.terminal]
    )


def _claim_next_entry() -> None:
    """Entering RUNNING again counts as another run of this flow run (server.owner): this
    process claims that one before its state says so."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    from caliban_flows.server.owner import claim_tags

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)
        client.update_flow_run(run.id, tags=claim_tags(run.tags, run.run_count + 1))


def _stopped() -> bool:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    return state is not None and (state.is_cancelled() or state.is_cancelling())


def _outcome(request: JobRequest, state) -> str:
    if state.is_completed():
        return f"Job {request.name} succeeded!"
    return f"Job {request.name} failed: {state.message}"
