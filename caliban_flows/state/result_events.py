"""The `caliban.group.results` Prefect event a group run emits once when it settles (its jobs
all ended), so an automation can post its results table somewhere. Sent with the caller's
httpx client on the Prefect API: like `caliban.image.pushed`, it never fails the caller."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from caliban_flows.state.groups import GroupRun
    from caliban_flows.state.run_results import RunResults

GROUP_RESULTS = "caliban.group.results"
EVENT_ROWS = 200  # rows in the payload: Prefect caps an event's size; the artifact has more


def results_event(run: GroupRun, state: str, rows: Sequence[dict], results: RunResults) -> dict:
    """Resource `caliban.xgroup.<xgroup>`, related to the run's flow run; the payload holds the
    job counts by state, the objective, the best job and the results rows (capped)."""
    from caliban_flows.state.events import prefect_event
    from caliban_flows.state.groups import latest_attempts

    mine = latest_attempts([r for r in rows if r["flow_run_id"] == run.flow_run_id])
    shown = results.rows[:EVENT_ROWS]
    resource = {
        "prefect.resource.id": f"caliban.xgroup.{run.xgroup}",
        "prefect.resource.name": run.xgroup,
        "caliban.xgroup": run.xgroup,
    }
    flow_run = {
        "prefect.resource.id": f"prefect.flow-run.{run.flow_run_id}",
        "prefect.resource.role": "flow-run",
        "prefect.resource.name": run.xgroup,
    }
    payload = {
        "xgroup": run.xgroup,
        "flow_run_id": run.flow_run_id,
        "state": state,
        "counts": dict(sorted(Counter(r["state"] for r in mine).items())),
        "objective": str(results.objective) if results.objective else None,
        "best": results.best,
        "rows": shown,
        "truncated": len(results.rows) - len(shown),
        "error": results.error,
    }
    return prefect_event(GROUP_RESULTS, resource, payload, [flow_run])


def emit_group_results(
    http, run: GroupRun, state: str, rows: Sequence[dict], results: RunResults
) -> bool:
    """Post the event to the API's events endpoint; a failure is one warning line. True if
    it was sent."""
    try:
        http.post("/events", json=[results_event(run, state, rows, results)]).raise_for_status()
        return True
    except Exception as e:  # the group settled all the same: an event must not undo that
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"warning: event {GROUP_RESULTS} of {run.xgroup!r} not emitted: {reason}",
              file=sys.stderr)  # fmt: skip
        return False
