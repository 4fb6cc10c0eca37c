"""One round of the reconcile service (`caliban serve`) over 1,200 active Vertex AI groups.

`caliban serve` runs the flow `reconcile_active_groups` (caliban_flows/flows/reconcile.py) on
an interval: `active_xgroups`, then `reconcile(http, platforms, xgroup, publish_all=True)`
for each group (read its runs and their job records, one ListCustomJobs call, settle what
ended, publish its table and summary artifacts). This script times that round, called as the
service calls it: `reconcile_active_groups.fn()` in this process, PREFECT_API_URL set (the
Prefect run logger disabled: there is no flow run context around `.fn()`).

Setup (untimed): `devtools.vertex_emulator` in this process (simulate mode, no latency) holding
every job RUNNING (`emu.hold(True)`), a fresh CALIBAN_HOME whose embedded Prefect server starts
in the background meanwhile, then 1,200 groups recorded as `caliban cloud` records a Vertex
group once its jobs are handed over: one job (even groups) or two (odd ones), planned by the
planner's functions (bench/_engine.py) and created on the emulator by one `Vertex.submit_all`
call for all groups (JobRequests from `JobRequest.of`); per group one flow run of
`caliban-experiment-group` made through Prefect's REST API with the group flow's parameters
(checked against its signature), `group_tags`, state RUNNING named "Submitted", and its jobs as
`caliban-jobs` artifacts (`records.jobs_artifacts` + `records.write`).
The table and summary artifacts the flow publishes before it returns are left out: every round
publishes new versions of both anyway, and the 2,400 posts would take ~25 s of the budget.
The runs are recorded one request after another: from 2 threads the SQLite-backed server is
slower per request, and from 4 or 8 threads one request waited past the client's 30 s timeout.

Timed: up to ROUNDS rounds, fewer when the next one would end past BUDGET_S (here a round takes
about a minute, so usually only one runs; `--rounds N` runs N, whatever they take). Printed:
groups seen by `active_xgroups` (checked: all 1,200 and only those, before the rounds and after
each), seconds per round and per group, the emulator's ListCustomJobs calls per round, and
where a round's time went (the Prefect API requests it made, by kind, and its `Vertex.poll`
calls, timed by wrapping `prefect_api.client` and `Vertex.poll`). Checked after the rounds:
every run still RUNNING "Submitted" (the jobs are held: nothing may settle), the latest jobs
table shows the jobs RUNNING, every job still RUNNING on the emulator, none cancelled, created
twice or missing. No target: report only. Exits 1 if a check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import _common as C
import _engine as E
import vertex_submit_1k as V

STARTED = time.perf_counter()


def elapsed() -> float:
    """Seconds since this script started (its imports aside)."""
    return time.perf_counter() - STARTED


GROUPS, ROUNDS = 1200, 3
BUDGET_S = 120.0  # the whole script, as every bench script: fewer rounds when one is slow
RESERVE_S = 8.0  # seconds kept for the checks after the rounds and stopping the server
SUBMIT_QPS = 2000.0  # setup only: how fast the emulator is filled
RECORDED_QPS = 200.0  # the --max_qps a group's placement records
SIM_STEP = 0.2  # seconds per simulated step: QUEUED -> PENDING -> RUNNING, then held
RUNNING_WAIT_S = 20.0  # seconds to wait for every job to reach RUNNING, at most
ENDPOINT_ENV = "CALIBAN_VERTEX_ENDPOINT"  # the adapter's: where Vertex AI is


def jobs_in(i: int) -> int:
    """One job in even groups, two in odd ones."""
    return 1 + i % 2


def recorded_placement() -> dict:
    """A group's placement as `caliban cloud --nogpu --project_id P --region R --max_qps Q`
    records it (plan/placement.py: vertex)."""
    where = V.placement()
    return {
        "project": where.project,
        "region": where.region,
        "placement": asdict(where),
        "max_qps": RECORDED_QPS,
        "submit_quota": RECORDED_QPS * 60,  # a project with a raised quota
        "credentials_block": None,
    }


class Group:
    """One group: its xgroup, recipe, planned jobs and (after setup) its flow run's id."""

    def __init__(self, xgroup: str, n: int) -> None:
        self.xgroup = xgroup
        self.recipe, self.jobs = E.sweep_jobs(xgroup, n, platform="vertex", image=V.IMAGE,
                                              job_name=V.JOB_NAME)  # fmt: skip
        self.run_id = ""

    def parameters(self, placement: dict) -> dict:
        """What Prefect records for `experiment_group(...)` as the engine calls it for a
        Vertex group without --wait or --max_running."""
        return {
            "xgroup": self.xgroup,
            "platform": "vertex",
            "recipes": [self.recipe],
            "submission": uuid.uuid4().hex,  # hand_over()'s id
            "placement": placement,
            "parallel": 1,
            "wait": False,
            "limit": None,
        }


