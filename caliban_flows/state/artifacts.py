"""What a group's flow run shows in the Prefect UI: a table of its jobs and a summary.

Posted through Prefect's REST API (no `prefect` import) as keyed artifacts, so each update is a
new version of the same two artifacts: `caliban-<xgroup id>-jobs` and `...-summary`.
"""

from __future__ import annotations

import json
from collections import Counter

from caliban_flows.spec.vertex_job import xgroup_id

COLUMNS = ("name", "state", "attempt", "exit_code", "detail", "args", "console_url", "remote_id")
LINKS_SHOWN = 50  # links in the summary
TABLE_ROWS = 1_000  # rows in the jobs table: a 100,000-job table would not render; status has all


def keys(xgroup: str) -> tuple[str, str]:
    base = f"caliban-{xgroup_id(xgroup)}"
    return f"{base}-jobs", f"{base}-summary"


def table(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        cell = {c: row.get(c) for c in COLUMNS}
        cell["args"] = " ".join(row.get("args") or [])
        out.append(cell)
    return out


def summary(xgroup: str, rows: list[dict], *, image: str | None, command: list[str]) -> str:
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
    return "\n".join(lines) + "\n"


def _described(xgroup: str, rows: list[dict]) -> str:
    if len(rows) <= TABLE_ROWS:
        return f"jobs of xgroup {xgroup}"
    return (f"the first {TABLE_ROWS:,} of the {len(rows):,} jobs of xgroup {xgroup}; "
            f"all of them: caliban status --xgroup {xgroup} --format csv")  # fmt: skip


def publish(http, *, flow_run_id: str, xgroup: str, rows: list[dict], image: str | None,
            command: list[str]) -> None:  # fmt: skip
    """Post the table and the summary onto the run (httpx client on the Prefect API)."""
    jobs_key, summary_key = keys(xgroup)
    for key, kind, data, description in (
        (jobs_key, "table", json.dumps(table(rows[:TABLE_ROWS])), _described(xgroup, rows)),
        (summary_key, "markdown", summary(xgroup, rows, image=image, command=command),
         f"summary of xgroup {xgroup}"),
    ):  # fmt: skip
        body = {"key": key, "type": kind, "data": data, "description": description,
                "flow_run_id": flow_run_id}  # fmt: skip
        http.post("/artifacts/", json=body).raise_for_status()
