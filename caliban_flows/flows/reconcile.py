"""The reconcile service: every active group's states and artifacts kept true on an interval.

`caliban serve` serves this flow as a deployment with an interval schedule, so the Prefect UI
tells the truth without anyone running `caliban status`, and a run cancelled in the UI has its
remote jobs cancelled within one interval.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from caliban_flows.spec.errors import CalibanError

DEPLOYMENT = "caliban-reconcile"
_HELD = ("PENDING", "RUNNING", "CANCELLING")  # the states that hold the one-round slot


def release_rounds(api_url: str) -> int:
    """Cancel the rounds a stopped service left Pending or Running; returns how many.

    A round holds the deployment's one-round slot from Pending on. The runner does not give
    it back when `caliban serve` stops between claiming a round and finishing it (Ctrl-C
    almost always lands so at a short interval), and Prefect frees it only when the lease
    lapses, 300 s later: a restarted service would make no rounds till then. One service per
    Prefect server is the intended shape; a second one starting cuts short the other's round
    in flight, which its next round does again.
    """
    from caliban_flows.lean_httpx import httpx
    from caliban_flows.state import prefect_api

    body = {
        "deployments": {"name": {"any_": [DEPLOYMENT]}},
        "flow_runs": {"state": {"type": {"any_": list(_HELD)}}},
    }
    state = {"type": "CANCELLED", "message": "caliban serve stopped before this round ended"}
    try:
        with prefect_api.client(api_url) as http:
            found = http.post("/flow_runs/filter", json=body)
            found.raise_for_status()
            for run in found.json():
                prefect_api.set_state(http, run["id"], state)
    except httpx.HTTPError as e:
        raise CalibanError(f"cannot free the reconcile rounds left held in Prefect: {e}") from None
    return len(found.json())


@flow(name="caliban-reconcile", persist_result=False)
def reconcile_active_groups() -> str:
    """One round: reconcile each group that has a run not over yet."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api
    from caliban_flows.state.groups import active_xgroups
    from caliban_flows.state.reconcile import PlatformError, reconcile
    from caliban_flows.state.reconcile import Platforms as make_platforms

    logger = get_run_logger()
    platforms = make_platforms()
    done, failed = 0, 0
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        for xgroup in active_xgroups(http):
            unanswered: list[str] = []
            try:  # one unreachable platform must not starve the rest
                reconcile(http, platforms, xgroup, publish_all=True, warn=unanswered.append)
            except PlatformError as e:
                unanswered.append(str(e))
            for line in unanswered:
                logger.warning("xgroup %s: %s", xgroup, line)
            done += not unanswered
            failed += bool(unanswered)
    return f"{done} groups reconciled, {failed} could not be listed"
