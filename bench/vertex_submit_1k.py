"""Submitting a 1,000-job sweep to Vertex AI: `caliban cloud`, our adapter alone, a serial loop.

Everything talks real gRPC to `devtools.vertex_emulator`, run in this process (threads) in
simulate mode (no containers, no image pull) with 0.05 s of latency added to every RPC.

- `caliban cloud --max_qps 200` end to end, with CALIBAN_VERTEX_ENDPOINT pointing at the
  emulator and a prebuilt `--image_tag` (nothing is built): a fresh CALIBAN_HOME whose Prefect
  server is started by an untimed 10-job warm-up submission in another xgroup, then timed runs,
  each a new 1,000-job xgroup.
- `Vertex.submit_all(requests, max_qps=200)` alone, in this process, on JobRequests built as
  `caliban cloud` builds them (records from `jobspec.planned_jobs`, then `JobRequest.of`).
- The stand-in for Caliban 0.4.2's one-at-a-time submission: the same CustomJobs sent with the
  sync `aiplatform_v1.JobServiceClient`, one `create_custom_job` after another. When the first
  200 project to more than 60 s for all 1,000, it stops there and extrapolates.

Achieved QPS = creates / (last create - first create), from the emulator's create times.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import _engine as E

JOBS, MAX_QPS, LATENCY = 1000, 200.0, 0.05
CLI_RUNS, ADAPTER_RUNS, WARMUP_JOBS = 3, 2, 10
SERIAL_PROBE, SERIAL_BUDGET_S = 200, 60.0
TARGET_CLI_S, TARGET_QPS, TARGET_SPEEDUP = 10.0, 100.0, 5.0
IMAGE = "127.0.0.1:5000/bench/vertex:1"  # never pulled: the emulator only simulates jobs
PROJECT, REGION = "bench-project", "us-central1"
JOB_NAME = "caliban_bench"


# ----------------------------------------------------------------------- shared helpers
# (vertex_quota.py and vertex_status_1k.py import these too)


def emulator(**knobs):
    """A started, simulating VertexEmulator on a free loopback port. Like Vertex, it speaks
    TLS and checks credentials: this process and its children get its CA and a key it
    trusts (as application-default credentials), so every client goes the production way."""
    from devtools.vertex_emulator import VertexEmulator

    emu = VertexEmulator(port=0, run_containers=False, seed=7, **knobs).start()
    os.environ.update(emu.client_env(emu.new_key()))
    return emu


def placement():
    """What `caliban cloud --nogpu --project_id P --region R` places every job on."""
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec import vertex_job as vj

    machine = acc.default_machine_type(gpu=None, tpu=None)
    return vj.Placement(project=PROJECT, region=REGION, machine_type=machine)


def job_requests(xgroup: str, n: int) -> list:
    """The JobRequests of an `{"i": [0..n-1]}` sweep, as `caliban cloud` and its flow make them."""
    return E.sweep_requests(xgroup, n, platform="vertex", image=IMAGE, job_name=JOB_NAME)


def submit(endpoint: str, requests: list, max_qps: float) -> float:
    """Wall time of one `asyncio.run(Vertex(...).submit_all(...))`; checks every job came back."""
    from caliban_flows.platforms.vertex.adapter import Vertex

    # A project whose quotas were raised to the bench's pace: the engine is measured here,
    # not Vertex's default quota (bench/vertex_quota.py measures that).
    vertex = Vertex(PROJECT, REGION, placement=placement(), endpoint=endpoint,
                    submit_quota=max_qps * 60, manage_quota=max(600.0, max_qps * 60))  # fmt: skip
    start = time.perf_counter()
    done = asyncio.run(vertex.submit_all(requests, max_qps=max_qps))
    elapsed = time.perf_counter() - start
    if len(done) != len(requests):
        raise RuntimeError(f"submit_all returned {len(done)} jobs for {len(requests)} requests")
    return elapsed


def write_project(root: Path, configs: dict[str, int]) -> None:
    """A project with a `trainer` package and one `{"i": [0..n-1]}` config file per entry."""
    E.write_project(root, requirements="")
    for name, n in configs.items():
        (root / name).write_text(json.dumps({"i": list(range(n))}))


def cli_env(home: Path, endpoint: str) -> dict[str, str]:
    env = E.env_for(home)
    env["CALIBAN_VERTEX_ENDPOINT"] = endpoint
    env.pop("PREFECT_API_URL", None)  # always this home's own embedded server
    return env


def cloud_cmd(xgroup: str, config: str, max_qps: float) -> list[str]:
    return [
        E.CALIBAN, "cloud", "--nogpu", "--project_id", PROJECT, "--region", REGION,
        "--xgroup", xgroup, "--image_tag", IMAGE, "--experiment_config", config,
        "--max_qps", f"{max_qps:g}", "--submit_quota", f"{max_qps * 60:g}",
        "--manage_quota", f"{max(600.0, max_qps * 60):g}", "trainer.train",
    ]  # fmt: skip


def group_counts(emu, xgroup: str) -> tuple[int, int]:
    """(jobs the emulator holds for this xgroup, how many distinct job keys among them)."""
    from caliban_flows.spec import vertex_job as vj

    wanted = vj.xgroup_id(xgroup)
    keys = [
        job.labels.get(vj.JOB_KEY_LABEL)
        for job in emu.jobs()
        if job.labels.get(vj.XGROUP_ID_LABEL) == wanted
    ]
    return len(keys), len(set(keys))


def achieved_qps(times: list[float]) -> float:
    """Creates / (last create - first create)."""
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    return len(times) / span if span > 0 else float("inf")


class Checks:
    """Correctness checks: each printed; any failure makes the script exit 1 at the end."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def expect(self, what: str, ok: bool) -> None:
        print(f"check: {what}: {'ok' if ok else 'FAILED'}")
        if not ok:
            self.failed.append(what)

    def group(self, xgroup: str, n: int, total: int, distinct: int) -> None:
        """One xgroup's jobs in the emulator: all `n` there, each key once."""
        self.expect(
            f"{xgroup}: {total:,} jobs created (expected {n:,}), {total - distinct} duplicates",
            total == n and distinct == n,
        )

    def exit(self) -> None:
        if self.failed:
            print(f"correctness checks failed: {len(self.failed)}", file=sys.stderr)
            sys.exit(1)


