"""Every active group is seen: 1,200 of them, while some settle during the paging.

The runs are recorded straight through Prefect's REST API on the embedded server (as a group
flow's run looks: flow, name, tags, parameters, a RUNNING "Submitted" state), so the test
spends its time on the reading, not on submitting 1,200 groups.
"""

from __future__ import annotations

import httpx
import pytest

from caliban_flows.state import prefect_api
from caliban_flows.state.groups import FLOW_NAME, active_xgroups, read_group_runs
from tests.prefect_http import own_server

GROUPS = 1200


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with own_server(tmp_path_factory.mktemp("groups-home")) as url:
        with prefect_api.client(url) as http:  # retries the 503 a busy SQLite server gives
            flow = http.post("/flows/", json={"name": FLOW_NAME}).raise_for_status().json()
            for i in range(GROUPS):
                xgroup = f"g{i:04d}"
                http.post("/flow_runs/", json={
                    "flow_id": flow["id"], "name": xgroup,
                    "tags": ["caliban", f"xgroup:{xgroup}", "platform:vertex"],
                    "parameters": {"xgroup": xgroup, "platform": "vertex", "recipes": [],
                                   "submission": "-", "placement": {}},
                    "state": {"type": "RUNNING", "name": "Submitted"},
                }).raise_for_status()  # fmt: skip
        yield url


def test_all_1200_active_groups_are_seen(api):
    with prefect_api.client(api) as http:
        groups = active_xgroups(http)
    assert len(groups) == GROUPS and set(groups) == {f"g{i:04d}" for i in range(GROUPS)}


def test_groups_settling_while_we_page_do_not_hide_the_others(api):
    """After the first page, 100 of its runs settle (another round's work): offset paging
    would now skip 100 runs that are still active; keyset paging cannot."""
    settled: list[str] = []

    def settle_some(response: httpx.Response) -> None:
        if settled or not response.request.url.path.endswith("/flow_runs/filter"):
            return
        response.read()
        with prefect_api.client(api) as other:
            for run in response.json()[:100]:
                other.post(f"/flow_runs/{run['id']}/set_state", json={
                    "state": {"type": "COMPLETED"}, "force": True,
                }).raise_for_status()  # fmt: skip
                settled.append(run["name"])

    with prefect_api.client(api) as http:
        http.event_hooks["response"].append(settle_some)
        groups = active_xgroups(http)
    assert len(settled) == 100
    still_active = {f"g{i:04d}" for i in range(GROUPS)} - set(settled)
    assert still_active <= set(groups)


def test_one_group_read_in_full(api):
    with prefect_api.client(api) as http:
        [run] = read_group_runs(http, "g1199")
    assert (run.xgroup, run.state, run.state_name) == ("g1199", "RUNNING", "Submitted")
