"""The reconcile service: every active group's states and artifacts kept true on an interval.

`caliban serve` serves this flow as a deployment with an interval schedule, so the Prefect UI
tells the truth without anyone running `caliban status`, and a run cancelled in the UI has its
remote jobs cancelled within one interval.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

DEPLOYMENT = "caliban-reconcile"


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