# ----------------------------------------------------------------------- the three paths


def time_cli(run_id: str) -> tuple[list[float], list[float], list[tuple], list[tuple]]:
    """CLI wall times, their achieved QPS, (before, creating, after) splits, group checks."""
    walls, rates, splits, groups = [], [], [], []
    emu = emulator(latency=LATENCY)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project = d / "project"
        write_project(project, {"warm.json": WARMUP_JOBS, "exp.json": JOBS})
        env = cli_env(d / "home", emu.endpoint)
        try:
            warm = f"bench-vx-warm-{run_id}"
            t, _, _ = E.run_out(cloud_cmd(warm, "warm.json", MAX_QPS), cwd=project, env=env)
            print(f"warm-up: {WARMUP_JOBS} jobs in {t:.1f} s (fresh home: starts Prefect)")
            groups.append((warm, WARMUP_JOBS))
            for i in range(CLI_RUNS):
                xgroup = f"bench-vx-{run_id}-{i}"
                before = len(emu.create_times())
                start = time.monotonic()
                wall, _, log = E.run_out(cloud_cmd(xgroup, "exp.json", MAX_QPS), cwd=project,
                                         env=env)  # fmt: skip
                end = time.monotonic()
                if f"{JOBS} jobs submitted to Vertex AI" not in log:
                    raise RuntimeError(f"caliban cloud did not report {JOBS} submissions: {log}")
                times = emu.create_times()[before:]
                walls.append(wall)
                rates.append(achieved_qps(times))
                splits.append((times[0] - start, times[-1] - times[0], end - times[-1]))
                groups.append((xgroup, JOBS))
            checks = [(x, n, *group_counts(emu, x)) for x, n in groups]
        finally:
            E.stop_server(env)
            emu.stop()
    return walls, rates, splits, checks


def time_adapter(run_id: str) -> tuple[list[float], list[float], list[tuple]]:
    walls, rates, checks = [], [], []
    emu = emulator(latency=LATENCY)
    try:
        for i in range(ADAPTER_RUNS):
            xgroup = f"bench-vx-adapter-{run_id}-{i}"
            requests = job_requests(xgroup, JOBS)
            before = len(emu.create_times())
            walls.append(submit(emu.endpoint, requests, MAX_QPS))
            rates.append(achieved_qps(emu.create_times()[before:]))
            checks.append((xgroup, JOBS, *group_counts(emu, xgroup)))
    finally:
        emu.stop()
    return walls, rates, checks


