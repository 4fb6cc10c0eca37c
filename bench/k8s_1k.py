"""1,000 Kubernetes Jobs: submitting them, and `caliban status` of the group.

Everything talks HTTP to `devtools.k8s_emulator` (in this process, simulated pods, no
containers) through a kubeconfig, with the real `kubernetes` client. Submissions see 10 ms of
latency per request (an API server across a network); the status runs see none.

- `caliban cluster job submit --max_qps 500` of a 1,000-job sweep, end to end, in a fresh
  CALIBAN_HOME whose Prefect server an untimed 10-job warm-up starts; timed runs, each a new
  xgroup.
- `Kubernetes.submit_all(requests, max_qps=500)` alone, in this process.
- The stand-in for Caliban 0.4.2, which created its Jobs one after another: the same manifests
  as V1Job models through `BatchV1Api.create_namespaced_job`, one call after another.
- `caliban status --xgroup --format json` of a 1,000-job group while its Jobs run (one paged
  Job list), then once they have ended and the first status settled the run (no list call).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import _common as C
import _engine as E

JOBS, MAX_QPS, CLI_RUNS, STATUS_RUNS, WARMUP_JOBS = 1000, 500.0, 2, 5, 10
LATENCY = 0.01
TARGET_SUBMIT_S, TARGET_STATUS_S = 10.0, 1.0
IMAGE = "127.0.0.1:5000/bench/k8s:1"  # never pulled: the emulator simulates pods
JOB_NAME = "caliban_bench"


def requests(xgroup: str, n: int) -> list:
    """The JobRequests of an `{"i": [0..n-1]}` sweep, as `caliban cluster job submit` and its
    flow make them."""
    return E.sweep_requests(xgroup, n, platform="kubernetes", image=IMAGE, job_name=JOB_NAME)


def platform(kubeconfig: Path):
    from caliban_flows.platforms.kubernetes.adapter import Kubernetes
    from caliban_flows.spec import k8s_job as kj

    resources = kj.resources(min_cpu=None, min_mem=None)
    return Kubernetes(config_file=str(kubeconfig), resources=resources)


def group_counts(emu, xgroup: str) -> tuple[int, int]:
    from caliban_flows.spec import k8s_job as kj

    wanted = kj.xgroup_id(xgroup)
    keys = [
        j["metadata"]["labels"].get(kj.JOB_KEY_LABEL)
        for j in emu.jobs()
        if j["metadata"]["labels"].get(kj.XGROUP_ID_LABEL) == wanted
    ]
    return len(keys), len(set(keys))


def submit_cmd(xgroup: str, config: str) -> list[str]:
    return [
        E.CALIBAN,
        "cluster",
        "job",
        "submit",
        "--nogpu",
        "--xgroup",
        xgroup,
        "--image_tag",
        IMAGE,
        "--experiment_config",
        config,
        "--max_qps",
        f"{MAX_QPS:g}",
        "trainer.train",
    ]


def serial(kubeconfig: Path, xgroup: str, n: int) -> float:
    """Caliban's way: one create after another, with the client's V1Job models."""
    from kubernetes import client, config

    api = config.new_client_from_config(str(kubeconfig))
    batch = client.BatchV1Api(api)
    adapter = platform(kubeconfig)
    to_model = api._ApiClient__deserialize  # the client's own dict -> V1Job
    bodies = [to_model(adapter.manifest(r), "V1Job") for r in requests(xgroup, n)]
    start = time.perf_counter()
    for body in bodies:
        batch.create_namespaced_job("default", body)
    return time.perf_counter() - start


def main() -> None:
    from devtools.k8s_emulator import K8sEmulator

    failed: list[str] = []

    def check(what: str, ok: bool) -> None:
        print(f"check: {what}: {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(what)

    run_id = E.unique()[:6]
    emu = K8sEmulator(run_containers=False, sim_step=0.01, seed=7, latency=LATENCY).start()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        kubeconfig = emu.write_kubeconfig(d / "kubeconfig")
        project = d / "project"
        E.write_project(project, requirements="")
        (project / "warm.json").write_text(json.dumps({"i": list(range(WARMUP_JOBS))}))
        (project / "exp.json").write_text(json.dumps({"i": list(range(JOBS))}))
        env = {
            **E.env_for(d / "home"),
            "KUBECONFIG": str(kubeconfig),
            "CALIBAN_POLL_SECONDS": "0.2",
        }
        env.pop("PREFECT_API_URL", None)
        try:
            warm, _, _ = E.run_out(
                submit_cmd(f"bench-kw-{run_id}", "warm.json"), cwd=project, env=env
            )
            print(f"warm-up: {WARMUP_JOBS} jobs in {warm:.1f} s (fresh home: starts Prefect)")
            cli_times = []
            for i in range(CLI_RUNS):
                xgroup = f"bench-k-{run_id}-{i}"
                t, _, log = E.run_out(submit_cmd(xgroup, "exp.json"), cwd=project, env=env)
                cli_times.append(t)
                check(
                    f"{xgroup}: '{JOBS} jobs submitted' reported",
                    f"{JOBS} jobs submitted to Kubernetes" in log,
                )
                total, distinct = group_counts(emu, xgroup)
                check(
                    f"{xgroup}: {total:,} Jobs, {total - distinct} duplicates",
                    total == JOBS == distinct,
                )

            adapter_xgroup = f"bench-ka-{run_id}"
            adapter = platform(kubeconfig)
            start = time.perf_counter()
            asyncio.run(adapter.submit_all(requests(adapter_xgroup, JOBS), max_qps=MAX_QPS))
            adapter_time = time.perf_counter() - start
            check("adapter: every Job once", group_counts(emu, adapter_xgroup) == (JOBS, JOBS))

            serial_time = serial(kubeconfig, f"bench-ks-{run_id}", JOBS)

            # Status: a group whose Jobs still run, then the same group settled.
            emu.hold(True)
            emu.latency = 0.0
            xgroup = f"bench-kst-{run_id}"
            E.run_out(submit_cmd(xgroup, "exp.json"), cwd=project, env=env)
            running, listed = E.time_status(xgroup, STATUS_RUNS, cwd=project, env=env)
            states = Counter(r["state"] for r in listed[-1])
            check(
                f"while running: {dict(states)}",
                sum(states.values()) == JOBS and not states.keys() & {"SUCCEEDED", "FAILED"},
            )
            emu.hold(False)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                from caliban_flows.spec import k8s_job as kj

                mine = [
                    j
                    for j in emu.jobs()
                    if j["metadata"]["labels"].get(kj.XGROUP_ID_LABEL) == kj.xgroup_id(xgroup)
                ]
                conditions = [j["status"].get("conditions") or [] for j in mine]
                if all(any(c["type"] == "Complete" for c in cs) for cs in conditions):
                    break
                time.sleep(0.1)
            (first,), _ = E.time_status(xgroup, 1, cwd=project, env=env)
            lists_before = emu.calls()["list jobs"]
            settled, listed = E.time_status(xgroup, STATUS_RUNS, cwd=project, env=env)
            states = Counter(r["state"] for r in listed[-1])
            check(f"settled: {dict(states)}", states == Counter({"SUCCEEDED": JOBS}))
            check("settled status lists no Jobs", emu.calls()["list jobs"] == lists_before)
        finally:
            E.stop_server(env)
            emu.stop()

    C.header(f"{JOBS:,} Kubernetes Jobs (emulator, simulated pods)")
    C.table(
        [
            (f"caliban cluster job submit, {JOBS:,} jobs, --max_qps {MAX_QPS:g}", cli_times),
            ("Kubernetes.submit_all alone", [adapter_time]),
            ("serial creates with V1Job models (Caliban's way)", [serial_time]),
            ("caliban status, jobs running (one paged list)", running),
            ("caliban status, settled group (no list)", settled),
        ]
    )
    print(f"first status after they ended (settles the run): {first:.2f} s")
    m = C.median(cli_times)
    print(
        f"ratio: serial loop / caliban = {serial_time / m:.1f}x; "
        f"serial / adapter = {serial_time / adapter_time:.1f}x"
    )
    C.verdict(f"submit {JOBS:,} <= {TARGET_SUBMIT_S:g} s (got {m:.2f} s)", m <= TARGET_SUBMIT_S)
    for label, times in (("running", running), ("settled", settled)):
        s = C.median(times)
        C.verdict(f"status {label} <= {TARGET_STATUS_S:g} s (got {s:.2f} s)", s <= TARGET_STATUS_S)
    C.verdict("correctness checks", not failed)
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
