"""Caliban 0.4.2's groups, recorded in Prefect the way caliban records its own.

Each Caliban group becomes one group flow run per platform (and, for local jobs, per GPU mode
and `docker run` args), settled, with its jobs and their last known state recorded as
artifacts (state.records): `caliban status` shows them, `stop` and `resubmit` find them.

- Local jobs: `caliban resubmit` reruns them with the args they ran with, their image rebuilt
  from Caliban's project folder's current code (as for caliban's own groups); with the folder
  gone, from the image Caliban built. Caliban recorded a local job only once its container had
  ended, so none is running (and none can be stopped).
- AI Platform (CAIP) and GKE jobs: shown with the status Caliban last saw. They are recorded
  as an older caliban's runs, which `resubmit` refuses (Caliban's job specs are not Vertex AI
  or caliban's Kubernetes jobs). A CAIP job does not exist on Vertex AI, and Caliban's GKE Jobs
  carry none of caliban's labels: one still running is UNKNOWN here, with a note saying how
  to stop it.

Every run has a deterministic Prefect idempotency key (the group, its platform and the
Caliban job ids it holds): importing again creates nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from caliban_flows.spec.jobspec import experiment_key
from caliban_flows.state.caliban_history import TERMINAL, CalibanGroup, CalibanJob, by_platform

IMPORTED_TAG = "caliban:imported"
SUBMISSION = "imported from Caliban 0.4.2"
PLATFORMS = {"LOCAL": "local", "CAIP": "vertex", "GKE": "kubernetes"}
NOTES = {
    "CAIP": "an AI Platform Training job of Caliban 0.4.2 (last seen {status} on {created}): "
    "Vertex AI does not know it, so caliban cannot follow or stop it; "
    "use `gcloud ai-platform jobs describe|cancel {name}`",
    "GKE": "a GKE Job of Caliban 0.4.2 (last seen {status} on {created}) without caliban's "
    "labels, so caliban cannot follow or stop it; use `kubectl delete job {name}` on "
    "cluster {cluster}",
}


@dataclass(frozen=True)
class ImportRun:
    """One flow run to create: its idempotency key, body parts, jobs and their last word."""

    xgroup: str
    user: str
    platform: str
    key: str
    parameters: dict
    jobs: list[dict]  # the records.JOB_FIELDS of each job (version-2 runs; else in parameters)
    final: list[dict]  # records.FINAL_FIELDS of each job
    state: str  # COMPLETED or FAILED
    message: str
    notes: list[str]  # one line per job caliban cannot follow

    @property
    def tags(self) -> list[str]:
        from caliban_flows.state.users import user_tag

        return ["caliban", f"xgroup:{self.xgroup}", f"platform:{self.platform}",
                user_tag(self.user), IMPORTED_TAG]  # fmt: skip


def import_runs(group: CalibanGroup) -> list[ImportRun]:
    """The flow runs that record one Caliban group."""
    index = {e: i for i, e in enumerate(dict.fromkeys(j.experiment_id for j in group.jobs), 1)}
    runs = []
    for caliban_platform, jobs in by_platform(group.jobs).items():
        if caliban_platform == "LOCAL":
            placements: dict[tuple, list[CalibanJob]] = {}
            for job in jobs:
                placements.setdefault((job.gpu, job.run_args), []).append(job)
            runs += [_run(group, "LOCAL", mine, index) for mine in placements.values()]
        elif caliban_platform in PLATFORMS:
            runs.append(_run(group, caliban_platform, jobs, index))
    return runs


def _run(group: CalibanGroup, caliban_platform: str, jobs: list[CalibanJob],
         index: dict[int, int]) -> ImportRun:  # fmt: skip
    platform = PLATFORMS[caliban_platform]
    recipes: dict[tuple, int] = {}
    attempts: dict[int, int] = {}
    records, final, notes = [], [], []
    for job in jobs:
        build = json.dumps(_rebuildable(job.build) if caliban_platform == "LOCAL" else None)
        recipe = recipes.setdefault((job.image, job.command, build), len(recipes))
        attempts[job.experiment_id] = attempts.get(job.experiment_id, 0) + 1
        where = f"caliban-0.4.2:{caliban_platform}"
        key = experiment_key(group.name, where, (), job.experiment_id, group.user)
        name = f"caliban_{index[job.experiment_id]}"
        records.append({
            "experiment": experiment_key(group.name, "caliban-0.4.2", (), job.experiment_id,
                                         group.user),
            "key": key, "attempt": attempts[job.experiment_id], "name": name,
            "args": list(job.args), "recipe": recipe, "restart_reason": None,
        })  # fmt: skip
        note = _note(job)
        if note:
            notes.append(f"job {name} (Caliban job {job.job_id}): {note}")
        final.append({
            "key": key, "attempt": attempts[job.experiment_id], "remote_id": job.remote_id or "",
            "state": job.status if job.status in TERMINAL else "UNKNOWN",
            "exit_code": job.exit_code, "console_url": None,
            "detail": note or f"Caliban 0.4.2 job {job.job_id}, recorded {job.created}",
            "infra": None, "restarts": [],
        })  # fmt: skip
    latest = {(r["key"]): r for r in final}.values()  # the newest attempt of each experiment
    failed = sum(1 for r in latest if r["state"] != "SUCCEEDED")
    counts = f"{failed} of {len(latest)} jobs failed" if failed else f"{len(latest)} jobs succeeded"
    the_recipes = [
        {"command": list(command), "image": image, "build": json.loads(build),
         "job_name": "caliban", "labels": {}, "gpu": jobs[0].gpu, "tpu": False}
        for image, command, build in recipes
    ]  # fmt: skip
    folders = {r["build"]["root"] for r in the_recipes if r["build"]}
    gone = {j.build["root"] for j in jobs if j.build} - folders
    if caliban_platform == "LOCAL":
        notes += [f"Caliban's project folder {root} is gone: `caliban resubmit` reruns these "
                  "jobs from the image Caliban built, if this Docker engine still has it"
                  for root in sorted(gone)]  # fmt: skip
    if caliban_platform == "LOCAL":
        parameters = {
            "xgroup": group.name, "platform": platform, "recipes": the_recipes,
            "submission": SUBMISSION, "parallel": 1, "wait": False, "limit": None,
            "placement": {"gpu": jobs[0].gpu, "run_args": list(jobs[0].run_args)},
        }  # fmt: skip
        kept = records
    else:  # an older caliban's run: its jobs in the parameters, and not resubmitted
        first = the_recipes[0]
        parameters = {
            "xgroup": group.name, "platform": platform, "image": first["image"],
            "command": first["command"], "build": None,
            "jobs": [{k: r[k] for k in ("key", "attempt", "name", "args")} for r in records],
        }  # fmt: skip
        kept = []
    identity = json.dumps(
        [group.user, group.name, group.created, caliban_platform,
         parameters.get("placement"), [j.job_id for j in jobs]]
    )  # fmt: skip
    return ImportRun(
        xgroup=group.name,
        user=group.user,
        platform=platform,
        key="caliban-0.4.2-import:" + hashlib.sha256(identity.encode()).hexdigest()[:32],
        parameters=parameters,
        jobs=kept,
        final=final,
        state="FAILED" if failed else "COMPLETED",
        message=f"{counts} ({SUBMISSION}, {caliban_platform})",
        notes=notes,
    )


def _rebuildable(build: dict | None) -> dict | None:
    """How `caliban resubmit` rebuilds a local job's image, as it does for caliban's own
    groups (and Caliban's resubmit did): from the project folder Caliban built, if it is there."""
    return build if build and os.path.isdir(build["root"]) else None


def _note(job: CalibanJob) -> str | None:
    """Why caliban cannot follow a job Caliban last saw running; None for the others."""
    if job.status in TERMINAL or job.platform not in NOTES:
        return None
    return NOTES[job.platform].format(
        status=job.status, created=job.created, name=job.remote_id or "?",
        cluster=job.where.get("cluster_name") or "?",
    )  # fmt: skip


def write_run(http, flow_id: str, run: ImportRun) -> bool:
    """Create the run (unless its idempotency key already made it) and record its jobs;
    True when it was new. A run left half-written by an interrupted import is completed."""
    from caliban_flows.state import prefect_api, records

    body = {
        "flow_id": flow_id,
        "name": run.xgroup,
        "parameters": run.parameters,
        "tags": run.tags,
        "idempotency_key": run.key,
        # Entered RUNNING once, as a run that ran: `caliban resubmit` runs it again in place.
        "state": {"type": "RUNNING", "message": SUBMISSION},
    }
    response = http.post("/flow_runs/", json=body)
    response.raise_for_status()
    created = response.status_code == 201
    found = response.json()
    if not created and (found.get("state") or {}).get("type") == run.state:
        return False
    flow_run_id = found["id"]
    jobs, final = records.read(http, [flow_run_id])
    if run.jobs and flow_run_id not in jobs:
        records.write(http, records.jobs_artifacts(flow_run_id, run.jobs))
    if flow_run_id not in final:
        records.write(http, [records.final_artifact(flow_run_id, run.final)])
    prefect_api.set_state(http, flow_run_id, {"type": run.state, "message": run.message})
    return created


def group_flow_id(http) -> str:
    """The id of the group flow in Prefect (made if this server never ran a group)."""
    from caliban_flows.state.groups import FLOW_NAME

    response = http.post("/flows/", json={"name": FLOW_NAME})
    response.raise_for_status()
    return str(response.json()["id"])
