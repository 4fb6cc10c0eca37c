"""A group's results in Prefect: a real 3-job sweep on the local engine, submitted with
`--objective accuracy:max`, against the embedded Prefect server; each job computes its
accuracy from its args and reports it by convention. Then, from one module-scoped sweep:
the run's `caliban-<id>-results` table artifact (REST), the summary naming the best job and
its outputs, the `caliban.group.results` event (REST `/events/filter`), `caliban results`
ranking by the recorded objective, and the results table rendered in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import httpx
import pytest

from devtools import browser, cdp
from tests.conftest import caliban_runner, wait_for
from tests.e2e.test_vertex_e2e import api_url
from tests.prefect_http import auth_headers, auth_string

# metrics.json in $CALIBAN_OUTPUT_DIR when caliban gives one, else a CALIBAN_METRICS line.
TRAIN = """\
import json, os, sys
args = sys.argv[1:]
c = float(args[args.index("--C") + 1])
metrics = {"accuracy": round(0.5 + c / 10, 3), "loss": round(0.5 - c / 10, 3)}
out = os.environ.get("CALIBAN_OUTPUT_DIR")
if out:
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f)
else:
    print("CALIBAN_METRICS " + json.dumps(metrics), flush=True)
print("trained with C", c, flush=True)
"""
ACCURACY = {1: 0.6, 3: 0.8, 2: 0.7}  # by C, in the sweep's order
RENDER_TIMEOUT = 45.0
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"  # screenshots, kept


def _latest_artifacts(http: httpx.Client, api: str, flow_run_id: str) -> dict[str, dict]:
    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC"}
    latest: dict[str, dict] = {}
    for artifact in http.post(f"{api}/artifacts/filter", json=body).json():
        latest.setdefault(artifact["key"], artifact)  # newest version of each key first
    return latest


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, caliban_home):
    root = tmp_path_factory.mktemp("results-in-prefect")
    project, home = root / "project", caliban_home
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN)
    (project / "requirements.txt").write_text("")
    (project / "exp.json").write_text(json.dumps({"C": list(ACCURACY)}))
    env = {**os.environ, "CALIBAN_HOME": str(home), "HOME": str(root / "user")}
    env.pop("PREFECT_API_URL", None)
    cli = caliban_runner(project, env)
    xgroup = f"res-{uuid.uuid4().hex[:8]}"
    done = cli("run", "--nogpu", "--xgroup", xgroup, "--experiment_config", "exp.json",
               "--objective", "accuracy:max", "trainer.train")  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    listed = cli("status", "--xgroup", xgroup, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    api = api_url(cli).rstrip("/")
    with httpx.Client(trust_env=False, timeout=30, headers=auth_headers(home)) as http:
        latest = _latest_artifacts(http, api, jobs[0]["flow_run_id"])
    return {"cli": cli, "xgroup": xgroup, "jobs": jobs, "api": api, "home": home,
            "artifacts": latest}  # fmt: skip


def _by_name(jobs: list[dict]) -> dict[str, float]:
    """Each job's expected accuracy, from its --C arg."""
    return {j["name"]: ACCURACY[int(j["args"][j["args"].index("--C") + 1])] for j in jobs}


def _artifact(sweep: dict, suffix: str) -> dict:
    pattern = rf"caliban-[0-9a-f]{{16}}-{suffix}"
    found = [a for k, a in sweep["artifacts"].items() if k and re.fullmatch(pattern, k)]
    assert len(found) == 1, sorted(sweep["artifacts"])
    return found[0]


def test_the_results_artifact_has_a_row_per_job_with_args_and_metrics(sweep):
    table = _artifact(sweep, "results")
    rows = json.loads(table["data"])
    expected = _by_name(sweep["jobs"])
    assert {r["name"]: r["accuracy"] for r in rows} == expected
    for row in rows:
        assert row["state"] == "SUCCEEDED" and row["attempt"] == 1 and row["metrics"] == "final"
        assert row["accuracy"] == ACCURACY[row["C"]]
        assert row["platform"] == "local" and row["remote_id"]
    assert list(rows[0])[:5] == ["name", "state", "attempt", "metrics", "C"]
    assert table["description"] == f"results (args and metrics) of xgroup {sweep['xgroup']}"


