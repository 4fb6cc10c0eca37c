"""`caliban results --xgroup X --format json` of a 1,000-job Vertex AI group whose outputs are
in a bucket, read through `devtools.storage_emulator` with 20 ms of latency per request,
against one `blob.download_as_bytes()` after another with the real google-cloud-storage client.

The group is made as a user makes one: `caliban cloud --output_bucket gs://BUCKET/caliban
--max_qps 200` of a 1,000-job sweep against `devtools.vertex_emulator` (in this process,
simulated jobs, 0.01 s per RPC), in a fresh CALIBAN_HOME; its placement records `outputs` of
kind gcs. While the emulator holds the jobs RUNNING, each job's folder under the storage
emulator's bucket folder gets a metrics.json, every fourth one a metrics.jsonl too
(bench/_results.py), as the job would write them through /gcs/BUCKET. Then the jobs end and a
`caliban status` settles the group (untimed). Both emulators trust one service-account key,
the application default of every process here.

The storage emulator runs in a process of its own (`python -m devtools.storage_emulator`).
Timed: the whole command as a user runs it (after a warm-up), `caliban status` of the same
group (what results costs beyond reading the metrics), the in-process read of the metrics alone
(`platforms.outputs.folder_metrics`), and the serial read on a sample of the files, with the
figure for all of them extrapolated. Exits 1 if the rows are wrong. `--profile`: one more
run under `python -X importtime -m cProfile`, its slowest imports and functions printed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import _engine as E
import _results as R
import vertex_status_1k as VS
import vertex_submit_1k as V

JOBS, RUNS, WARMUP, READ_RUNS, STATUS_RUNS = 1000, 5, 1, 5, 3
VERTEX_LATENCY, SIM_STEP, MAX_QPS = 0.01, 0.01, 200.0
STORAGE_LATENCY = 0.02  # seconds added to every Cloud Storage request
SERIAL_SAMPLE = 200  # files read one after another; the figure for all is extrapolated
BUCKET, PREFIX = "bench-results", "caliban"
TARGET_S = 5.0


def serial_read(url: str, names: list[str]) -> dict[str, bytes]:
    """One `download_as_bytes()` after another with google-cloud-storage's own client."""
    from google.cloud import storage

    bucket = storage.Client(client_options={"api_endpoint": url}).bucket(BUCKET)
    return {name: bucket.blob(name).download_as_bytes() for name in names}