def submit(groups: list[Group], placement: dict) -> list:
    """Every group's jobs created on the emulator, in one `submit_all` call (it lists each
    group first, then creates what is missing). Runs where CALIBAN_VERTEX_ENDPOINT points."""
    from caliban_flows.platforms.base import JobRequest
    from caliban_flows.platforms.vertex.adapter import Vertex

    requests = [JobRequest.of(g.xgroup, g.recipe, job, placement) for g in groups for job in g.jobs]
    vertex = Vertex.from_placement(placement)
    vertex.submit_quota = vertex.manage_quota = SUBMIT_QPS * 60  # setup, not what is measured
    done = asyncio.run(vertex.submit_all(requests, max_qps=SUBMIT_QPS))
    answered = [(j.key, j.attempt) for j in done]
    if answered != [(r.key, r.attempt) for r in requests]:
        raise RuntimeError(f"submit_all answered {len(done)} jobs for {len(requests)} requests")
    return done


def record(url: str, groups: list[Group], placement: dict) -> None:
    """Each group's flow run and its jobs, one request after another (see the docstring)."""
    from caliban_flows.flows.experiment_group import experiment_group, group_tags
    from caliban_flows.state import prefect_api, records
    from caliban_flows.state.groups import FLOW_NAME

    wanted = sorted(groups[0].parameters(placement))
    flow_params = sorted(inspect.signature(experiment_group.fn).parameters)
    if wanted != flow_params:
        raise RuntimeError(f"the group flow's parameters are now {flow_params}: update the bench")
    with prefect_api.client(url) as http:
        flow_id = http.post("/flows/", json={"name": FLOW_NAME}).raise_for_status().json()["id"]
        for group in groups:
            body = {
                "flow_id": flow_id,
                "name": group.xgroup,  # flow_run_name="{xgroup}"
                "tags": group_tags(group.xgroup, "vertex"),
                "parameters": group.parameters(placement),
                "state": {"type": "RUNNING", "name": "Submitted",
                          "message": f"{len(group.jobs)} jobs submitted to Vertex AI"},
            }  # fmt: skip
            group.run_id = http.post("/flow_runs/", json=body).raise_for_status().json()["id"]
            records.write(http, records.jobs_artifacts(group.run_id, group.jobs))


def wait_running(emu) -> Counter:
    """The emulator's job states once every job is RUNNING (or after RUNNING_WAIT_S)."""
    start = time.perf_counter()
    while True:
        states = Counter(job.state.name for job in emu.jobs())
        if set(states) == {"JOB_STATE_RUNNING"} or time.perf_counter() - start > RUNNING_WAIT_S:
            return states
        time.sleep(0.1)