def test_the_summary_names_the_best_job_and_its_outputs(sweep):
    expected = _by_name(sweep["jobs"])
    winner = max(expected, key=expected.__getitem__)
    rows = json.loads(_artifact(sweep, "results")["data"])
    outputs = next(r["output"] for r in rows if r["name"] == winner)
    text = _artifact(sweep, "summary")["data"]
    assert f"best under `accuracy:max`: **{winner}** with accuracy **0.8** (`--C 3`)" in text
    assert f"its outputs: `{outputs}`" in text, text
    assert "3 of 3 jobs reported metrics" in text, text


def test_the_group_results_event_is_in_prefect_once(sweep):
    xgroup, api = sweep["xgroup"], sweep["api"]
    # A reconcile round after the run ended (status, results) must not announce it again.
    ranked = sweep["cli"]("results", "--xgroup", xgroup, "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    body = {"filter": {"event": {"name": ["caliban.group.results"]},
                       "any_resource": {"id": [f"caliban.xgroup.{xgroup}"]}}}  # fmt: skip
    with httpx.Client(trust_env=False, timeout=30, headers=auth_headers(sweep["home"])) as http:
        # Prefect stores events asynchronously: wait for it to be there.
        events = wait_for(lambda: http.post(f"{api}/events/filter", json=body).json()["events"],
                          timeout=60)  # fmt: skip
    assert len(events) == 1, events
    event = events[0]
    flow_run_id = sweep["jobs"][0]["flow_run_id"]
    assert event["resource"]["prefect.resource.name"] == xgroup
    assert {"prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": xgroup} in event["related"]  # fmt: skip
    payload = event["payload"]
    expected = _by_name(sweep["jobs"])
    winner = max(expected, key=expected.__getitem__)
    assert payload["xgroup"] == xgroup and payload["flow_run_id"] == flow_run_id
    assert payload["state"] == "COMPLETED" and payload["counts"] == {"SUCCEEDED": 3}
    assert payload["objective"] == "accuracy:max"
    best = payload["best"]
    assert (best["name"], best["args"], best["metric"], best["value"]) == (
        winner, ["--C", "3"], "accuracy", 0.8)  # fmt: skip
    assert best["outputs"] and best["outputs_url"] is None  # a host folder: shown as a path
    assert {r["name"]: r["accuracy"] for r in payload["rows"]} == expected
    assert payload["truncated"] == 0 and payload["error"] is None


def test_caliban_results_ranks_by_the_recorded_objective(sweep):
    ranked = sweep["cli"]("results", "--xgroup", sweep["xgroup"], "--format", "json")
    assert ranked.returncode == 0, ranked.stderr
    rows = json.loads(ranked.stdout)
    assert [r["accuracy"] for r in rows] == [0.8, 0.7, 0.6]
    assert f"best under accuracy:max: {rows[0]['name']} (accuracy 0.8)" in ranked.stderr


def test_the_prefect_ui_shows_the_results_table(sweep):
    chromium_ready = browser.ensure_chromium()
    assert chromium_ready
    api, xgroup = sweep["api"], sweep["xgroup"]
    ui = api.removesuffix("/api")
    login = cdp.prefect_login(auth_string(sweep["home"]) or "")
    table = _artifact(sweep, "results")
    flow_run_id = sweep["jobs"][0]["flow_run_id"]
    expected = _by_name(sweep["jobs"])

    # The group's run, Artifacts tab: the results table is there, with its description.
    url = f"{ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"
    described = f"results (args and metrics) of xgroup {xgroup}"
    dom = browser.dump_dom_until(url, [table["key"], described], within="main",
                                 timeout=RENDER_TIMEOUT, local_storage=login)  # fmt: skip
    text = browser.visible_text(dom, within="main")
    assert table["key"] in text and described in text, f"{url}\n{text[:2000]}"

    # The artifact itself, rendered as a table: one row per job with its C and accuracy.
    url = f"{ui}/v2/artifacts/artifact/{table['id']}"
    OUTPUT.mkdir(exist_ok=True)
    dom = browser.dump_dom_until(url, [*expected, "accuracy"], within="main",
                                 screenshot=OUTPUT / "results-table.png",
                                 timeout=RENDER_TIMEOUT, local_storage=login)  # fmt: skip
    rows = browser.table_rows(dom, within="main")
    assert rows, f"{url}\n{browser.visible_text(dom, within='main')[:2000]}"
    header = rows[0]
    assert header[:4] == ["name", "state", "attempt", "metrics"], header
    name, c, accuracy = header.index("name"), header.index("C"), header.index("accuracy")
    got = {row[name]: (row[c], row[accuracy]) for row in rows[1:]}
    want = {n: (str(int((a - 0.5) * 10 + 0.5)), str(a)) for n, a in expected.items()}
    assert got == want, rows