def storage_emulator(root: Path) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """`python -m devtools.storage_emulator` in a process of its own (so this process's reads
    do not share its interpreter): the process, its URL and the environment a client needs."""
    cmd = [E.PYTHON, "-m", "devtools.storage_emulator", "--root", str(root),
           "--latency", f"{STORAGE_LATENCY:g}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=C.ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    lines = [proc.stdout.readline().strip().split("=", 1) for _ in range(3)]
    if not url.startswith("https://"):
        proc.kill()
        raise RuntimeError(f"the storage emulator did not start: {url!r}")
    return proc, url, {k: shlex.split(v)[0] for k, v in lines}


def main() -> None:
    from caliban_flows.platforms.outputs import folder_metrics
    from caliban_flows.spec.outputs import gcs_place, job_folder
    from devtools.bucket_folders import open_bucket

    checks = V.Checks()
    xgroup = f"bench-results-gcs-{E.unique()[:8]}"
    place = gcs_place(f"gs://{BUCKET}/{PREFIX}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        storage, url, storage_env = storage_emulator(d / "buckets")
        emu = V.emulator(latency=VERTEX_LATENCY, sim_step=SIM_STEP)
        # One key for both services, as one service account would be.
        emu.trust(storage_env["GOOGLE_APPLICATION_CREDENTIALS"])
        os.environ.update(storage_env)
        emu.hold(True)
        bucket_root = open_bucket(d / "buckets", BUCKET)
        project = d / "project"
        V.write_project(project, {"exp.json": JOBS})
        env = V.cli_env(d / "home", emu.endpoint)
        cloud = V.cloud_cmd(xgroup, "exp.json", MAX_QPS)
        cloud[-1:-1] = ["--output_bucket", f"gs://{BUCKET}/{PREFIX}"]
        try:
            submit, _, log = E.run_out(cloud, cwd=project, env=env)
            if f"{JOBS} jobs submitted to Vertex AI" not in log:
                raise RuntimeError(f"caliban cloud did not report {JOBS} submissions: {log}")
            _, (running,) = E.time_status(xgroup, 1, cwd=project, env=env)
            t0 = time.perf_counter()
            folders, names = [], []
            for row in sorted(running, key=lambda r: int(r["args"][1])):
                folder = job_folder(xgroup, row["name"], row["key"], row["attempt"])
                R.write_job(bucket_root / place.object_prefix(folder), int(row["args"][1]))
                folders.append(folder)
                names += [place.object_prefix(folder) + n for n in ("metrics.json",
                                                                    "metrics.jsonl")]  # fmt: skip
            names = [n for n in names if (bucket_root / n).is_file()]
            written = time.perf_counter() - t0
            emu.hold(False)
            ended, remote_states = VS.wait_until_ended(emu, xgroup)
            settle, _ = E.time_status(xgroup, 1, cwd=project, env=env)
            times, rows = R.time_results(xgroup, RUNS, WARMUP, cwd=project, env=env)
            status, _ = E.time_status(xgroup, STATUS_RUNS, cwd=project, env=env)
            in_process, found = R.time_calls(lambda: folder_metrics(place, folders, {}),
                                             READ_RUNS)  # fmt: skip
            sample = names[:: max(1, len(names) // SERIAL_SAMPLE)][:SERIAL_SAMPLE]
            serial, got = R.time_calls(lambda: serial_read(url, sample), 1)
            same = all(got[n] == (bucket_root / n).read_bytes() for n in sample)
            if "--profile" in sys.argv:
                R.profile(xgroup, cwd=project, env=env)
        finally:
            E.stop_server(env)
            emu.stop()
            storage.terminate()
            storage.wait(10)

    C.header(f"caliban results --xgroup of a {JOBS:,}-job Vertex AI group, outputs in a bucket "
             f"(storage emulator, {STORAGE_LATENCY * 1000:g} ms per request)")  # fmt: skip
    print(f"setup: caliban cloud --output_bucket of {JOBS:,} jobs {submit:.1f} s (fresh home, "
          f"starts Prefect); {len(names):,} metrics files written in {written:.1f} s; every job "
          f"ended {ended:.1f} s later ({dict(remote_states)}); the status that settled the "
          f"group {settle[0]:.1f} s")  # fmt: skip
    R.no_reference()
    per_file = serial[0] / len(sample)
    C.table([
        ("caliban results --format json (whole process)", times),
        ("  metrics read alone, in-process (folder_metrics)", in_process),
        ("caliban status --format json of the group", status),
        (f"serial download_as_bytes, {len(sample)} files (measured)", serial),
    ])  # fmt: skip
    print(
        f"serial download_as_bytes, all {len(names):,} files: {per_file * len(names):.1f} s "
        f"(extrapolated from the {len(sample)} measured, {per_file * 1000:.1f} ms per file)"
    )
    R.check_rows(checks, rows, JOBS, {"SUCCEEDED": JOBS})
    checks.expect(f"folder_metrics found {len(found):,} folders", len(found) == JOBS)
    checks.expect(f"the serial read got {len(got):,} files, as written",
                  same and len(got) == len(sample))  # fmt: skip
    checks.expect(f"output column is each job's gs://{BUCKET}/{PREFIX}/... folder",
                  all(r["output"].startswith(f"gs://{BUCKET}/{PREFIX}/{xgroup}/")
                      for r in rows))  # fmt: skip
    R.summary("bucket: caliban results --format json", times, TARGET_S, not checks.failed)
    checks.exit()


if __name__ == "__main__":
    main()
