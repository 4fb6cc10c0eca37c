"""A remote group announces its results once, when a reconcile round settles it: `caliban cloud`
against the Vertex AI emulator (simulated jobs, held RUNNING until the test ends them), then
`caliban status` rounds before and after the jobs end. The `caliban.group.results` event is in
Prefect exactly once, with the settled state and the counts; the summary says no job reported
the objective's metric (Vertex's logs are not the job's output, and no bucket was given)."""

from __future__ import annotations

import re
import uuid

import httpx

from devtools.vertex_emulator import VertexEmulator
from tests.conftest import wait_for
from tests.e2e.test_vertex_e2e import IMAGE, api_url, make_cli, project, status
from tests.prefect_http import auth_headers

__all__ = ["project"]  # a fixture, shared with the Vertex tests


def results_events(cli, xgroup: str) -> list[dict]:
    body = {"filter": {"event": {"name": ["caliban.group.results"]},
                       "any_resource": {"id": [f"caliban.xgroup.{xgroup}"]}}}  # fmt: skip
    page = httpx.post(f"{api_url(cli)}/events/filter", json=body, timeout=10,
                      headers=auth_headers(cli)).json()  # fmt: skip
    return page["events"]


def summary(cli, flow_run_id: str) -> str:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC"}
    found = httpx.post(f"{api_url(cli)}/artifacts/filter", json=body, timeout=10,
                       headers=auth_headers(cli)).json()  # fmt: skip
    return next(a["data"] for a in found if re.fullmatch(r"caliban-\w+-summary", a["key"] or ""))


def test_a_remote_group_emits_its_results_event_once_when_it_settles(caliban_home, project):
    (project / "exp.json").write_text('{"C": [1, 2]}')
    xgroup = f"rev-{uuid.uuid4().hex[:6]}"
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=3) as emulator:
        emulator.hold(True)
        cli = make_cli(project, caliban_home, emulator)
        done = cli("cloud", "--nogpu", "--image_tag", IMAGE, "--xgroup", xgroup,
                   "--objective", "accuracy:max", "--experiment_config", "exp.json",
                   "trainer.train")  # fmt: skip
        assert done.returncode == 0, done.stderr
        rows = status(cli, xgroup)  # a round while the jobs run: nothing settles
        for row in rows:
            emulator.finish(row["remote_id"], "JOB_STATE_SUCCEEDED")
        settled = wait_for(lambda: {r["state"] for r in status(cli, xgroup)} == {"SUCCEEDED"})
        assert settled
        status(cli, xgroup)  # a round after the settle: no second event

        events = wait_for(lambda: results_events(cli, xgroup), timeout=60)
    assert len(events) == 1, events
    payload = events[0]["payload"]
    flow_run_id = rows[0]["flow_run_id"]
    assert (payload["xgroup"], payload["flow_run_id"], payload["state"]) == (
        xgroup, flow_run_id, "COMPLETED")  # fmt: skip
    assert payload["counts"] == {"SUCCEEDED": 2} and payload["objective"] == "accuracy:max"
    assert payload["best"] is None
    assert sorted(r["name"] for r in payload["rows"]) == sorted(r["name"] for r in rows)
    assert {r["platform"] for r in payload["rows"]} == {"vertex"}
    text = summary(cli, flow_run_id)
    assert "- objective `accuracy:max`: no job reported `accuracy` yet" in text, text
