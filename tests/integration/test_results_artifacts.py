"""A run's results as its Prefect artifacts and its `caliban.group.results` event show them,
read from real metrics files in a host output folder: the rows, the best job under the run's
objective, the summary's lines, and a folder that cannot be read turned into one line."""

from __future__ import annotations

import json
from pathlib import Path

from caliban_flows.spec.objective import Objective
from caliban_flows.spec.outputs import job_folder
from caliban_flows.state import artifacts
from caliban_flows.state.groups import GroupRun
from caliban_flows.state.reconcile import Platforms
from caliban_flows.state.result_events import EVENT_ROWS, results_event
from caliban_flows.state.run_results import RunResults, outputs_url, read_results

XGROUP = "sweep"
RUN_ID = "0f7e1c1e-0000-4000-8000-000000000001"


def _run(root: Path, objective: str | None) -> GroupRun:
    placement: dict = {"outputs": {"kind": "local", "root": str(root)}}
    if objective:
        placement["objective"] = objective
    return GroupRun(XGROUP, RUN_ID, "local", "2026-01-01T00:00:00Z", "COMPLETED", "", [], [],
                    placement=placement)  # fmt: skip


def _row(n: int, c: float, state: str = "SUCCEEDED", attempt: int = 1) -> dict:
    return {"xgroup": XGROUP, "name": f"job_{n}", "key": f"{n:040d}", "attempt": attempt,
            "args": ["--C", str(c)], "platform": "local", "state": state, "remote_id": None,
            "exit_code": 0, "flow_run_id": RUN_ID}  # fmt: skip


def _write(root: Path, row: dict, metrics: dict | None) -> Path:
    folder = root / job_folder(XGROUP, row["name"], row["key"], row["attempt"])
    folder.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_rows_and_the_best_job_under_the_recorded_objective(tmp_path):
    rows = [_row(1, 0.1), _row(2, 1.0), _row(3, 10.0, "FAILED"), _row(2, 1.0, attempt=2)]
    for row, loss in zip(rows, (0.5, 0.9, None, 0.2)):
        _write(tmp_path, row, None if loss is None else {"loss": loss, "epoch": 3})
    results = read_results(_run(tmp_path, "loss:min"), rows, Platforms())
    assert results.error is None and results.objective == Objective("loss", False)
    by_name = {r["name"]: r for r in results.rows}
    assert sorted(by_name) == ["job_1", "job_2", "job_3"]  # the latest attempt of each
    assert by_name["job_2"]["attempt"] == 2 and by_name["job_2"]["loss"] == 0.2
    assert by_name["job_3"]["loss"] is None and by_name["job_3"]["metrics"] == ""
    assert by_name["job_1"]["C"] == 0.1 and by_name["job_1"]["metrics"] == "final"
    json.dumps(results.rows)  # cells as JSON takes them: no numpy scalars, no NA
    assert results.reported == 2
    best = results.best
    assert best is not None
    assert (best["name"], best["args"], best["value"]) == ("job_2", ["--C", "1.0"], 0.2)
    assert best["outputs"] == str(tmp_path / job_folder(XGROUP, "job_2", f"{2:040d}", 2))
    lines = artifacts.results_lines(XGROUP, results)
    assert lines[1] == "- best under `loss:min`: **job_2** with loss **0.2** (`--C 1.0`)"
    assert lines[2] == f"- its outputs: `{best['outputs']}`"


def test_a_folder_that_cannot_be_read_is_one_line_not_an_exception(tmp_path):
    row = _row(1, 0.1)
    (_write(tmp_path, row, None) / "metrics.json").mkdir()  # a folder where a file should be
    results = read_results(_run(tmp_path, "accuracy"), [row], Platforms())
    assert results.rows == [] and results.error and "cannot read" in results.error
    text = artifacts.summary(XGROUP, [row], image="img", command=["python"], results=results)
    assert f"- results not read: {results.error}" in text