class Tally:
    """What a round waited for, while installed: the Prefect API requests made through
    `prefect_api.client` (by kind) and the `Vertex.poll` calls (one ListCustomJobs each), how
    many and the seconds spent in them (from the round's thread and its poll threads)."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()

    def add(self, kind: str, start: float) -> None:
        self.count[kind] += 1
        self.seconds[kind] += time.perf_counter() - start

    @staticmethod
    def kind(request) -> str:
        path = request.url.path
        for part in ("/flow_runs/filter", "/artifacts/filter", "/artifacts/", "/set_state"):
            if path.endswith(part):
                return f"{request.method} {part}"
        return f"{request.method} other"

    def prefect(self) -> tuple[int, float]:
        kinds = [k for k in self.count if k != POLL]
        return sum(self.count[k] for k in kinds), sum(self.seconds[k] for k in kinds)

    @contextlib.contextmanager
    def installed(self):
        from caliban_flows.platforms.vertex.adapter import Vertex
        from caliban_flows.state import prefect_api

        made, poll = prefect_api.client, Vertex.poll

        def client(*args, **kwargs):
            http = made(*args, **kwargs)
            send = http.send

            def timed(request, *a, **kw):
                start = time.perf_counter()
                try:
                    return send(request, *a, **kw)
                finally:
                    self.add(self.kind(request), start)

            http.send = timed
            return http

        def timed_poll(vertex, xgroup):
            start = time.perf_counter()
            try:
                return poll(vertex, xgroup)
            finally:
                self.add(POLL, start)

        prefect_api.client, Vertex.poll = client, timed_poll
        try:
            yield self
        finally:
            prefect_api.client, Vertex.poll = made, poll


POLL = "Vertex.poll"


def run_rounds(emu, url: str, groups: list[Group], checks: V.Checks,
               rounds: int | None) -> tuple[list, list, list]:  # fmt: skip
    """`rounds` timed rounds, or (None) up to ROUNDS, fewer when the next would end past
    BUDGET_S: (seconds, ListCustomJobs calls, Tally) of each. Checks what each round said,
    and what `active_xgroups` sees before the rounds and after each."""
    from prefect.logging import disable_run_logger

    from caliban_flows.flows.reconcile import reconcile_active_groups
    from caliban_flows.state import prefect_api
    from caliban_flows.state.groups import active_xgroups

    ours = {g.xgroup for g in groups}
    times, lists, tallies = [], [], []
    with prefect_api.client(url) as http:
        seen = active_xgroups(http)
        checks.expect(f"before the rounds, active_xgroups sees {len(seen):,} groups, "
                      f"{len(set(seen) & ours):,} of ours", set(seen) == ours)  # fmt: skip
        for i in range(rounds or ROUNDS):
            if rounds is None and times and elapsed() + 1.1 * max(times) + RESERVE_S > BUDGET_S:
                print(f"round {i + 1} not run: at {elapsed():.0f} s, a round of "
                      f"{max(times):.0f} s would end past the {BUDGET_S:g} s budget")  # fmt: skip
                break
            tally = Tally()
            before = emu.calls()["ListCustomJobs"]
            with tally.installed(), disable_run_logger():
                start = time.perf_counter()
                said = reconcile_active_groups.fn()
                times.append(time.perf_counter() - start)
            lists.append(emu.calls()["ListCustomJobs"] - before)
            tallies.append(tally)
            expected = f"{GROUPS} groups reconciled, 0 could not be listed"
            checks.expect(f"round {i + 1} says {said!r}", said == expected)
            seen = active_xgroups(http)
            checks.expect(f"after round {i + 1}, active_xgroups sees {len(seen):,} groups",
                          len(seen) == GROUPS and set(seen) == ours)  # fmt: skip
    return times, lists, tallies


def check_after(emu, url: str, groups: list[Group], checks: V.Checks) -> None:
    """Nothing settled, cancelled, lost or doubled; the artifacts show the jobs RUNNING."""
    import json

    from caliban_flows.state import artifacts, prefect_api
    from caliban_flows.state.groups import FLOW_NAME

    body = {"flows": {"name": {"any_": [FLOW_NAME]}}, "flow_runs": {"tags": {"all_": ["caliban"]}}}
    with prefect_api.client(url) as http:
        runs = prefect_api.paged_runs(http, body)
        states = Counter(f"{r['state']['type']} {r['state']['name']}" for r in runs)
        checks.expect(f"{len(runs):,} group runs, their states: {json.dumps(dict(states))}",
                      len(runs) == GROUPS and states == {"RUNNING Submitted": GROUPS})  # fmt: skip
        ids = {r["id"] for r in runs}
        checks.expect("each is one of ours", ids == {g.run_id for g in groups})
        for group in (groups[0], groups[-1]):
            key, _ = artifacts.keys(group.xgroup)
            latest = http.get(f"/artifacts/{key}/latest").raise_for_status().json()
            rows = json.loads(latest["data"])
            shown = Counter(row["state"] for row in rows)
            checks.expect(f"{group.xgroup}'s jobs table (latest) shows {dict(shown)}",
                          shown == {"RUNNING": len(group.jobs)}
                          and latest["flow_run_id"] == group.run_id)  # fmt: skip
    jobs = sum(len(g.jobs) for g in groups)
    remote = Counter(job.state.name for job in emu.jobs())
    checks.expect(f"the emulator holds {sum(remote.values()):,} jobs (expected {jobs:,}), "
                  f"{emu.duplicates()} created twice: {json.dumps(dict(remote))}",
                  remote == {"JOB_STATE_RUNNING": jobs} and emu.duplicates() == 0)  # fmt: skip
    cancels = emu.calls()["CancelCustomJob"]
    checks.expect(f"{cancels} CancelCustomJob calls", cancels == 0)


def report(times: list[float], lists: list[int], tallies: list[Tally], asked: int) -> None:
    C.table([(f"reconcile_active_groups.fn(), {GROUPS:,} groups", times)])
    print(f"rounds run: {len(times)} of {asked}: " + ", ".join(f"{t:.2f} s" for t in times))
    per_group = [1000 * t / GROUPS for t in times]
    print(f"per group: {C.median(per_group):.1f} ms (median; min {min(per_group):.1f}, "
          f"max {max(per_group):.1f})")  # fmt: skip
    print(f"ListCustomJobs calls per round: {', '.join(f'{n:,}' for n in lists)} "
          f"({C.median(lists) / GROUPS:.2f} per group)")  # fmt: skip
    for i, tally in enumerate(tallies):
        total, waited = tally.prefect()
        kinds = ", ".join(
            f"{kind} {n:,} x {1000 * tally.seconds[kind] / n:.1f} ms"
            for kind, n in sorted(tally.count.items())
            if kind != POLL
        )
        polls, polled = tally.count[POLL], tally.seconds[POLL]
        rest = times[i] - waited - polled
        print(f"round {i + 1}: {waited:.1f} s ({100 * waited / times[i]:.0f}%) waiting on "
              f"{total:,} Prefect API requests ({kinds}); {polled:.1f} s in {polls:,} "
              f"Vertex.poll calls (emulator in this process); {rest:.1f} s the rest")  # fmt: skip


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, metavar="N",
                        help=f"run exactly N rounds, however long they take (default: up to "
                             f"{ROUNDS}, as many as end within {BUDGET_S:g} s)")  # fmt: skip
    args = parser.parse_args()
    checks = V.Checks()
    run_id = E.unique()[:8]
    emu = V.emulator(sim_step=SIM_STEP)
    emu.hold(True)
    placement = recorded_placement()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CALIBAN_HOME"] = str(Path(tmp) / "home")
        os.environ.pop("PREFECT_API_URL", None)  # always this home's own embedded server
        os.environ[ENDPOINT_ENV] = emu.endpoint
        env = dict(os.environ)
        from caliban_flows.server import backend

        try:
            t0 = time.perf_counter()
            backend.start_in_background()
            groups = [Group(f"bench-serve-{run_id}-{i:04d}", jobs_in(i)) for i in range(GROUPS)]
            submit(groups, placement)
            t_submitted = time.perf_counter()
            url = backend.use_backend()  # before Prefect is imported
            t_ready = time.perf_counter()
            record(url, groups, placement)
            t_recorded = time.perf_counter()
            remote_states = wait_running(emu)
            checks.expect(f"every job RUNNING before the rounds: {dict(remote_states)}",
                          set(remote_states) == {"JOB_STATE_RUNNING"})  # fmt: skip
            t_setup = time.perf_counter()
            times, lists, tallies = run_rounds(emu, url, groups, checks, args.rounds)
            check_after(emu, url, groups, checks)
        finally:
            E.stop_server(env)
            emu.stop()

    jobs = sum(len(g.jobs) for g in groups)
    C.header(f"caliban serve: one reconcile round over {GROUPS:,} active Vertex AI groups "
             f"({jobs:,} jobs held RUNNING on the emulator)")  # fmt: skip
    print(
        f"setup {t_setup - t0:.1f} s: {jobs:,} jobs planned and created by submit_all in "
        f"{t_submitted - t0:.1f} s, Prefect ready {t_ready - t_submitted:.1f} s later, "
        f"{GROUPS:,} flow runs and their jobs recorded in {t_recorded - t_ready:.1f} s"
    )
    report(times, lists, tallies, args.rounds or ROUNDS)
    print(f"whole script so far: {elapsed():.1f} s")
    print("target: none (report only)")
    checks.exit()


if __name__ == "__main__":
    main()
