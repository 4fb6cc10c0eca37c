"""`caliban status --xgroup X` of a 1,000-job experiment group.

The group is made directly instead of by running 1,000 jobs, but recorded as `caliban run`
records a local group today. Its jobs and recipe are planned by the planner's own functions
(`job_specs`, `recipe`, `planned_jobs`; bench/_engine.py). 1,000 busybox containers carry the
labels the local adapter gives a job's container (created by the Docker SDK from 8 threads,
running `true`; some are started and exit at once, the rest stay "created"). One flow run of
`caliban-experiment-group` in the local Prefect server, made through its REST API, has the
group flow's parameters (xgroup, platform, recipes, submission, placement, parallel, wait,
limit; checked against the flow's signature) and tags (`group_tags`); the jobs are written
onto it as `caliban-jobs` artifacts by `records.write(records.jobs_artifacts(...))`, as the
`record-jobs` task writes them; its table and summary artifacts are published as the flow
publishes them when it ends (`publish_group`); then it is COMPLETED. A local run gets no
`caliban-final` artifact: only a remote run settled by reconcile does.
Starting a container costs ~0.2 s on this engine, so starts stop at half the jobs or after
START_BUDGET_S, whichever comes first. The Prefect server starts in the background while the
containers are made. The script exits 1 if status does not list the recorded jobs with the
expected states.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import _engine as E

JOBS, JSON_RUNS, TEXT_RUNS, THREADS = 1000, 7, 3, 8
START_BUDGET_S = 55.0  # seconds spent starting containers, at most
TARGET_S = 1.0  # seconds, median of --format json
IMAGE = "busybox:latest"
JOB_NAME = "caliban_bench"
PLACEMENT = {"gpu": False, "run_args": []}  # local: `caliban run --nogpu`, no docker run args


def container_labels(request) -> dict[str, str]:
    """A job's container labels, as the local adapter sets them (LocalDocker.submit)."""
    from caliban_flows.platforms.base import ATTEMPT_LABEL, JOB_KEY_LABEL, XGROUP_LABEL

    return {
        **{f"caliban.label.{k}": v for k, v in request.labels.items()},
        XGROUP_LABEL: request.xgroup,
        JOB_KEY_LABEL: request.key,
        ATTEMPT_LABEL: str(request.attempt),
    }


def make_containers(client, labels: list[dict[str, str]], budget: float) -> tuple[list, int, float]:
    """One busybox container per job (these labels), made from THREADS threads, running
    `true`; then up to half of them started, until `budget` seconds were spent starting. The
    container ids, how many were started, and when the creating ended (perf_counter)."""

    def create(job_labels: dict[str, str]) -> str:
        # No network: starting is ~20% faster, and status only reads labels and states.
        return client.containers.create(IMAGE, ["true"], labels=job_labels, network_mode="none").id

    half = len(labels) // 2
    with ThreadPoolExecutor(THREADS) as pool:
        ids = list(pool.map(create, labels))
        t_created = time.perf_counter()
        started = 0
        for batch in range(0, half, THREADS * 4):
            chunk = ids[batch : min(batch + THREADS * 4, half)]
            list(pool.map(client.api.start, chunk))
            started += len(chunk)
            if time.perf_counter() - t_created > budget:
                break
    return ids, started, t_created


def make_group(url: str, xgroup: str, recipe: dict, jobs: list[dict],
               placement: dict | None = None) -> str:  # fmt: skip
    """The group's flow run, recorded as `caliban run` records a local one; its id.

    The parameters are what Prefect records for `experiment_group(...)` as the engine calls
    it (run_group), the tags `group_tags`; the jobs go into `caliban-jobs` artifacts as the
    `record-jobs` task writes them, and the table and summary artifacts as the flow publishes
    them when it ends (`_publish`). The run ends COMPLETED, as the flow leaves it.
    """
    from caliban_flows.flows.experiment_group import experiment_group, group_tags
    from caliban_flows.state import prefect_api, records
    from caliban_flows.state.groups import FLOW_NAME
    from caliban_flows.state.reconcile import Platforms, publish_group

    parameters = {
        "xgroup": xgroup,
        "platform": "local",
        "recipes": [recipe],
        "submission": uuid.uuid4().hex,  # hand_over()'s id: the jobs travel beside the call
        "placement": PLACEMENT if placement is None else placement,
        "parallel": 1,
        "wait": False,
        "limit": None,
    }
    flow_params = list(inspect.signature(experiment_group.fn).parameters)
    if sorted(parameters) != sorted(flow_params):
        raise RuntimeError(f"the group flow's parameters are now {flow_params}: update the bench")
    with prefect_api.client(url) as http:
        response = http.post("/flows/", json={"name": FLOW_NAME})
        response.raise_for_status()
        body = {
            "flow_id": response.json()["id"],
            "name": xgroup,  # flow_run_name="{xgroup}"
            "tags": group_tags(xgroup, "local"),
            "parameters": parameters,
            "state": {"type": "RUNNING"},
        }
        response = http.post("/flow_runs/", json=body)
        response.raise_for_status()
        run_id = response.json()["id"]
        records.write(http, records.jobs_artifacts(run_id, jobs))
        publish_group(http, Platforms(), xgroup, run_id)
        state = {"type": "COMPLETED", "message": f"{len(jobs)} jobs succeeded"}
        prefect_api.set_state(http, run_id, state)
    return run_id


