"""`caliban status --xgroup X` of a 1,000-job experiment group.

The group is made directly instead of by running 1,000 jobs: 1,000 busybox containers with
caliban's labels (created by the Docker SDK from 8 threads; some are started and exit at
once, the rest stay "created"), and one flow run in the local Prefect server, created through
its REST API, whose `jobs` parameter lists them. Starting a container costs ~0.2 s on this
engine, so starts stop at half the jobs or after START_BUDGET_S, whichever comes first.
The Prefect server starts in the background while the containers are made.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import _engine as E

JOBS, JSON_RUNS, TEXT_RUNS, THREADS = 1000, 7, 3, 8
START_BUDGET_S = 55.0  # seconds spent starting containers, at most
TARGET_S = 1.0  # seconds, median of --format json
IMAGE = "busybox:latest"
FLOW = "caliban-experiment-group"


def make_group(client, url: str, xgroup: str, jobs: list[dict]) -> None:
    """One COMPLETED flow run of FLOW tagged and parametrised as caliban's own are."""
    import httpx

    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        response = http.post("/flows/", json={"name": FLOW})
        response.raise_for_status()
        body = {
            "flow_id": response.json()["id"],
            "name": xgroup,
            "tags": ["caliban", f"xgroup:{xgroup}", "platform:local"],
            "parameters": {
                "xgroup": xgroup,
                "platform": "local",
                "jobs": jobs,
                "command": ["python", "-m", "trainer.train"],
                "image": IMAGE,
            },
            "state": {"type": "COMPLETED"},
        }
        http.post("/flow_runs/", json=body).raise_for_status()


def main() -> None:
    info = E.up()
    client = info.client()
    os.environ.update(info.env())
    from caliban_flows.server import backend
    from caliban_flows.spec.jobspec import job_key

    xgroup = f"bench-status-{E.unique()[:8]}"
    jobs = []
    for i in range(JOBS):
        args = ["--i", str(i)]
        key = job_key(xgroup, args)
        jobs.append({"key": key, "attempt": 1, "name": f"caliban_bench_{i}", "args": args})

    def create(job: dict) -> str:
        labels = {"caliban.xgroup": xgroup, "caliban.job_key": job["key"], "caliban.attempt": "1"}
        # No network: starting is ~20% faster, and status only reads labels and states.
        return client.containers.create(IMAGE, ["true"], labels=labels, network_mode="none").id

    ids: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CALIBAN_HOME"] = str(Path(tmp) / "home")
        env = dict(os.environ)
        try:
            t0 = time.perf_counter()
            backend.start_in_background()
            with ThreadPoolExecutor(THREADS) as pool:
                ids = list(pool.map(create, jobs))
                t_created = time.perf_counter()
                started = 0
                for batch in range(0, JOBS // 2, THREADS * 4):
                    chunk = ids[batch : min(batch + THREADS * 4, JOBS // 2)]
                    list(pool.map(client.api.start, chunk))
                    started += len(chunk)
                    if time.perf_counter() - t_created > START_BUDGET_S:
                        break
            t_started = time.perf_counter()
            url = backend.use_backend()
            t_ready = time.perf_counter()
            make_group(client, url, xgroup, jobs)
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
        f"{t_ready - t_started:.1f} s later, flow run created in {t_setup - t_ready:.2f} s"
    )
    print(f"cleanup: {len(ids):,} containers removed in {cleanup:.1f} s")
    C.table([("--format json", as_json), ("--format text", as_text)])
    print(f"json lists {len(rows):,} jobs: {json.dumps(states, sort_keys=True)}")
    print(f"text lists {text_jobs:,} job lines")
    expected = {"SUCCEEDED": started, "SUBMITTED": JOBS - started}
    listed = len(rows) == JOBS and text_jobs == JOBS and states == expected
    shown = json.dumps(expected, sort_keys=True)
    print(f"states as expected ({shown}): {'yes' if listed else 'no'}")
    m = C.median(as_json)
    C.verdict(
        f"--format json median <= {TARGET_S} s (got {m:.3f} s) AND {JOBS:,} jobs listed, "
        f"each SUCCEEDED or SUBMITTED",
        m <= TARGET_S and listed,
    )


if __name__ == "__main__":
    main()
