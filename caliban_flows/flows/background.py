"""The group flow's part in background submission (state/background.py): the terminal's run
hands the submitting to the runner, and the runner's run picks it up."""

from __future__ import annotations

import sys

from caliban_flows.state import background
from caliban_flows.state.groups import newest_attempts


def hand_to_runner(xgroup: str, jobs: int, per_minute: float):
    """The terminal's last word on a large submission: the run tagged for the background
    submitter and left SCHEDULED ("Queued") for the runner serving the group deployment."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
    from prefect.states import Scheduled

    from caliban_flows.state import prefect_api

    with prefect_api.client(PREFECT_API_URL.value()) as http:
        tags = http.get(f"/flow_runs/{flow_run.id}").raise_for_status().json().get("tags") or []
        body = {"tags": [*tags, background.BACKGROUND_TAG]}
        http.patch(f"/flow_runs/{flow_run.id}", json=body).raise_for_status()
    message = background.queued_message(jobs, per_minute)
    ui = PREFECT_UI_URL.value()
    if ui:
        link = f"{ui}/runs/flow-run/{flow_run.id}"
        print(f"xgroup {xgroup}: follow the submission in the Prefect UI: {link}",
              file=sys.stderr, flush=True)  # fmt: skip
    return Scheduled(name=background.QUEUED, message=message)


def ready_for_it(deployment: str) -> bool:
    """A runner serves the group deployment: without one, a queued run would wait forever,
    so the terminal submits itself."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api

    try:
        with prefect_api.client(PREFECT_API_URL.value(), timeout=10.0) as http:
            return background.runner_ready(http, deployment)
    except Exception:  # unknown: submitting here is never wrong
        return False


def resuming(flow_run_id: str, tags) -> bool:
    """This run was queued for the background submitter (not retried from the UI): the last
    SCHEDULED state it went through is named "Queued"."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api

    if background.BACKGROUND_TAG not in (tags or ()):
        return False
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        got = http.get("/flow_run_states/", params={"flow_run_id": flow_run_id})
        got.raise_for_status()
    states = sorted(got.json(), key=lambda s: s.get("timestamp") or "")
    scheduled = [s for s in states if s.get("type") == "SCHEDULED"]
    return bool(scheduled) and scheduled[-1].get("name") == background.QUEUED


def recorded_jobs(flow_run_id: str, run_count: int) -> list[dict]:
    """The run's jobs as recorded (the newest attempt of each), for the runner to submit;
    the runner's process is this run's owner from now on."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.flows import retry
    from caliban_flows.state import prefect_api, records

    with prefect_api.client(PREFECT_API_URL.value()) as http:
        retry.claim(http, flow_run_id, run_count)
        jobs, _ = records.read(http, [flow_run_id])
    return newest_attempts(jobs.get(flow_run_id, []))
