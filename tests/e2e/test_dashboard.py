"""The Prefect UI shows a caliban group: a real sweep, the real UI, rendered in headless Chromium.

`caliban run` of a 3-job sweep (one job exits 3) against the embedded Prefect server, then the
pages a user clicks through, read from the rendered DOM: the group's flow run with one task
run per job and its state, the failed job's task run with its exit code, the run's Artifacts
tab, the jobs table and the summary. Screenshots of the flow run and of the jobs table are
kept in test-output/ at the repository root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from devtools import browser, cdp
from tests.conftest import BIN, wait_for
from tests.prefect_http import auth_headers, auth_string

REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"
TRAIN = """\
import sys
args = sys.argv[1:]
print("training with", args, flush=True)
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
# How a job's outcome shows: caliban status / the jobs table, and the task run's Prefect state.
UI_STATE = {"SUCCEEDED": "Completed", "FAILED": "Failed"}
STATE_NAMES = {"Completed", "Failed", "Crashed", "Cancelled", "Running", "Pending", "Scheduled"}
EXCERPT = 2000
RENDER_TIMEOUT = 45.0  # per page: renders again until the expected text shows


@pytest.fixture(scope="module")
def chromium() -> str:
    return browser.ensure_chromium()


def caliban(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "caliban"), *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def shown(what: str, url: str, dom: str) -> str:
    """An assertion message: what was expected, where, and what the page did show."""
    text = browser.visible_text(dom, within="main") or browser.visible_text(dom)
    return f"{what}\nURL: {url}\n--- visible text (first {EXCERPT} chars) ---\n{text[:EXCERPT]}"


def state_after(lines: list[str], name: str) -> str | None:
    """The state badge shown after the line that is exactly `name` (a task run card)."""
    if name not in lines:
        return None
    return next((ln for ln in lines[lines.index(name) + 1 :] if ln in STATE_NAMES), None)


class Pages:
    """Renders pages and records how long each took."""

    def __init__(self, login: dict[str, str]) -> None:
        self.timings: list[tuple[str, float]] = []
        self.login = login  # the UI asks for the home's secret: logged in as its login form does

    def render(self, label: str, url: str, expect: list[str], screenshot: Path | None = None):
        start = time.monotonic()
        dom = browser.dump_dom_until(url, expect, within="main", screenshot=screenshot,
                                     timeout=RENDER_TIMEOUT, local_storage=self.login)  # fmt: skip
        self.timings.append((label, time.monotonic() - start))
        return dom, browser.visible_text(dom, within="main")


