"""Shared helpers for the `caliban results` benches: the metrics files each job of an
`{"i": [0..n-1]}` sweep leaves in its output folder, the timed command and the checks of
what it lists.

Every job writes `metrics.json` (accuracy, loss); every fourth one also writes a
`metrics.jsonl` series of 3 steps (step, loss, lr), whose last line gives `step` and `lr`
and whose `loss` the object's overrides, as the convention says.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import _common as C
import _engine as E

SERIES_EVERY = 4  # every fourth job also writes metrics.jsonl
STEPS = 3


def files_of(i: int) -> dict[str, str]:
    """The metrics files of job i: file name -> its text."""
    files = {"metrics.json": json.dumps({"accuracy": 0.5 + i / 2000, "loss": 1 - i / 1000})}
    if i % SERIES_EVERY == 0:
        lines = [{"step": s, "loss": 2.0 - s / 10, "lr": 0.1 / (s + 1)} for s in range(STEPS)]
        files["metrics.jsonl"] = "".join(json.dumps(line) + "\n" for line in lines)
    return files


def expected(i: int) -> dict:
    """Job i's metric columns as `caliban results --format json` should show them."""
    series = i % SERIES_EVERY == 0
    return {
        "accuracy": 0.5 + i / 2000,
        "loss": 1 - i / 1000,
        "step": STEPS - 1 if series else None,
        "lr": 0.1 / STEPS if series else None,
    }


def write_job(folder: Path, i: int) -> int:
    """Write job i's metrics files into its folder; how many files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = files_of(i)
    for name, text in files.items():
        (folder / name).write_text(text)
    return len(files)


def results_cmd(xgroup: str) -> list[str]:
    return [E.CALIBAN, "results", "--xgroup", xgroup, "--format", "json"]


def time_results(xgroup: str, runs: int, warmup: int, **kwargs) -> tuple[list[float], list]:
    """Wall times of `runs` runs of `caliban results --xgroup X --format json` after `warmup`
    untimed ones, and the rows the last run printed."""
    times, rows = [], []
    for i in range(warmup + runs):
        t, out, _ = E.run_out(results_cmd(xgroup), **kwargs)
        rows = json.loads(out)
        if i >= warmup:
            times.append(t)
    return times, rows


def check_rows(checks, rows: list[dict], jobs: int, states: dict[str, int] | None = None) -> None:
    """The rows list each job once, with its own metric values (by its `i` column), `final`
    when it ended and `latest` while it runs; and, if given, these counts of states."""
    wrong = [r["name"] for r in rows if {k: r.get(k) for k in expected(0)} != expected(r["i"])]
    names = {r["name"] for r in rows}
    values = {r["i"] for r in rows}
    checks.expect(f"{len(rows):,} rows, {len(names):,} names, {len(values):,} values of i "
                  f"(expected {jobs:,} each)",
                  len(rows) == len(names) == jobs and values == set(range(jobs)))  # fmt: skip
    checks.expect(f"metric values as written (accuracy, loss, step, lr): {len(wrong)} rows wrong"
                  + (f", e.g. {wrong[:3]}" if wrong else ""), not wrong)  # fmt: skip
    ended = {"SUCCEEDED", "FAILED", "CANCELLED"}
    marks = [r["metrics"] == ("final" if r["state"] in ended else "latest") for r in rows]
    checks.expect(f"`metrics` column final for ended jobs, latest for the others: "
                  f"{marks.count(False)} wrong", all(marks))  # fmt: skip
    if states is not None:
        seen = state_counts(rows)
        checks.expect(f"states {json.dumps(seen, sort_keys=True)} (expected "
                      f"{json.dumps(states, sort_keys=True)})", seen == states)  # fmt: skip


def state_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows are in each state."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r["state"]] = seen.get(r["state"], 0) + 1
    return seen


def time_calls(call, runs: int, warmup: int = 1) -> tuple[list[float], object]:
    """In-process wall times of `call()` after `warmup` untimed calls, and its last result."""
    times, result = [], None
    for i in range(warmup + runs):
        start = time.perf_counter()
        result = call()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times, result


def no_reference() -> None:
    print("Caliban 0.4.2: no `results` command (it had alpha MLflow hooks only), so no ratio")


def summary(label: str, times: list[float], target: float, ok_checks: bool) -> None:
    m = C.median(times)
    C.verdict(f"{label} median <= {target:g} s (got {m:.3f} s) AND the 1,000 rows right",
              m <= target and ok_checks)  # fmt: skip


def profile(xgroup: str, top: int = 25, **kwargs) -> None:
    """Where one more run's time goes (`--profile`): the slowest imports
    (`python -X importtime`) and the functions by cumulative time (cProfile)."""
    import pstats
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        stats = f"{tmp}/results.prof"
        cmd = [E.PYTHON, "-X", "importtime", "-m", "cProfile", "-o", stats, *results_cmd(xgroup)]
        done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        imports = []  # "import time: self | cumulative | name", nested names indented
        for line in done.stderr.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3 and parts[1].strip().isdigit() and parts[2][:2] != "  ":
                imports.append((int(parts[1]), parts[2].strip()))
        C.header("profile: top-level imports by cumulative time (python -X importtime)")
        for us, name in sorted(imports, reverse=True)[:top]:
            print(f"{us / 1e6:7.3f} s  {name}")
        C.header("profile: functions by cumulative time (cProfile)")
        pstats.Stats(stats).sort_stats("cumulative").print_stats(top)
