"""`caliban --help` and `expansion --help` start-up time, ours vs Caliban 0.4.2.

Also checks with `python -X importtime` that importing our CLI pulls in none of the
heavy libraries (they must load only when a command needs them).
"""

from __future__ import annotations

import subprocess
import tempfile

import _common as C

RUNS, WARMUP = 15, 2
TARGET = 0.25  # seconds, median of our `caliban --help`
HEAVY = ["prefect", "docker", "google.cloud", "kubernetes", "pandas"]


def imported_modules() -> list[str]:
    """Every module `import caliban_flows.cli.main` imports, from `-X importtime`."""
    done = subprocess.run(
        [str(C.OUR_BIN / "python"), "-X", "importtime", "-c", "import caliban_flows.cli.main"],
        capture_output=True,
        text=True,
        check=True,
        cwd=C.ROOT,
    )
    return [
        line.rsplit("|", 1)[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line and "imported package" not in line
    ]


def main() -> None:
    ref = C.caliban_bin()
    with tempfile.TemporaryDirectory() as tmp:
        times = {}
        for tool in ("caliban", "expansion"):
            for who, bin_dir in (("ours", C.OUR_BIN), ("Caliban 0.4.2", ref)):
                cmd = [str(bin_dir / tool), "--help"]
                times[tool, who] = C.time_runs(cmd, RUNS, WARMUP, cwd=tmp)

    for tool in ("caliban", "expansion"):
        C.header(f"{tool} --help ({RUNS} runs each after {WARMUP} warm-up runs)")
        C.table([(f"{who} {tool} --help", times[tool, who]) for who in ("ours", "Caliban 0.4.2")])
        C.ratio(times[tool, "Caliban 0.4.2"], times[tool, "ours"])
        if tool == "caliban":
            ours = C.median(times[tool, "ours"])
            C.verdict(f"ours median <= {TARGET} s (got {ours:.3f} s)", ours <= TARGET)

    C.header("python -X importtime -c 'import caliban_flows.cli.main'")
    names = imported_modules()
    found = sorted({n for n in names for h in HEAVY if n == h or n.startswith(h + ".")})
    print(f"{len(names)} modules imported; checked for: {', '.join(HEAVY)}")
    print(f"heavy modules imported: {', '.join(found) if found else 'none'}")
    C.verdict("none of them imported", bool(names) and not found)


if __name__ == "__main__":
    main()