def main() -> None:
    info = E.up()
    client = info.client()
    os.environ.update(info.env())
    from caliban_flows.platforms.base import JobRequest
    from caliban_flows.server import backend

    xgroup = f"bench-status-{E.unique()[:8]}"
    recipe, jobs = E.sweep_jobs(xgroup, JOBS, platform="local", image=IMAGE, job_name=JOB_NAME)
    labels = [container_labels(JobRequest.of(xgroup, recipe, job, PLACEMENT)) for job in jobs]

    ids: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CALIBAN_HOME"] = str(Path(tmp) / "home")
        env = dict(os.environ)
        try:
            t0 = time.perf_counter()
            backend.start_in_background()
            ids, started, t_created = make_containers(client, labels, START_BUDGET_S)
            t_started = time.perf_counter()
            url = backend.use_backend()
            t_ready = time.perf_counter()
            run_id = make_group(url, xgroup, recipe, jobs)
            t_setup = time.perf_counter()

            status = [E.CALIBAN, "status", "--xgroup", xgroup]
            as_json, as_text, states = [], [], {}
            for _ in range(JSON_RUNS):
                t, out, _ = E.run_out([*status, "--format", "json"], env=env)
                as_json.append(t)
                rows = json.loads(out)
                states = {}
                for row in rows:
                    states[row["state"]] = states.get(row["state"], 0) + 1
            for _ in range(TEXT_RUNS):
                t, out, _ = E.run_out([*status, "--format", "text"], env=env)
                as_text.append(t)
                text_jobs = sum(line.startswith("    job ") for line in out.splitlines())
        finally:
            E.stop_server(env)
            t_clean = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda c: client.api.remove_container(c, force=True), ids))
            E.remove_containers(client, [xgroup])  # any a failed create left behind
            cleanup = time.perf_counter() - t_clean

    C.header(f"caliban status --xgroup of a {JOBS:,}-job group")
    print(
        f"setup {t_setup - t0:.1f} s: {JOBS:,} containers created in {t_created - t0:.1f} s, "
        f"{started} started in {t_started - t_created:.1f} s, Prefect ready "
        f"{t_ready - t_started:.1f} s later, flow run and its artifacts recorded in "
        f"{t_setup - t_ready:.2f} s (importing Prefect included)"
    )
    print(f"cleanup: {len(ids):,} containers removed in {cleanup:.1f} s")
    C.table([("--format json", as_json), ("--format text", as_text)])
    print(f"json lists {len(rows):,} jobs: {json.dumps(states, sort_keys=True)}")
    print(f"text lists {text_jobs:,} job lines")
    expected = {"SUCCEEDED": started, "SUBMITTED": JOBS - started}
    recorded = {
        (j["key"], j["attempt"], j["experiment"], j["name"], tuple(j["args"])) for j in jobs
    }
    shown_rows = {
        (r["key"], r["attempt"], r["experiment"], r["name"], tuple(r["args"])) for r in rows
    }
    of_run = all(
        r["flow_run_id"] == run_id and r["image"] == IMAGE and r["command"] == recipe["command"]
        for r in rows
    )
    # A container still not started 60 s after it was made is FAILED ("never started"): on a
    # busy machine the setup outlasts that, and the unstarted ones are FAILED by then.
    waiting = {"SUBMITTED": states.get("SUBMITTED", 0) + states.get("FAILED", 0)}
    settled = {**{k: v for k, v in states.items() if k not in ("SUBMITTED", "FAILED")}, **waiting}
    listed = len(rows) == JOBS and text_jobs == JOBS and settled == expected
    shown = json.dumps(expected, sort_keys=True) + " (SUBMITTED, or FAILED once never started)"
    print(f"states as expected ({shown}): {'yes' if listed else 'no'}")
    as_recorded = shown_rows == recorded and of_run
    print(f"jobs as recorded (key, attempt, experiment, name, args, run, recipe): "
          f"{'yes' if as_recorded else 'no'}")  # fmt: skip
    m = C.median(as_json)
    C.verdict(
        f"--format json median <= {TARGET_S} s (got {m:.3f} s) AND {JOBS:,} jobs listed, "
        f"each SUCCEEDED or SUBMITTED",
        m <= TARGET_S and listed and as_recorded,
    )
    if not (listed and as_recorded):
        sys.exit("status did not list the recorded group's jobs as expected")


if __name__ == "__main__":
    main()
