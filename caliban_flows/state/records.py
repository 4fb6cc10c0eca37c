"""A group's jobs as Prefect keeps them: compressed artifacts on the submission's flow run.

Prefect caps a flow run's parameters at 512 KiB, about 950 six-flag jobs, so the parameters
keep what is per submission (platform, placement, recipes) and the jobs go into artifacts of
type `caliban-jobs` linked to the run: columns of JSON, zlib-compressed, base64, in parts of
at most PART_JOBS jobs. A settled run's last word from the platform on each job goes the same
way into one `caliban-final` artifact. One paged artifact filter reads them for many runs.
A run that is retried (the UI's Retry, `caliban resubmit`) records its new attempts as one
more round of parts; its jobs are every round's, in order.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable, Sequence

from caliban_flows.state import prefect_api

JOBS_TYPE = "caliban-jobs"
FINAL_TYPE = "caliban-final"
PART_JOBS = 20_000  # jobs per artifact: a few hundred KB compressed
# restart_reason: why --max_restarts started this attempt (state/restarts.py); None at first.
JOB_FIELDS = ("experiment", "key", "attempt", "name", "args", "recipe", "restart_reason")
FINAL_FIELDS = (
    "key", "attempt", "remote_id", "state", "exit_code", "console_url", "detail", "infra",
    "restarts",
)  # fmt: skip


def pack(rows: Sequence[dict], fields: Sequence[str]) -> str:
    columns = {f: [row.get(f) for row in rows] for f in fields}
    raw = json.dumps(columns, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def unpack(text: str) -> list[dict]:
    columns = json.loads(zlib.decompress(base64.b64decode(text)))
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[n] for n in names))]


def jobs_artifacts(flow_run_id: str, jobs: Sequence[dict], round: int = 1) -> list[dict]:
    """The bodies to POST to /artifacts/ for a submission's jobs (`round` N: its N-th run)."""
    parts = max(1, -(-len(jobs) // PART_JOBS))
    return [
        {
            "type": JOBS_TYPE,
            "flow_run_id": flow_run_id,
            "description": f"caliban's record of this run's jobs (part {i + 1} of {parts})",
            "data": {
                "round": round,
                "part": i,
                "parts": parts,
                "jobs": pack(jobs[i * PART_JOBS : (i + 1) * PART_JOBS], JOB_FIELDS),
            },
        }
        for i in range(parts)
    ]


def final_artifact(flow_run_id: str, jobs: Iterable[dict]) -> dict:
    jobs = list(jobs)
    return {
        "type": FINAL_TYPE,
        "flow_run_id": flow_run_id,
        "description": "the platform's last word on every job of this settled run",
        "data": {"jobs": pack(jobs, FINAL_FIELDS), "count": len(jobs)},
    }


def write(http, bodies: Iterable[dict]) -> int:
    """POST each artifact; the bytes written, for the record."""
    written = 0
    for body in bodies:
        response = http.post("/artifacts/", json=body)
        response.raise_for_status()
        written += len(json.dumps(body["data"]))
    return written


def read(http, flow_run_ids: Sequence[str]) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """The recorded jobs and the final words of these runs: two maps from run id to rows."""
    jobs: dict[str, dict[tuple[int, int], list[dict]]] = {}
    final: dict[str, tuple[str, list[dict]]] = {}
    ids = list(flow_run_ids)
    for start in range(0, len(ids), 500):  # a bounded request body however many runs
        body = {
            "artifacts": {
                "flow_run_id": {"any_": ids[start : start + 500]},
                "type": {"any_": [JOBS_TYPE, FINAL_TYPE]},
            },
            "sort": "ID_DESC",
        }
        for artifact in prefect_api.paged(http, "/artifacts/filter", body):
            run_id, data = artifact.get("flow_run_id"), artifact.get("data")
            if not run_id or not isinstance(data, dict):
                continue
            if artifact.get("type") == JOBS_TYPE:
                part = (int(data.get("round", 1)), int(data["part"]))
                rows = unpack(data["jobs"])
                if part[0] > 1:  # a rerun in place: its jobs started then, not with the run
                    when = (artifact.get("created") or "").replace("T", " ")[:19]
                    rows = [{**row, "created": when} for row in rows]
                jobs.setdefault(run_id, {})[part] = rows
            elif artifact.get("type") == FINAL_TYPE:
                created = artifact.get("created") or ""
                if run_id not in final or created > final[run_id][0]:
                    final[run_id] = (created, unpack(data["jobs"]))
    ordered = {run: [r for _, part in sorted(ps.items()) for r in part] for run, ps in jobs.items()}
    return ordered, {run: rows for run, (_, rows) in final.items()}
