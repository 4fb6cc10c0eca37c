"""`caliban results --xgroup X --format json` of a 1,000-job local group, against reading the
same metrics files one after another.

The group is made as bench/status_1k.py makes it (no 1,000 real jobs): the planner's jobs and
recipe, 1,000 busybox containers with the local adapter's labels (`status_1k.make_containers`:
some started for START_BUDGET_S at most, exiting at once: SUCCEEDED; the rest only created:
SUBMITTED, and FAILED "never started" 60 s after their creation), one COMPLETED flow run
made through Prefect's REST API with its jobs and artifacts (`status_1k.make_group`). Its
placement is the one `caliban run --nogpu` records today (`plan.placement.local`), whose
`outputs` is the host folder `$CALIBAN_HOME/outputs`. Each job's folder there
(`job_folder(xgroup, name, key, attempt)`) gets a metrics.json, and every fourth one a
metrics.jsonl too (bench/_results.py), before the run's artifacts are published.

Timed twice, with the never-started containers and then without them (removed, as `docker
container prune` would; each such container costs one `docker inspect` per poll, and a real
sweep's containers have ended instead: those are listed, not inspected): the whole command as
a user runs it (after a warm-up), `caliban status` of the same group (what results costs
beyond reading the metrics), the in-process read of the
metrics alone (`platforms.outputs.folder_metrics`), and a serial read of the same files (open
each in turn, parse it). Exits 1 if the rows are wrong. `--profile`: one more run under
`python -X importtime -m cProfile`, its slowest imports and functions printed.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as C
import _engine as E
import _results as R
import status_1k as S
import vertex_submit_1k as V

JOBS, RUNS, WARMUP, READ_RUNS, STATUS_RUNS, THREADS = 1000, 5, 1, 5, 3, 8
START_BUDGET_S = 15.0  # seconds spent starting containers, at most
TARGET_S = 2.0


def recorded_placement(xgroup: str) -> dict:
    """What `caliban run --nogpu` records as its placement (with this CALIBAN_HOME)."""
    from caliban_flows.plan.options import LocalOptions
    from caliban_flows.plan.placement import local

    return local(LocalOptions(nogpu=True), xgroup=xgroup, probe=False).placement


def serial_read(root: Path, folders: list[str]) -> dict[str, dict]:
    """Each job's metrics files opened and parsed one after another (the object over the
    series), as a user's loop over the folders would."""
    out = {}
    for folder in folders:
        found: dict = {}
        series = root / folder / "metrics.jsonl"
        if series.exists():
            for line in series.read_text().splitlines():
                found.update(json.loads(line))
        found.update(json.loads((root / folder / "metrics.json").read_text()))
        out[folder] = found
    return out


