"""`caliban status --xgroup X --format json` of a 1,000-job Vertex AI group.

The group is made the way a user makes one: `caliban cloud --max_qps 200` of a 1,000-job sweep
against `devtools.vertex_emulator` (in this process, simulate mode, 0.05 s of latency per RPC,
a job ends SUCCEEDED 4 x 0.01 s after its create), in a fresh CALIBAN_HOME whose Prefect server
that submission starts. The emulator holds the jobs RUNNING first: those status runs each list
the group's jobs in one paged ListCustomJobs call. Then the jobs end; the first status settles
the group's flow run (RUNNING -> COMPLETED) and is timed on its own, and the timed runs after
it read the flow run from Prefect and make no Vertex call (checked).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common as C
import _engine as E
import vertex_submit_1k as V

JOBS, RUNS, MAX_QPS = 1000, 5, 200.0
LATENCY, SIM_STEP = 0.05, 0.01
END_WAIT_S = 30.0  # seconds to wait for the simulated jobs to end, at most
TARGET_S = 2.0  # informational: no hard target was set


def wait_until_ended(emu, xgroup: str) -> tuple[float, Counter]:
    """Seconds until every job of the group is terminal (or END_WAIT_S), and their states."""
    from caliban_flows.spec import vertex_job as vj
    from devtools.vertex_emulator import TERMINAL

    wanted = vj.xgroup_id(xgroup)
    start = time.perf_counter()
    while True:
        jobs = [j for j in emu.jobs() if j.labels.get(vj.XGROUP_ID_LABEL) == wanted]
        if all(j.state in TERMINAL for j in jobs) or time.perf_counter() - start > END_WAIT_S:
            return time.perf_counter() - start, Counter(j.state.name for j in jobs)
        time.sleep(0.1)


def main() -> None:
    checks = V.Checks()
    xgroup = f"bench-vstatus-{E.unique()[:8]}"
    emu = V.emulator(latency=LATENCY, sim_step=SIM_STEP)
    emu.hold(True)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project = d / "project"
        V.write_project(project, {"exp.json": JOBS})
        env = V.cli_env(d / "home", emu.endpoint)
        try:
            submit, _, log = E.run_out(V.cloud_cmd(xgroup, "exp.json", MAX_QPS), cwd=project,
                                       env=env)  # fmt: skip
            if f"{JOBS} jobs submitted to Vertex AI" not in log:
                raise RuntimeError(f"caliban cloud did not report {JOBS} submissions: {log}")
            running, listed = E.time_status(xgroup, RUNS, cwd=project, env=env)
            running_states = Counter(row["state"] for row in listed[-1])
            emu.hold(False)
            ended, remote_states = wait_until_ended(emu, xgroup)
            checks.group(xgroup, JOBS, *V.group_counts(emu, xgroup))
            (first,), _ = E.time_status(xgroup, 1, cwd=project, env=env)
            lists_before = emu.calls()["ListCustomJobs"]
            times, listed = E.time_status(xgroup, RUNS, cwd=project, env=env)
            settled_lists = emu.calls()["ListCustomJobs"] - lists_before
        finally:
            E.stop_server(env)
            emu.stop()

    C.header(f"caliban status --xgroup of a {JOBS:,}-job Vertex AI group (emulator)")
    print(
        f"setup: caliban cloud of {JOBS:,} jobs (fresh home, starts Prefect) {submit:.1f} s; "
        f"every job ended {ended:.1f} s later: {json.dumps(dict(remote_states))}"
    )
    print(f"first status (settles the flow run): {first:.3f} s")
    C.table([("--format json, jobs running (one paged list)", running),
             ("--format json, settled group (no list)", times)])  # fmt: skip
    rows = listed[-1]
    states = Counter(row["state"] for row in rows)
    print(f"json lists {len(rows):,} jobs: {json.dumps(dict(states), sort_keys=True)}")
    checks.expect(f"while running: {json.dumps(dict(running_states))}",
                  sum(running_states.values()) == JOBS
                  and not running_states.keys() & {"SUCCEEDED", "FAILED"})  # fmt: skip
    checks.expect(f"settled status made {settled_lists} ListCustomJobs calls", settled_lists == 0)
    for i, run in enumerate(listed):
        keys = {row["key"] for row in run}
        ok = len(run) == JOBS and len(keys) == JOBS and all(r["xgroup"] == xgroup for r in run)
        checks.expect(f"status run {i + 1} lists {len(run):,} jobs, {len(keys):,} keys", ok)
    checks.expect(
        f"every job SUCCEEDED ({states.get('SUCCEEDED', 0):,} of {len(rows):,})",
        states == Counter({"SUCCEEDED": JOBS}),
    )
    for label, runs in (("running", running), ("settled", times)):
        m = C.median(runs)
        C.verdict(f"(informational) {label}: --format json median <= {TARGET_S:g} s "
                  f"(got {m:.3f} s)", m <= TARGET_S)  # fmt: skip
    C.verdict(f"{JOBS:,} jobs listed, each SUCCEEDED", not checks.failed)
    checks.exit()


if __name__ == "__main__":
    main()
