"""What a group's flow run shows in the Prefect UI: a table of its jobs, a table of their
results (args and metrics) and a summary naming the best job.

Posted through Prefect's REST API (no `prefect` import) as keyed artifacts, so each update is a
new version of the same artifacts: `caliban-<xgroup id>-jobs`, `...-results` and `...-summary`.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING

from caliban_flows.spec.vertex_job import xgroup_id

if TYPE_CHECKING:
    from caliban_flows.state.run_results import RunResults

COLUMNS = ("name", "state", "attempt", "exit_code", "detail", "args", "console_url", "remote_id")
LINKS_SHOWN = 50  # links in the summary
NO_OBJECTIVE = (
    "- no objective, so no best job: submit with `--objective METRIC:max` (or `:min`) to "
    "have it named here; `caliban results --xgroup {xgroup} --objective METRIC:max` ranks it now"
)
RESULTS_SHOWN = "results (args and metrics)"
TABLE_ROWS = 1_000  # rows in the jobs table: a 100,000-job table would not render; status has all


def keys(xgroup: str) -> tuple[str, str]:
    base = f"caliban-{xgroup_id(xgroup)}"
    return f"{base}-jobs", f"{base}-summary"


def results_key(xgroup: str) -> str:
    return f"caliban-{xgroup_id(xgroup)}-results"


def table(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        cell = {c: row.get(c) for c in COLUMNS}
        cell["args"] = " ".join(row.get("args") or [])
        out.append(cell)
    return out


def summary(xgroup: str, rows: list[dict], *, image: str | None, command: list[str],
            results: RunResults | None = None) -> str:  # fmt: skip
    counts = Counter(r["state"] for r in rows)
    lines = [
        f"# xgroup `{xgroup}`",
        "",
        " · ".join(f"**{n}** {state.lower()}" for state, n in sorted(counts.items())),
        "",
        f"- image: `{image or '-'}`",
        f"- command: `{' '.join(command) or '-'}`",
        f"- jobs: {len(rows)}",
    ]
    linked = [r for r in rows if r.get("console_url")][:LINKS_SHOWN]
    if linked:
        lines += ["", "| job | state | console and logs |", "|---|---|---|"]
        for r in linked:
            lines.append(f"| {r['name']} | {r['state']} | [open]({r['console_url']}) |")
    if results is not None:
        lines += ["", "## Results", "", *results_lines(xgroup, results)]
    return "\n".join(lines) + "\n"


def results_lines(xgroup: str, results: RunResults) -> list[str]:
    """The summary's word on the results: the best job and where its outputs are, or why
    there is none."""
    if results.error is not None:
        return [f"- results not read: {results.error}"]
    listed = f"`caliban results --xgroup {xgroup}`"
    said = [f"- {results.reported} of {len(results.rows)} jobs reported metrics "
            f"(table: `{results_key(xgroup)}`; all of them: {listed})"]  # fmt: skip
    goal = results.objective
    if goal is None:
        return [*said, NO_OBJECTIVE.format(xgroup=xgroup)]
    top = results.best
    if top is None:
        return [*said, f"- objective `{goal}`: no job reported `{goal.metric}` yet"]
    outputs = top["outputs"]
    shown = f"[{outputs}]({top['outputs_url']})" if top["outputs_url"] else f"`{outputs}`"
    args = " ".join(top["args"])
    return [
        *said,
        f"- best under `{goal}`: **{top['name']}** with {goal.metric} **{top['value']}**"
        + (f" (`{args}`)" if args else ""),
        f"- its outputs: {shown if outputs else 'none recorded (no output folder)'}",
    ]


def _described(xgroup: str, count: int, what: str = "jobs", command: str = "status") -> str:
    if count <= TABLE_ROWS:
        return f"{what} of xgroup {xgroup}"
    return (f"{what} of the first {TABLE_ROWS:,} of the {count:,} jobs of xgroup {xgroup}; "
            f"all of them: caliban {command} --xgroup {xgroup} --format csv")  # fmt: skip


def publish(http, *, flow_run_id: str, xgroup: str, rows: list[dict], image: str | None,
            command: list[str], results: RunResults | None = None) -> None:  # fmt: skip
    """Post the tables and the summary onto the run (httpx client on the Prefect API); the
    results table only when the results were read (the summary says why not)."""
    jobs_key, summary_key = keys(xgroup)
    posted = [
        (jobs_key, "table", json.dumps(table(rows[:TABLE_ROWS])), _described(xgroup, len(rows))),
        (summary_key, "markdown", summary(xgroup, rows, image=image, command=command,
                                          results=results), f"summary of xgroup {xgroup}"),
    ]  # fmt: skip
    if results is not None and results.error is None:
        shown = json.dumps(results.rows[:TABLE_ROWS])
        told = _described(xgroup, len(results.rows), RESULTS_SHOWN, "results")
        posted.insert(1, (results_key(xgroup), "table", shown, told))
    for key, kind, data, description in posted:
        body = {"key": key, "type": kind, "data": data, "description": description,
                "flow_run_id": flow_run_id}  # fmt: skip
        http.post("/artifacts/", json=body).raise_for_status()
