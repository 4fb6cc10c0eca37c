"""A large Vertex AI sweep as a user runs it: `caliban cloud`, then `caliban status`.

    .venv/bin/python bench/sweep_scale.py --jobs 500 --max_qps 200
    .venv/bin/python bench/sweep_scale.py --preset 10k     # 10,000 jobs, --max_qps 1000
    .venv/bin/python bench/sweep_scale.py --preset 100k    # 100,000 jobs, --max_qps 2000

Everything runs against `devtools.vertex_emulator` in this process, in simulate mode (jobs on a
timer, no Docker), with a fresh CALIBAN_HOME whose Prefect server an untimed 10-job warm-up
submission starts, and a prebuilt `--image_tag` (nothing is built); the helpers are
vertex_submit_1k.py's. The experiment config gives every job SIX flags (learning rate, batch
size, weight decay, dropout, warm-up steps, optimizer): a cartesian product of exactly N jobs.

- submit: wall time of `caliban cloud --nogpu --project_id P --region R --xgroup G --image_tag
  IMG --experiment_config exp.json --max_qps Q trainer.train` (one run). If it fails, the
  script prints its last stderr line and exits 1.
- status: `caliban status --xgroup G --format json`, 3 runs after every job ended in the
  emulator (the first run also settles the group's flow run); each must list N jobs.
- peak RSS of each caliban command: ru_maxrss from os.wait4() on that one child (Linux: the
  largest resident set of the child or of any descendant it waited for).
- bytes in Prefect per job: the group's records read back from Prefect's REST API, as compact
  JSON, divided by N (flow runs, their state history, task runs, logs, and every artifact
  version linked to them; a run's current state counted once, in its history), after the
  submit and again after the status runs. The growth of
  the server's SQLite files (db + wal) across the submit is printed beside it as a rough check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import _engine as E
import vertex_status_1k as VS
import vertex_submit_1k as V

PRESETS = {"10k": (10_000, 1000.0), "100k": (100_000, 2000.0)}
DEFAULT_PRESET = "10k"
STATUS_RUNS, WARMUP_JOBS = 3, 10
# Per RPC. Low enough that the adapter's 64 requests in flight allow 2,000 QPS and more.
LATENCY = 0.01
TARGET_STATUS_S, TARGET_RSS_MB = 3.0, 400.0
TARGETED_JOBS = 10_000  # the run the targets are for; other sizes are reported only

FLAGS = ("learning_rate", "batch_size", "weight_decay", "dropout", "warmup_steps", "optimizer")
OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad", "adafactor", "lamb", "lion", "nadam")


# ----------------------------------------------------------------------- the experiment config


def factor_sizes(n: int, k: int = len(FLAGS)) -> list[int]:
    """k list lengths, as even as n's prime factors allow, whose product is exactly n."""
    primes, m, p = [], n, 2
    while p * p <= m:
        while m % p == 0:
            primes.append(p)
            m //= p
        p += 1
    if m > 1:
        primes.append(m)
    sizes = [1] * k
    for prime in sorted(primes, reverse=True):
        sizes[sizes.index(min(sizes))] *= prime
    return sorted(sizes, reverse=True)


def flag_values(flag: str, size: int) -> list:
    """`size` distinct, plausible values of one flag."""
    i = range(size)
    if flag == "learning_rate":
        return [float(f"{1e-5 * 1.5**j:.3g}") for j in i]
    if flag == "batch_size":
        return [16 * (j + 1) for j in i]
    if flag == "weight_decay":
        return [round(0.005 * j, 4) for j in i]
    if flag == "dropout":
        return [round(0.5 * j / size, 4) for j in i]
    if flag == "warmup_steps":
        return [250 * j for j in i]
    return [OPTIMIZERS[j] if j < len(OPTIMIZERS) else f"{OPTIMIZERS[j % 9]}_v{j}" for j in i]


def experiment_config(n: int) -> dict[str, list]:
    sizes = factor_sizes(n)
    config = {flag: flag_values(flag, size) for flag, size in zip(FLAGS, sizes)}
    for flag, values in config.items():
        assert len(set(map(str, values))) == len(values), (flag, values)
    return config


# ----------------------------------------------------------------------- measuring a command