def test_without_an_objective_the_summary_says_how_to_set_one(tmp_path):
    row = _row(1, 0.1)
    _write(tmp_path, row, {"accuracy": 0.9})
    results = read_results(_run(tmp_path, None), [row], Platforms())
    assert results.best is None and results.objective is None
    text = artifacts.summary(XGROUP, [row], image="img", command=["python"], results=results)
    assert "## Results" in text and "1 of 1 jobs reported metrics" in text
    assert "submit with `--objective METRIC:max`" in text
    assert f"`caliban results --xgroup {XGROUP} --objective METRIC:max`" in text


def test_a_bucket_folder_links_to_the_cloud_console():
    uri = "gs://my-bucket/caliban/sweep/job_1-00000000/1"
    assert outputs_url(uri) == (
        "https://console.cloud.google.com/storage/browser/my-bucket/caliban/sweep/job_1-00000000/1"
    )
    assert outputs_url("/home/me/outputs/x") is None and outputs_url(None) is None
    best = {"name": "job_1", "args": [], "metric": "acc", "value": 1, "outputs": uri,
            "outputs_url": outputs_url(uri)}  # fmt: skip
    lines = artifacts.results_lines(XGROUP, RunResults([{"metrics": "final"}], Objective("acc"),
                                                       best))  # fmt: skip
    assert lines[-1] == f"- its outputs: [{uri}]({outputs_url(uri)})"


def test_the_event_caps_its_rows_and_names_the_flow_run(tmp_path):
    rows = [_row(n, n) for n in range(EVENT_ROWS + 5)]
    results = RunResults([{"name": r["name"]} for r in rows], Objective("acc"))
    event = results_event(_run(tmp_path, "acc"), "FAILED", rows, results)
    assert event["event"] == "caliban.group.results"
    assert event["resource"]["prefect.resource.id"] == f"caliban.xgroup.{XGROUP}"
    assert event["related"][0]["prefect.resource.id"] == f"prefect.flow-run.{RUN_ID}"
    payload = event["payload"]
    assert len(payload["rows"]) == EVENT_ROWS and payload["truncated"] == 5
    assert payload["counts"] == {"SUCCEEDED": EVENT_ROWS + 5} and payload["state"] == "FAILED"
    assert payload["objective"] == "acc:max" and payload["best"] is None


def test_metrics_are_final_only_for_jobs_known_to_have_ended(tmp_path):
    rows = [_row(1, 0.1, "RUNNING"), _row(2, 0.2, "UNKNOWN"), _row(3, 0.3, "STOPPED")]
    for row in rows:
        _write(tmp_path, row, {"loss": 0.5})
    marked = {r["name"]: r["metrics"] for r in read_results(_run(tmp_path, None), rows,
                                                            Platforms()).rows}  # fmt: skip
    # UNKNOWN: its platform did not answer, so it may still be running and writing
    assert marked == {"job_1": "latest", "job_2": "latest", "job_3": "final"}


def test_an_ended_jobs_metrics_are_read_once_per_process(tmp_path):
    """The first `caliban results` after a group settles publishes the run's artifacts, then
    prints the table: one read of an ended job's metrics serves both. A running job's are
    read every time, and so are an ended job's that showed none yet."""
    rows = [_row(1, 0.1), _row(2, 0.2, "RUNNING"), _row(3, 0.3, "FAILED")]
    for row, loss in zip(rows, (0.5, 0.6, None)):
        _write(tmp_path, row, None if loss is None else {"loss": loss})
    run = _run(tmp_path, None)
    first = {r["name"]: r.get("loss") for r in read_results(run, rows, Platforms()).rows}
    assert first == {"job_1": 0.5, "job_2": 0.6, "job_3": None}
    for row, loss in zip(rows, (0.9, 0.7, 0.8)):  # what a second read would find
        _write(tmp_path, row, {"loss": loss})
    again = {r["name"]: r.get("loss") for r in read_results(run, rows, Platforms()).rows}
    assert again == {"job_1": 0.5, "job_2": 0.7, "job_3": 0.8}