def time_serial(run_id: str) -> tuple[float, int, bool, tuple]:
    """(seconds for all JOBS, measured or projected; creates sent; extrapolated; group check)."""
    from google.cloud import aiplatform_v1

    from caliban_flows.platforms.vertex.adapter import Vertex
    from caliban_flows.spec import vertex_job as vj

    xgroup = f"bench-vx-serial-{run_id}"
    requests = job_requests(xgroup, JOBS)
    where = placement()
    emu = emulator(latency=LATENCY)
    try:
        client = Vertex(PROJECT, REGION, endpoint=emu.endpoint).client()
        client.list_custom_jobs(request={"parent": where.parent, "page_size": 1})  # connect
        sent, extrapolated = 0, False
        start = time.perf_counter()
        for r in requests:
            labels = vj.job_labels(r.labels, xgroup=r.xgroup, key=r.key, attempt=r.attempt,
                                   image=r.image)  # fmt: skip
            spec = vj.custom_job(display_name=r.name, image=r.image, args=r.args, labels=labels,
                                 placement=where)  # fmt: skip
            client.create_custom_job(parent=where.parent, custom_job=aiplatform_v1.CustomJob(spec))
            sent += 1
            if sent == SERIAL_PROBE:
                projected = (time.perf_counter() - start) * JOBS / SERIAL_PROBE
                if projected > SERIAL_BUDGET_S:
                    extrapolated = True
                    break
        elapsed = time.perf_counter() - start
        client.transport.close()
        check = (xgroup, sent, *group_counts(emu, xgroup))
    finally:
        emu.stop()
    return (elapsed * JOBS / sent if extrapolated else elapsed), sent, extrapolated, check


def main() -> None:
    checks = Checks()
    run_id = E.unique()[:8]
    t0 = time.perf_counter()
    cli, cli_qps, splits, cli_groups = time_cli(run_id)
    t1 = time.perf_counter()
    adapter, adapter_qps, adapter_groups = time_adapter(run_id)
    t2 = time.perf_counter()
    serial, sent, extrapolated, serial_group = time_serial(run_id)
    t3 = time.perf_counter()

    C.header(
        f"{JOBS:,} Vertex AI jobs, emulator latency {LATENCY} s per RPC, --max_qps {MAX_QPS:g}"
    )
    serial_label = "serial create loop" + (f" ({sent} timed, extrapolated)" if extrapolated else "")
    C.table(
        [
            ("caliban cloud (CLI, warm Prefect)", cli),
            ("Vertex.submit_all (adapter alone)", adapter),
            (serial_label, [serial]),
        ]
    )
    print(f"(CLI: {CLI_RUNS} runs after a {WARMUP_JOBS}-job warm-up, each a new xgroup; "
          f"adapter: {ADAPTER_RUNS} runs; phases took {t1 - t0:.0f} / {t2 - t1:.0f} / "
          f"{t3 - t2:.0f} s)")  # fmt: skip
    if extrapolated:
        print(
            f"serial loop: only the first {sent} creates were timed; the {JOBS:,}-job figure is "
            f"extrapolated from them (projected > {SERIAL_BUDGET_S:g} s)"
        )
    qps_line = ", ".join(f"{q:.1f}" for q in cli_qps)
    print(f"achieved QPS, CLI runs: {qps_line} (median {C.median(cli_qps):.1f})")
    qps_line = ", ".join(f"{q:.1f}" for q in adapter_qps)
    print(f"achieved QPS, adapter runs: {qps_line} (median {C.median(adapter_qps):.1f})")
    print(f"serial loop: {JOBS / serial:.1f} jobs/s, {1000 * serial / JOBS:.1f} ms per create")
    before, creating, after = (C.median([s[k] for s in splits]) for k in range(3))
    print(
        f"CLI time split (medians): {before:.2f} s from launch to the first create, "
        f"{creating:.2f} s creating, {after:.2f} s from the last create to exit"
    )
    speedup = serial / C.median(cli)
    print(f"ratio serial / ours: CLI {speedup:.1f}x, adapter {serial / C.median(adapter):.1f}x")

    for group in [*cli_groups, *adapter_groups, serial_group]:
        checks.group(*group)

    m, q = C.median(cli), C.median(cli_qps)
    C.verdict(f"CLI {JOBS:,} jobs median <= {TARGET_CLI_S:g} s (got {m:.2f} s)", m <= TARGET_CLI_S)
    C.verdict(f"CLI achieved QPS median >= {TARGET_QPS:g} (got {q:.1f})", q >= TARGET_QPS)
    C.verdict(
        f"CLI >= {TARGET_SPEEDUP:g}x faster than the serial loop (got {speedup:.1f}x)",
        speedup >= TARGET_SPEEDUP,
    )
    C.verdict("every run created all its jobs exactly once (0 duplicates)", not checks.failed)
    checks.exit()


if __name__ == "__main__":
    main()