def test_the_prefect_ui_shows_the_group_its_jobs_and_artifacts(chromium, caliban_home, tmp_path):
    started = time.monotonic()
    project = tmp_path / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN)
    (project / "requirements.txt").write_text("six\n")
    (project / "exp.json").write_text('{"exit": [0, 3, 0]}')
    env = {**os.environ, "CALIBAN_HOME": str(caliban_home), "HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    xgroup = f"ui-{uuid.uuid4().hex[:8]}"

    done = caliban(project, env, "run", "--nogpu", "--xgroup", xgroup,
                   "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    output = f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-2000:]}"
    assert done.returncode == 1 and "exit code 3; args: --exit 3" in done.stdout, output
    listed = caliban(project, env, "status", "--xgroup", xgroup, "--format", "json")
    assert listed.returncode == 0, f"{listed.stderr}\ncaliban run's {output}"
    jobs = json.loads(listed.stdout)
    assert [j["state"] for j in jobs] == ["SUCCEEDED", "FAILED", "SUCCEEDED"], jobs
    (flow_run_id,) = {j["flow_run_id"] for j in jobs}
    failed = next(j for j in jobs if j["state"] == "FAILED")
    ran = time.monotonic() - started

    where = subprocess.run(
        [str(BIN / "python"), "-c",
         "from caliban_flows.server import backend; print(backend.api_url())"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    api = where.stdout.strip().rstrip("/")
    ui = api.removesuffix("/api")

    with httpx.Client(trust_env=False, timeout=30, headers=auth_headers(caliban_home)) as http:
        # The UI learns where the API is from /ui-settings; anything else and every page
        # shows "Can't connect to Server API".
        settings = http.get(f"{ui}/ui-settings").json()
        assert settings["api_url"].rstrip("/") == api, (
            f"the UI at {ui} sends the browser to the API at {settings['api_url']}, not at "
            f'{api}: every page will say "Can\'t connect to Server API" (the server needs '
            f"PREFECT_UI_API_URL={api}); /ui-settings: {settings}"
        )

        # Task-run records are written from events, after the flow run ends: wait for them.
        def job_task_runs():
            body = {"flow_runs": {"id": {"any_": [flow_run_id]}},
                    "task_runs": {"name": {"any_": [j["name"] for j in jobs]}}}  # fmt: skip
            runs = http.post(f"{api}/task_runs/filter", json=body).json()
            final = [
                r for r in runs if r["state"] and r["state"]["type"] in ("COMPLETED", "FAILED")
            ]
            return {r["name"]: r for r in final} if len(final) == len(jobs) else None

        task_runs = wait_for(job_task_runs, timeout=60)
        body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "CREATED_DESC"}
        latest: dict[str, dict] = {}
        for artifact in http.post(f"{api}/artifacts/filter", json=body).json():
            latest.setdefault(artifact["key"], artifact)  # newest version of each key first
    table = next(a for k, a in latest.items() if re.fullmatch(r"caliban-[0-9a-f]{16}-jobs", k))
    summary = next(a for k, a in latest.items() if re.fullmatch(r"caliban-[0-9a-f]{16}-summary", k))

    OUTPUT.mkdir(exist_ok=True)
    flow_run_png = OUTPUT / "dashboard-flow-run.png"
    table_png = OUTPUT / "dashboard-jobs-table.png"
    pages = Pages(cdp.prefect_login(auth_string(caliban_home) or ""))
    names = [j["name"] for j in jobs]

    # The UI's address opens the (v2) UI's dashboard, talking to this server's API. (Its
    # counts lag: a run that just ended can take up to a minute to be counted there.)
    url = f"{ui}/"
    dom, text = pages.render("dashboard", url, ["Dashboard", "Flow Runs", "Task Runs"])
    assert "Can't connect" not in text, shown("a UI that reaches its API", url, dom)
    assert {"Dashboard", "Flow Runs", "Task Runs"} <= set(text.splitlines()), shown(
        "the dashboard", url, dom
    )

    # Runs, filtered by the group's tag: the one flow run, named after the xgroup, Failed.
    url = f"{ui}/v2/runs?tags=xgroup:{xgroup}"
    dom, text = pages.render("runs of the xgroup tag", url, [xgroup, "1 Flow run", "Failed"])
    lines = text.splitlines()
    assert "1 Flow run" in lines, shown("exactly one flow run", url, dom)
    assert state_after(lines, xgroup) == "Failed", shown(f"run {xgroup} shown as Failed", url, dom)

    # The run -> Task Runs: one task run per job, named after the job, with its state.
    url = f"{ui}/v2/runs/flow-run/{flow_run_id}?tab=TaskRuns"
    shows = [xgroup, f"xgroup:{xgroup}", "Task Runs", *names, *{UI_STATE[j["state"]] for j in jobs}]
    dom, text = pages.render("flow run, Task Runs tab", url, shows, flow_run_png)
    lines = text.splitlines()
    assert xgroup in lines and f"xgroup:{xgroup}" in text, shown("the run's name and tag", url, dom)
    assert "Task Runs" in lines, shown("the Task Runs tab", url, dom)
    for job in jobs:
        expected = UI_STATE[job["state"]]
        assert state_after(lines, job["name"]) == expected, shown(
            f"task run {job['name']} shown as {expected}", url, dom
        )

    # The failed job's task run: its state and the message with the exit code and args.
    url = f"{ui}/v2/runs/task-run/{task_runs[failed['name']]['id']}"
    message = f"exit code 3; args: {' '.join(failed['args'])}"
    dom, text = pages.render("failed job's task run", url, [failed["name"], message, "Failed"])
    assert f"{failed['name']}Failed" in text.replace("\n", ""), shown("Failed badge", url, dom)
    assert message in text, shown(f"the state message {message!r}", url, dom)

    # The run's Artifacts tab lists the jobs table and the summary.
    url = f"{ui}/v2/runs/flow-run/{flow_run_id}?tab=Artifacts"
    keys = [table["key"], summary["key"]]
    shows = [*keys, "TABLE", "MARKDOWN", f"jobs of xgroup {xgroup}"]
    dom, text = pages.render("flow run, Artifacts tab", url, shows)
    for key, kind in ((table["key"], "TABLE"), (summary["key"], "MARKDOWN")):
        assert key in text and kind in text, shown(f"artifact card {key} ({kind})", url, dom)
    assert f"jobs of xgroup {xgroup}" in text, shown("the table's description", url, dom)

    # The jobs table, rendered as a table: one row per job with its state and exit code.
    url = f"{ui}/v2/artifacts/artifact/{table['id']}"
    shows = [*names, "FAILED", "exit_code"]
    dom, text = pages.render("jobs table artifact", url, shows, table_png)
    rows = browser.table_rows(dom, within="main")
    assert rows and rows[0][:4] == ["name", "state", "attempt", "exit_code"], shown(
        "the table's header row", url, dom
    )
    got = [row[:4] for row in rows[1:]]
    want = [[j["name"], j["state"], "1", str(j["exit_code"])] for j in jobs]
    assert got == want, shown(f"rows {want}, got {got}", url, dom)

    # The summary, rendered from markdown: its heading and the counts.
    url = f"{ui}/v2/artifacts/artifact/{summary['id']}"
    shows = [f"xgroup {xgroup}", "1 failed · 2 succeeded"]
    dom, text = pages.render("summary artifact", url, shows)
    assert f"xgroup {xgroup}" in browser.element_texts(dom, "h1"), shown("the h1", url, dom)
    assert "1 failed · 2 succeeded" in text, shown("the rendered counts", url, dom)

    print(f"\nscreenshot of the flow run: {flow_run_png}")
    print(f"screenshot of the jobs table: {table_png}")
    print(f"caliban run + status: {ran:.1f} s; total {time.monotonic() - started:.1f} s")
    for label, seconds in pages.timings:
        print(f"  {label}: {seconds:.1f} s")