def run_measured(cmd: list[str], **kwargs) -> tuple[float, int, str, str, float]:
    """(wall seconds, exit code, stdout, stderr, peak RSS in MB) of one whole process run.

    The peak RSS is ru_maxrss of os.wait4() on this child alone. getrusage(RUSAGE_CHILDREN)
    would be a high-water mark over every child reaped so far (the warm-up's included), so a
    smaller later command could not be told apart.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, **kwargs)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    return wall, proc.returncode, stdout, stderr, usage.ru_maxrss / 1024  # KiB on Linux


RSS_HOW = (
    "how: ru_maxrss from os.wait4() on each caliban child alone (its largest process, "
    "descendants it waited for included)"
)
BYTES_HOW = (
    "how: the group's records read back through Prefect's REST API (flow runs tagged "
    "xgroup:G, their state history, task runs, logs, and every artifact version linked to "
    "them), each as compact JSON, summed, / N; a run's current state is counted once, in its "
    "history"
)


def target_note(n: int) -> str:
    if n == TARGETED_JOBS:
        return "target"
    return "no target" if n > TARGETED_JOBS else f"target at {TARGETED_JOBS:,} jobs"


def last_line(text: str) -> str:
    return (text.strip().splitlines() or ["?"])[-1]


def short(line: str, keep: int = 300) -> str:
    """The error line, cut when it echoes a whole request (Prefect's 422 quotes every job), with
    the validation message it holds, if any."""
    if len(line) <= keep:
        return line
    msg = re.search(r"'msg': '([^']*)'", line)
    cut = f"{line[:keep]} ... [{len(line):,} characters in all]"
    return cut + (f"\n  its message: {msg.group(1)}" if msg else "")


# ----------------------------------------------------------------------- Prefect's records


def prefect_url(home: Path) -> str:
    return json.loads((home / "server.json").read_text())["url"]


def _size(record) -> int:
    return len(json.dumps(record, separators=(",", ":")).encode())


def group_bytes(url: str, xgroup: str) -> dict[str, tuple[int, int]]:
    """{kind: (records, bytes as compact JSON)} of the group's records in Prefect."""
    import httpx

    from caliban_flows.state.prefect_api import paged

    with httpx.Client(base_url=url, timeout=120, trust_env=False) as http:
        tags = {"tags": {"all_": ["caliban", f"xgroup:{xgroup}"]}}
        runs = paged(http, "/flow_runs/filter", {"flow_runs": tags})
        ids = [r["id"] for r in runs]
        states = []
        for run_id in ids:
            response = http.get("/flow_run_states/", params={"flow_run_id": run_id})
            response.raise_for_status()
            states.extend(response.json())
        by_run = {"flow_runs": {"id": {"any_": ids}}}
        tasks = paged(http, "/task_runs/filter", by_run) if ids else []
        logs = paged(http, "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}}) if ids else []
        arts = paged(http, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": ids}}})
    found = {
        # The run's current state is a row of its state history: count it there, once.
        "flow runs (less state)": [{k: v for k, v in r.items() if k != "state"} for r in runs],
        "flow run states": states,
        "task runs": tasks,
        "logs": logs,
        "artifacts (all versions)": arts if ids else [],
    }
    return {kind: (len(recs), sum(map(_size, recs))) for kind, recs in found.items()}


def sqlite_bytes(home: Path) -> int:
    db = home / "prefect" / "prefect.db"
    return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())


def print_bytes(label: str, found: dict[str, tuple[int, int]], n: int) -> int:
    total = sum(b for _, b in found.values())
    parts = ", ".join(f"{kind} {count:,} = {b:,} B" for kind, (count, b) in found.items())
    print(f"bytes in Prefect per job, {label}: {total / n:,.0f} B ({total:,} B / {n:,} jobs)")
    print(f"  read back: {parts}")
    return total


# ----------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> tuple[int, float, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help=f"10k: 10,000 jobs at --max_qps 1000; 100k: 100,000 jobs at "
                             f"--max_qps 2000 (default when --jobs is not given: "
                             f"{DEFAULT_PRESET})")  # fmt: skip
    parser.add_argument("--jobs", type=int, help="jobs in the sweep (overrides the preset)")
    parser.add_argument("--max_qps", type=float, help="caliban cloud --max_qps")
    args = parser.parse_args(argv)
    preset = args.preset or (None if args.jobs else DEFAULT_PRESET)
    jobs, qps = PRESETS[preset] if preset else (None, 200.0)
    jobs = args.jobs or jobs
    qps = args.max_qps or qps
    if jobs < 1:
        parser.error("--jobs must be at least 1")
    return jobs, qps, f"--preset {preset}" if preset and not args.jobs else f"--jobs {jobs}"


def main(argv: list[str] | None = None) -> int:
    n, max_qps, label = parse_args(argv)
    targeted = n == TARGETED_JOBS
    checks = V.Checks()
    run_id = E.unique()[:8]
    xgroup = f"bench-scale-{run_id}"
    config = experiment_config(n)
    sizes = [len(v) for v in config.values()]
    emu = V.emulator(latency=LATENCY)
    print(f"sweep_scale {label}: {n:,} jobs x {len(FLAGS)} flags "
          f"({' x '.join(map(str, sizes))}), --max_qps {max_qps:g}, emulator latency "
          f"{LATENCY} s per RPC, simulate mode", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project, home = d / "project", d / "home"
        V.write_project(project, {"warm.json": WARMUP_JOBS})
        (project / "exp.json").write_text(json.dumps(config))
        env = V.cli_env(home, emu.endpoint)
        try:
            t, _, _ = E.run_out(V.cloud_cmd(f"{xgroup}-warm", "warm.json", max_qps),
                                cwd=project, env=env)  # fmt: skip
            print(f"warm-up: {WARMUP_JOBS} jobs in {t:.1f} s (fresh home: starts Prefect)")
            url = prefect_url(home)
            db_before = sqlite_bytes(home)
            cmd = V.cloud_cmd(xgroup, "exp.json", max_qps)
            submit, code, _, err, submit_rss = run_measured(cmd, cwd=project, env=env)
            db_growth = sqlite_bytes(home) - db_before
            if code:
                C.header(f"caliban cloud of {n:,} six-flag Vertex AI jobs ({label}): FAILED")
                print(f"submit: exit {code} after {submit:.2f} s, peak RSS {submit_rss:.0f} MB  "
                      f"[{target_note(n)}: the submit succeeds]")  # fmt: skip
                print(f"  {RSS_HOW}")
                print(f"error: {short(last_line(err))}")
                created, _ = V.group_counts(emu, xgroup)
                print(f"Vertex jobs created in the emulator for this xgroup: {created:,}")
                C.verdict(f"{n:,}-job submit succeeds", False)
                return 1
            after_submit = group_bytes(url, xgroup)
            ended, remote = VS.wait_until_ended(emu, xgroup)
            checks.group(xgroup, n, *V.group_counts(emu, xgroup))
            status_cmd = [E.CALIBAN, "status", "--xgroup", xgroup, "--format", "json"]
            status = []  # (wall, peak RSS MB, rows)
            for _ in range(STATUS_RUNS):
                wall, code, out, err, rss = run_measured(status_cmd, cwd=project, env=env)
                if code:
                    raise RuntimeError(f"caliban status exited {code}: {last_line(err)}")
                status.append((wall, rss, json.loads(out)))
            after_status = group_bytes(url, xgroup)
        finally:
            E.stop_server(env)
            emu.stop()

    C.header(f"caliban cloud + status of {n:,} six-flag Vertex AI jobs ({label})")
    aim = target_note(n)
    print(f"submit (wall, 1 run): {submit:.2f} s  [{aim}: the submit succeeds]")
    print(f"  every job ended {ended:.1f} s later: {json.dumps(dict(remote))}")
    walls = [s[0] for s in status]
    print(f"status --format json: median {C.median(walls):.3f} s of {STATUS_RUNS} runs  "
          f"[{aim}: <= {TARGET_STATUS_S:g} s]")  # fmt: skip
    print(f"  runs: {', '.join(f'{w:.3f}' for w in walls)} s (the first also settles the run)")
    rss_status = max(s[1] for s in status)
    print(f"peak RSS, caliban cloud: {submit_rss:.0f} MB; caliban status: {rss_status:.0f} MB "
          f"(max of {', '.join(f'{s[1]:.0f}' for s in status)})  "
          f"[{aim}: <= {TARGET_RSS_MB:g} MB each]")  # fmt: skip
    print(f"  {RSS_HOW}")
    print_bytes("after the submit", after_submit, n)
    print_bytes("after status settled the group", after_status, n)
    print(f"  {BYTES_HOW}")
    print(f"  rough check: the server's SQLite files (db + wal) grew {db_growth:,} B during the "
          f"submit ({db_growth / n:,.0f} B per job)")  # fmt: skip

    for i, (_, _, rows) in enumerate(status):
        keys = {row["key"] for row in rows}
        ok = len(rows) == n and len(keys) == n and all(r["xgroup"] == xgroup for r in rows)
        checks.expect(f"status run {i + 1} lists {len(rows):,} jobs, {len(keys):,} keys", ok)
    nflags = {sum(a.startswith("--") for a in row["args"]) for row in status[-1][2]}
    checks.expect(f"every job has {len(FLAGS)} flags (got {sorted(nflags)})",
                  nflags == {len(FLAGS)})  # fmt: skip

    status_s, worst_rss = C.median(walls), max(submit_rss, rss_status)
    if targeted:
        C.verdict(f"{n:,}-job submit succeeds", True)
        C.verdict(f"status --format json median <= {TARGET_STATUS_S:g} s (got {status_s:.3f} s)",
                  status_s <= TARGET_STATUS_S)  # fmt: skip
        C.verdict(f"peak RSS of each command <= {TARGET_RSS_MB:g} MB (got {worst_rss:.0f} MB)",
                  worst_rss <= TARGET_RSS_MB)  # fmt: skip
    else:
        print(f"{n:,} jobs: reported, no target (the targets are for {TARGETED_JOBS:,} jobs)")
    checks.exit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
