"""`expansion` on a 100,000-experiment config, ours vs Caliban 0.4.2.

Times `expansion --print_flags` (the target) and the default JSON output, with stdout
written to a file, and checks both tools write byte-identical output.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import _common as C

OUR_RUNS, REF_RUNS, WARMUP = 7, 3, 1
TARGET_S, TARGET_RATIO = 0.5, 5.0

CONFIG = {
    "a": list(range(10)),
    "b": [round(0.001 * i, 3) for i in range(10)],
    "c": [f"s{i}" for i in range(10)],
    "d": [True, False],
    "e": list(range(50)),
    "const": "something",
}


def main() -> None:
    jobs = math.prod(len(v) for v in CONFIG.values() if isinstance(v, list))
    assert jobs == 100_000, jobs
    ref = C.caliban_bin()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "exp.json").write_text(json.dumps(CONFIG))
        for flags, name in ((["--print_flags"], "--print_flags"), ([], "JSON (no flag)")):
            times, outs = {}, {}
            for who, bin_dir, runs in (("ours", C.OUR_BIN, OUR_RUNS), ("Caliban", ref, REF_RUNS)):
                outs[who] = d / f"{who}.out"
                cmd = [str(bin_dir / "expansion"), *flags, "exp.json"]
                times[who] = C.time_runs(cmd, runs, WARMUP, out=outs[who], cwd=d)
            ours_bytes = outs["ours"].read_bytes()
            same = ours_bytes == outs["Caliban"].read_bytes()

            C.header(f"expansion {name}, {jobs:,} experiments (after {WARMUP} warm-up run)")
            C.table([("ours", times["ours"]), ("Caliban 0.4.2", times["Caliban"])])
            r = C.ratio(times["Caliban"], times["ours"])
            lines = ours_bytes.count(b"\n")
            print(f"output: {len(ours_bytes):,} bytes, {lines:,} lines")
            print(f"outputs identical: {'yes' if same else 'no'}")
            if flags:
                ours = C.median(times["ours"])
                ok = ours <= TARGET_S and r >= TARGET_RATIO
                C.verdict(
                    f"ours median <= {TARGET_S} s (got {ours:.3f} s) "
                    f"AND ratio >= {TARGET_RATIO:.0f}x (got {r:.1f}x)",
                    ok,
                )
            else:
                print("target: none (reported only)")


if __name__ == "__main__":
    main()
