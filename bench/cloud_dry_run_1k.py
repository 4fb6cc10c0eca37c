"""`caliban cloud --dry_run` of a 1,000-job sweep, ours vs Caliban 0.4.2.

The project is a real folder with a `trainer` package; nothing is built or submitted.
Caliban 0.4.2 writes a sqlite DB under ~/.caliban, so it runs with HOME in the temp dir.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

import _common as C

OUR_RUNS, REF_RUNS = 9, 3
TARGET = 1.0  # seconds, median of ours
CONFIG = {
    "lr": [round(0.001 * i, 3) for i in range(1, 11)],
    "batch": [16 * i for i in range(1, 11)],
    "seed": list(range(10)),
}
ARGS = ["--nogpu", "--project_id", "bench-project"]
TAIL = ["--experiment_config", "exp.json", "trainer.train", "--", "--epochs", "3"]


def job_lines(cmd: list[str], **kw) -> int:
    """Run once (untimed, doubles as the warm-up) and count "jobId:" lines on stdout+stderr."""
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"exited {done.returncode}: {last}")
    return sum("jobId:" in line for line in (done.stdout + done.stderr).splitlines())


def main() -> None:
    ref = C.caliban_bin()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "trainer").mkdir()
        (d / "trainer" / "__init__.py").write_text("")
        (d / "trainer" / "train.py").write_text(
            "import sys\n\nif __name__ == '__main__':\n    print('training with', sys.argv[1:])\n"
        )
        (d / "exp.json").write_text(json.dumps(CONFIG))
        (d / "home").mkdir()

        ours_cmd = [str(C.OUR_BIN / "caliban"), "cloud", "--dry_run", *ARGS, "--xgroup", "bench"]
        ours_cmd += TAIL
        ours_jobs = job_lines(ours_cmd, cwd=d)
        ours = C.time_runs(ours_cmd, OUR_RUNS, cwd=d)

        ref_cmd = [str(ref / "caliban"), "cloud", "--dry_run", *ARGS, *TAIL]
        ref_env = {**os.environ, "HOME": str(d / "home")}
        try:
            ref_jobs = job_lines(ref_cmd, cwd=d, env=ref_env)
            theirs = C.time_runs(ref_cmd, REF_RUNS, cwd=d, env=ref_env)
            ref_error = None
        except (RuntimeError, OSError) as e:
            ref_error = str(e)

    jobs = math.prod(len(v) for v in CONFIG.values())
    C.header(f"caliban cloud --dry_run, {jobs:,}-job sweep (after 1 warm-up run)")
    C.table([("ours", ours)] + ([] if ref_error else [("Caliban 0.4.2", theirs)]))
    print(f"ours printed {ours_jobs:,} 'jobId:' lines (expected {jobs:,})")
    if ref_error:
        print(f"Caliban 0.4.2 dry run failed, ratio skipped: {ref_error}")
    else:
        print(f"Caliban 0.4.2 printed {ref_jobs:,} 'jobId:' lines")
        C.ratio(theirs, ours)
    m = C.median(ours)
    ok = m <= TARGET and ours_jobs == jobs
    C.verdict(f"ours median <= {TARGET} s (got {m:.3f} s) AND all {jobs:,} jobs listed", ok)


if __name__ == "__main__":
    main()
