"""A group's flow run: made from the `caliban-group` deployment, run in this process, and run
again in place by `caliban resubmit` or by Retry in the Prefect UI.

The Prefect UI offers Retry only on a deployment's runs, and only a runner serving that
deployment can carry it out (the embedded server starts one; `caliban serve` is one). So every
group run is created from the deployment, in PENDING, which no runner takes, and this process
runs it. Retry sets a run to AwaitingRetry: a runner takes it and runs the group flow again in
its own process, which reruns the failed and stopped jobs as attempt N+1 (flows.retry).
`caliban resubmit` claims the runs itself and does the same here.

A remote group run here ends its part once every job is with its platform: the run goes from
RUNNING to RUNNING ("Submitted") in one write, and reconcile rounds settle it when the jobs
end. No moment records a live group as ended (a flow can only return a final state to
Prefect's own loop, which would run the flow again on any other).
"""

from __future__ import annotations

from collections.abc import Iterable

from caliban_flows.flows.handover import HANDS_OVER, SUBMITTED, handed_over
from caliban_flows.spec.errors import CalibanError
from caliban_flows.state.groups import GROUP_DEPLOYMENT

DEPLOYMENT = GROUP_DEPLOYMENT
RESUBMITTING = "Resubmitting"  # the state name of a run `caliban resubmit` is about to rerun
_DEPLOYMENT_IDS: dict[str, object] = {}  # per API URL, for this process


def group_deployment():
    """The deployment the group runs belong to, as a runner serves it."""
    from prefect.deployments.runner import EntrypointType

    from caliban_flows import __version__
    from caliban_flows.flows.experiment_group import experiment_group

    # By module path: a runner started in any folder imports the flow from the package.
    return experiment_group.to_deployment(
        name=DEPLOYMENT,
        version=__version__,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="caliban's experiment groups: Retry on a run reruns its failed and "
        "stopped jobs (as caliban resubmit does); Cancel stops its jobs (as caliban stop).",
    )


def deployment_id(client):
    """The deployment's id, made (or brought up to this version) on first use."""
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from caliban_flows import __version__
    from caliban_flows.state.groups import FLOW_NAME

    url = PREFECT_API_URL.value()
    if url not in _DEPLOYMENT_IDS:
        try:
            found = client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT}")
            known = found.id if found.version == __version__ else None
        except ObjectNotFound:
            known = None
        _DEPLOYMENT_IDS[url] = known or group_deployment().apply()
    return _DEPLOYMENT_IDS[url]


def run_here(flow, flow_run=None, parameters: dict | None = None):
    """Run a group flow in this process (a subflow of the running flow when `flow_run` is
    None) until it ends, or until its jobs are all with their platform; its last state."""
    # Prefect's run_flow, with one more way out of its loop: the engine is public API of
    # the pinned Prefect (pyproject), and run_flow is this loop without the last condition.
    from prefect.flow_engine import FlowRunEngine

    engine = FlowRunEngine(flow=flow, parameters=parameters, flow_run=flow_run)
    token = HANDS_OVER.set(True)
    try:
        with engine.start():
            while engine.is_running() and not handed_over(engine.state):
                with engine.run_context():
                    engine.call_flow_fn()
    finally:
        HANDS_OVER.reset(token)
    return engine.state


def start_group(flow, parameters: dict, tags: Iterable[str]):
    """Create the group's run from the deployment and run it here; its last state."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run_from_deployment(
            deployment_id(client),
            parameters=parameters,
            tags=list(tags),
            state=Pending(),
            name=parameters["xgroup"],
        )
    return run_here(flow, flow_run, parameters)


def rerun(flow_run_id: str, chosen: list[tuple[str, int]]):
    """Run a group's run again here, rerunning `chosen` (key, attempt) of its jobs as their
    next attempt; its last state. A run still at work in a process is refused; a remote run
    whose jobs are all with their platform ("Submitted") is taken as it is."""
    from prefect.client.orchestration import get_client
    from prefect.states import Pending
    from prefect.task_runners import ThreadPoolTaskRunner

    from caliban_flows.flows.experiment_group import RERUN, experiment_group
    from caliban_flows.server.owner import claim_tags

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        state = flow_run.state
        if state is None or not (state.is_final() or state.name == SUBMITTED):
            raise CalibanError(
                f"run {flow_run_id} of the group is still at work ({state.name if state else 'no'}"
                " state): resubmit once it has ended, or stop it first"
            )
        # Claimed before it is PENDING, so no reconcile round takes it for a dead one's run.
        client.update_flow_run(flow_run.id, tags=claim_tags(flow_run.tags, flow_run.run_count + 1))
        # Forced: Prefect refuses PENDING after CANCELLED (the UI's Retry goes through
        # SCHEDULED and a runner instead); that the run has ended was checked just above.
        client.set_flow_run_state(flow_run.id, Pending(name=RESUBMITTING), force=True)
        flow_run = client.read_flow_run(flow_run.id)
    RERUN[str(flow_run.id)] = list(chosen)
    parallel = max(int(flow_run.parameters.get("parallel") or 1), 1)
    flow = experiment_group.with_options(task_runner=ThreadPoolTaskRunner(max_workers=parallel))
    return run_here(flow, flow_run, flow_run.parameters)
