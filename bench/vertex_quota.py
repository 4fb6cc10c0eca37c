"""Vertex AI at its quotas: `caliban cloud` against the emulator enforcing a per-minute quota
of job submissions (a sliding 60 s window, RESOURCE_EXHAUSTED beyond it), end to end.

    .venv/bin/python bench/vertex_quota.py                     # --case exact (about 110 s)
    .venv/bin/python bench/vertex_quota.py --case converge     # 400 jobs (about 100 s)
    .venv/bin/python bench/vertex_quota.py --case converge --jobs 1000   # about 4 minutes
    .venv/bin/python bench/vertex_quota.py --case two          # two sweeps at once (~100 s)

- exact: the emulator allows 600 creates a minute and caliban is told so
  (`--submit_quota 600`); 1,000 jobs. Quota-bound time: 100 s.
- converge: the emulator allows 300 a minute, caliban is told 600: its pace must come down
  to what the project really has. The default 400 jobs keep the script under two minutes;
  `--jobs 1000` is the issue's case (quota-bound 200 s).
- two: two `caliban cloud` of 400 jobs each, at once, in the same project and region, each
  told 600 a minute: the Prefect budget they share must keep them together to the quota.

Each sweep is over 30 s at its pace, so `caliban cloud` records it and returns, and the
embedded server's runner submits it (the background submitter). Printed: the span from the
first to the last accepted create and the quota-bound time, how soon `caliban cloud`
returned, the creates refused with 429 (share of all create calls), and the busiest
60 s window of accepted creates. The emulator runs in this process in simulate mode (no
containers), behind TLS with credentials checked, as in the other Vertex benches. Caliban
0.4.2 cannot do this work (it submitted to the dead AI Platform Training API, one job at a
time, and relied on the server to throttle it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import _engine as E
import vertex_submit_1k as V

DEADLINE_S = 600.0
CASES = {  # case: (emulator's quota a minute, what caliban is told, jobs per sweep, sweeps)
    "exact": (600.0, 600.0, 1000, 1),
    "converge": (300.0, 600.0, 400, 1),
    "two": (600.0, 600.0, 400, 2),
}


def cloud(xgroup: str, config: str, told: float) -> list[str]:
    return [
        E.CALIBAN, "cloud", "--nogpu", "--project_id", V.PROJECT, "--region", V.REGION,
        "--xgroup", xgroup, "--image_tag", V.IMAGE, "--experiment_config", config,
        "--submit_quota", f"{told:g}", "trainer.train",
    ]  # fmt: skip


def wait_for_runner(home: Path) -> None:
    """Until the embedded server's runner serves the group deployment (else the terminal
    would submit itself)."""
    import os

    from caliban_flows.flows.group_runs import DEPLOYMENT
    from caliban_flows.server import backend
    from caliban_flows.state import prefect_api
    from caliban_flows.state.background import runner_ready
    from caliban_flows.state.groups import FLOW_NAME

    os.environ["CALIBAN_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    url = backend.use_backend()  # the warm-up's server; its secret for this process
    with prefect_api.client(url) as http:
        for _ in range(300):
            if runner_ready(http, f"{FLOW_NAME}/{DEPLOYMENT}"):
                return
            time.sleep(0.2)
    raise RuntimeError("the embedded server's runner did not start within 60 s")


def main() -> None:
    from devtools.vertex_quota import busiest_window

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="exact")
    parser.add_argument("--jobs", type=int, help="jobs per sweep (default: the case's)")
    args = parser.parse_args()
    quota, told, jobs, sweeps = CASES[args.case]
    jobs = args.jobs or jobs
    checks = V.Checks()
    run_id = E.unique()[:8]
    emu = V.emulator(latency=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project = d / "project"
        V.write_project(project, {"warm.json": 1, "exp.json": jobs})
        env = V.cli_env(d / "home", emu.endpoint)
        try:
            E.run_out(cloud(f"bench-vq-warm-{run_id}", "warm.json", told), cwd=project, env=env)
            wait_for_runner(d / "home")
            emu.set_quota(submit=quota)  # after the warm-up: its create is not counted
            before = len(emu.accepted_times("submit"))
            refused_before = emu.refused()["CreateCustomJob"]
            calls_before = emu.calls()["CreateCustomJob"]
            xgroups = [f"bench-vq-{args.case}-{run_id}-{i}" for i in range(sweeps)]
            start = time.monotonic()
            procs = [subprocess.Popen(cloud(x, "exp.json", told), cwd=project, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True) for x in xgroups]  # fmt: skip
            errors = [p.communicate()[1] for p in procs]
            wall = time.monotonic() - start
            for p, err in zip(procs, errors):
                if p.returncode:
                    raise RuntimeError(f"caliban cloud exited {p.returncode}: {err[-400:]}")
            background = sum("submitting in the background" in err for err in errors)
            # the runner of the embedded server submits the rest
            while sum(V.group_counts(emu, x)[0] for x in xgroups) < jobs * sweeps:
                if time.monotonic() - start > DEADLINE_S:
                    raise RuntimeError(f"not every job was submitted within {DEADLINE_S:g} s")
                time.sleep(0.2)
            done = time.monotonic() - start
            times = sorted(emu.accepted_times("submit")[before:])
            refused = emu.refused()["CreateCustomJob"] - refused_before
            calls = emu.calls()["CreateCustomJob"] - calls_before
            counts = [(x, jobs, *V.group_counts(emu, x)) for x in xgroups]
        finally:
            E.stop_server(env)
            emu.stop()
    total = jobs * sweeps
    bound = total / quota * 60.0
    span = times[-1] - times[0]
    busiest = busiest_window(times, 60.0)
    C.header(f"{args.case}: {sweeps} x {jobs:,} jobs, emulator quota {quota:g}/min, "
             f"caliban told {told:g}/min")  # fmt: skip
    print(f"creates: first to last accepted {span:.1f} s; quota-bound {bound:.1f} s "
          f"({span / bound:.2f}x)")  # fmt: skip
    print(f"caliban cloud returned after {wall:.1f} s ({background} of {sweeps} handed to the "
          f"background submitter); every job created {done:.1f} s after the start")  # fmt: skip
    print(f"429 answers to creates: {refused} of {calls} create calls "
          f"({100 * refused / max(1, calls):.1f}%)")  # fmt: skip
    print(f"busiest 60 s window of accepted creates: {busiest} (quota {quota:g}, "
          f"{100 * (busiest / quota - 1):+.1f}%)")  # fmt: skip
    for each in counts:
        checks.group(*each)
    checks.expect("each caliban cloud handed its jobs to the background submitter",
                  background == sweeps)  # fmt: skip
    if args.case == "exact":
        checks.expect(f"caliban cloud returned in {wall:.1f} s <= 5 s", wall <= 5.0)
        checks.expect(f"span {span:.1f} s within 5% of {bound:.0f} s", span <= bound * 1.05)
        checks.expect(f"429s {refused} <= 1% of creates", refused <= 0.01 * total)
    elif args.case == "converge":
        checks.expect(f"span {span:.1f} s <= 1.3 x {bound:.0f} s", span <= bound * 1.3)
        checks.expect(f"429s under 10% of create calls ({refused}/{calls})", refused < calls / 10)
    else:
        checks.expect(f"busiest window {busiest} <= 5% over {quota:g}", busiest <= quota * 1.05)
    checks.exit()


if __name__ == "__main__":
    sys.exit(main())
