"""A platform that exists only in this file, registered from outside the package, goes
through plan -> run -> status -> stop -> resubmit on the same engine as the real ones.

The scenario runs in a fresh interpreter (its own caliban home and embedded Prefect server):
it defines the `toy` platform (jobs kept in memory, a job's outcome read from its args),
registers it with `caliban_flows.platforms.registry.register`, and nothing else in
caliban_flows knows it.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap

from tests.conftest import BIN

SCENARIO = textwrap.dedent(
    """
    import json, os, sys
    from caliban_flows.platforms import registry
    from caliban_flows.platforms.base import JobState, RemoteJob

    FIXED = os.path.abspath("fixed")
    JOBS = {}  # remote id -> (xgroup, RemoteJob): the toy platform's own truth


    class Toy:
        name = "toy"

        def __init__(self, placement):
            assert placement == {"zone": "z1"}, placement

        async def submit_all(self, requests, *, max_qps, on_job=lambda job, new: None,
                             budgets=None):  # fmt: skip
            out = []
            for r in requests:
                rid = f"toy/{r.xgroup}/{r.key}/{r.attempt}"
                new = rid not in JOBS
                if new:
                    if "--hold" in r.args:
                        state, code = JobState.RUNNING, None
                    elif "--fail" in r.args and not os.path.exists(FIXED):
                        state, code = JobState.FAILED, 3
                    else:
                        state, code = JobState.SUCCEEDED, 0
                    JOBS[rid] = (r.xgroup, RemoteJob(r.key, r.attempt, rid, state, code))
                on_job(JOBS[rid][1], new)
                out.append(JOBS[rid][1])
            return out

        def poll(self, xgroup):
            return [job for group, job in JOBS.values() if group == xgroup]

        def cancel(self, remote_ids):
            for rid in remote_ids:
                group, job = JOBS[rid]
                JOBS[rid] = (group, RemoteJob(job.key, job.attempt, rid, JobState.STOPPED))

        def logs(self, remote_id, *, follow=False):
            yield b""


    from caliban_flows.plan.options import SubmitOptions

    class ToyOptions(SubmitOptions):  # max_running, wait ... come with it
        zone: str

    registry.register(registry.PlatformEntry(
        name="toy", title="the toy platform", open=Toy, place=lambda p: (p.get("zone"),),
        options=ToyOptions, placement=lambda options, probe: {"zone": options.zone},
    ))

    from caliban_flows.flows import engine
    from caliban_flows.flows.resubmit import resubmit
    from caliban_flows.plan.group import GroupRequest, plan_group
    from caliban_flows.plan.inputs import load_experiment_config
    from caliban_flows.state import prefect_api
    from caliban_flows.state.reconcile import Platforms, reconcile, stop_jobs

    XGROUP = "toy-group"
    steps = {}

    def rows():
        with prefect_api.client() as http:
            runs, got = reconcile(http, Platforms(), XGROUP)
        latest = {}
        for r in got:
            if r["key"] not in latest or r["attempt"] > latest[r["key"]]["attempt"]:
                latest[r["key"]] = r
        return runs, sorted(latest.values(), key=lambda r: r["args"][-1])

    def seen(got):
        return [(r["args"], r["state"], r["attempt"], r["platform"]) for r in got]

    request = GroupRequest(
        platform="toy", module="train.py", options={"zone": "z1"}, script_args=["--zone", "z1"],
        experiment_config=load_experiment_config("exp.json"), xgroup=XGROUP,
        image="toy.example/train:1", root=os.getcwd(),
    )
    steps["run"] = engine.run_plan(plan_group(request))
    runs, got = rows()
    steps["status"] = seen(got)
    with prefect_api.client() as http:
        stop_jobs(http, Platforms(), runs, [r for r in got if r["state"] == "RUNNING"])
    runs, got = rows()
    steps["stopped"] = seen(got)
    open(FIXED, "w").close()
    steps["resubmit"] = resubmit(runs, [r for r in got if r["state"] in ("FAILED", "STOPPED")])
    runs, got = rows()
    steps["resubmitted"] = seen(got)
    steps["runs"] = [(r.platform, r.placement, r.state) for r in runs]
    print(json.dumps(steps))
    """
)


def test_a_platform_defined_here_runs_through_the_whole_engine(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('toy')\n")
    (project / "requirements.txt").write_text("")
    exp = [{"n": [1]}, {"n": [2], "fail": True}, {"n": [3], "hold": True}]
    (project / "exp.json").write_text(json.dumps(exp))
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path)}
    env.pop("PREFECT_API_URL", None)
    try:
        done = subprocess.run([str(BIN / "python"), "-c", SCENARIO], cwd=project, env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        steps = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        stop = "from caliban_flows.server import backend; backend.stop()"
        subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)
    zone = ["--zone", "z1"]
    assert steps["run"] == 0
    assert steps["status"] == [
        [[*zone, "--n", "1"], "SUCCEEDED", 1, "toy"],
        [[*zone, "--fail", "--n", "2"], "FAILED", 1, "toy"],
        [[*zone, "--hold", "--n", "3"], "RUNNING", 1, "toy"],
    ]
    # A stopped run shows its ended-unsuccessfully jobs as STOPPED, as on every platform today.
    assert [s[1] for s in steps["stopped"]] == ["SUCCEEDED", "STOPPED", "STOPPED"]
    assert steps["resubmit"] == 0
    assert steps["resubmitted"] == [
        [[*zone, "--n", "1"], "SUCCEEDED", 1, "toy"],
        [[*zone, "--fail", "--n", "2"], "SUCCEEDED", 2, "toy"],
        [[*zone, "--hold", "--n", "3"], "RUNNING", 2, "toy"],
    ]
    # The resubmit ran the same run again (in place, as Retry in the UI does), on the toy
    # platform's placement.
    assert [r[:2] for r in steps["runs"]] == [["toy", {"zone": "z1"}]]
