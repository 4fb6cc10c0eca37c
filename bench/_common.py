"""Shared helpers for the bench scripts: paths, timing, statistics and printing."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so the bench scripts can `import devtools`
    sys.path.insert(0, str(ROOT))

OUR_BIN = ROOT / ".venv" / "bin"


def caliban_bin() -> Path:
    """The bin/ folder of the Caliban 0.4.2 reference venv (installed on first use)."""
    from devtools import caliban_ref

    return caliban_ref.ensure()


def run_once(cmd: list[str], stdout=subprocess.DEVNULL, **kwargs) -> float:
    """Wall time of one whole process run, in seconds. Raises if it exits non-zero."""
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, **kwargs)
    elapsed = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{Path(cmd[0]).name} exited {done.returncode}: {last}")
    return elapsed


def time_runs(cmd: list[str], runs: int, warmup: int = 0, out: Path | None = None, **kw):
    """Wall times of `runs` runs after `warmup` untimed ones; stdout goes to `out` if given."""
    times = []
    for i in range(warmup + runs):
        if out is None:
            t = run_once(cmd, **kw)
        else:
            with open(out, "wb") as f:
                t = run_once(cmd, stdout=f, **kw)
        if i >= warmup:
            times.append(t)
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def header(title: str) -> None:
    print(f"\n=== {title} ===")


def table(rows: list[tuple[str, list[float]]]) -> None:
    """Print one line per (label, times): median, min, max and run count, in seconds."""
    width = max(len(label) for label, _ in rows)
    print(f"{'':{width}}  {'median':>8}  {'min':>8}  {'max':>8}  runs")
    for label, times in rows:
        print(
            f"{label:{width}}  {median(times):8.3f}s {min(times):8.3f}s "
            f"{max(times):8.3f}s  {len(times):4d}"
        )


def ratio(theirs: list[float], ours: list[float]) -> float:
    """How many times slower Caliban 0.4.2 is than ours (median over median)."""
    r = median(theirs) / median(ours)
    print(f"ratio Caliban 0.4.2 / ours (medians): {r:.1f}x")
    return r


def verdict(target: str, ok: bool) -> None:
    print(f"target: {target}  ->  {'PASS' if ok else 'FAIL'}")