def main() -> None:
    info = E.up()
    client = info.client()
    os.environ.update(info.env())
    from caliban_flows.platforms.base import JobRequest
    from caliban_flows.platforms.outputs import folder_metrics
    from caliban_flows.server import backend
    from caliban_flows.spec.outputs import OutputPlace, job_folder

    checks = V.Checks()
    xgroup = f"bench-results-{E.unique()[:8]}"
    ids: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CALIBAN_HOME"] = str(Path(tmp) / "home")
        env = dict(os.environ)
        placement = recorded_placement(xgroup)
        place = OutputPlace.of(placement["outputs"])
        assert place is not None and place.kind == "local"
        recipe, jobs = E.sweep_jobs(xgroup, JOBS, platform="local", image=S.IMAGE,
                                    job_name=S.JOB_NAME)  # fmt: skip
        folders = [job_folder(xgroup, j["name"], j["key"], j["attempt"]) for j in jobs]
        labels = [S.container_labels(JobRequest.of(xgroup, recipe, j, placement)) for j in jobs]

        try:
            t0 = time.perf_counter()
            backend.start_in_background()
            root = Path(place.root)
            files = sum(R.write_job(root / f, i) for i, f in enumerate(folders))
            t_written = time.perf_counter()
            ids, started, t_created = S.make_containers(client, labels, START_BUDGET_S)
            t_started = time.perf_counter()
            url = backend.use_backend()
            S.make_group(url, xgroup, recipe, jobs, placement)
            t_setup = time.perf_counter()

            unstarted, unstarted_rows = R.time_results(xgroup, RUNS, WARMUP, env=env)
            unstarted_status, _ = E.time_status(xgroup, STATUS_RUNS, env=env)
            # What a finished sweep's poll costs: containers that ended are listed, not
            # inspected; the never-started ones go, as `docker container prune` takes them.
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda c: client.api.remove_container(c, force=True),
                              ids[started:]))  # fmt: skip
            ids = ids[:started]
            times, rows = R.time_results(xgroup, RUNS, WARMUP, env=env)
            status, _ = E.time_status(xgroup, STATUS_RUNS, env=env)
            in_process, found = R.time_calls(lambda: folder_metrics(place, folders, placement),
                                             READ_RUNS)  # fmt: skip
            serial, by_hand = R.time_calls(lambda: serial_read(root, folders), READ_RUNS)
            if "--profile" in sys.argv:
                R.profile(xgroup, env=env)
        finally:
            E.stop_server(env)
            t_clean = time.perf_counter()
            with ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda c: client.api.remove_container(c, force=True), ids))
            E.remove_containers(client, [xgroup])
            cleanup = time.perf_counter() - t_clean

    C.header(f"caliban results --xgroup of a {JOBS:,}-job local group ({files:,} metrics files)")
    print(
        f"setup {t_setup - t0:.1f} s: {files:,} metrics files written in {t_written - t0:.1f} s, "
        f"{JOBS:,} containers created in {t_created - t_written:.1f} s, {started} started in "
        f"{t_started - t_created:.1f} s, flow run and artifacts recorded "
        f"{t_setup - t_started:.1f} s later; cleanup {cleanup:.1f} s"
    )
    R.no_reference()
    never = JOBS - started
    print(f"first with {never:,} containers created and never started (each needs one `docker "
          f"inspect` for Docker's start error: a crash between create and start leaves such, "
          f"a sweep does not), then with those removed: {started} ended containers, "
          f"{never:,} jobs without one")  # fmt: skip
    C.table([
        (f"caliban results --format json, {never:,} never started", unstarted),
        (f"caliban status --format json, {never:,} never started", unstarted_status),
        ("caliban results --format json (whole process)", times),
        ("  metrics read alone, in-process (folder_metrics)", in_process),
        ("caliban status --format json of the group", status),
        ("serial read: open and parse each file in turn", serial),
    ])  # fmt: skip
    R.check_rows(checks, unstarted_rows, JOBS)
    R.check_rows(checks, rows, JOBS)
    states, before = R.state_counts(rows), R.state_counts(unstarted_rows)
    # A container left unstarted is SUBMITTED, and FAILED ("never started") after 60 s.
    checks.expect(f"states {json.dumps(before, sort_keys=True)}: {started} SUCCEEDED (the "
                  f"started containers), the others SUBMITTED or FAILED",
                  before.get("SUCCEEDED", 0) == started
                  and set(before) <= {"SUCCEEDED", "SUBMITTED", "FAILED"})  # fmt: skip
    # A settled run's job with no container left: only its metrics are known.
    checks.expect(f"then {json.dumps(states, sort_keys=True)}: the others UNKNOWN",
                  states == {"SUCCEEDED": started, "UNKNOWN": never})  # fmt: skip
    checks.expect(f"folder_metrics found {len(found):,} folders, the serial read "
                  f"{len(by_hand):,}, the same values",
                  found == by_hand and len(found) == JOBS)  # fmt: skip
    checks.expect(f"output column is each job's folder under {place.root}",
                  all(r["output"] == place.uri(f) for r, f in
                      zip(sorted(rows, key=lambda r: r["i"]), folders)))  # fmt: skip
    R.summary("local: caliban results --format json", times, TARGET_S, not checks.failed)
    checks.exit()


if __name__ == "__main__":
    main()
