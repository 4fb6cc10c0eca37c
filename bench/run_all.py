"""Run the bench scripts in sequence with this interpreter."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "cli_startup.py",
    "expansion_100k.py",
    "cloud_dry_run_1k.py",
    "rebuild_code_only.py",
    "push_unchanged.py",
    "orchestration_overhead.py",
    "status_1k.py",
    "results_local_1k.py",
    "vertex_submit_1k.py",
    "vertex_quota.py",
    "vertex_status_1k.py",
    "results_bucket_1k.py",
    "sweep_scale.py",
    "k8s_1k.py",
    "serve_round.py",
    "secret_scan.py",
]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        print(f"\n##### {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(HERE / name)], cwd=HERE.parent).returncode
        print(f"##### {name}: exit {code}, {time.perf_counter() - start:.1f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nscripts that crashed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
