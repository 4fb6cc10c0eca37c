"""The credential scan of a 10,000-file project: what `caliban build` adds before it hashes.

A temp project of 10,000 files (sources, JSON configs, binaries of 1-64 KB, in 100 folders)
with 3 keys among them. Timed in this process, median of 7 after 1 warm-up:
- `build_context(root)`: the file list after .dockerignore, with every file's first 4 KB
  read and classified (spec.secret_files), keys left out;
- the same list without the scan (`docker.utils.build.exclude_paths`), for the difference.
Caliban 0.4.2 does no such scan (it sends the folder as it is), so there is no side by side.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import _common as C

FILES, RUNS, WARMUP = 10_000, 7, 1
TARGET_S = 0.2  # seconds, median of build_context on FILES files


def write_project(root: Path) -> None:
    rng = os.urandom
    for i in range(FILES):
        folder = root / f"pkg{i % 100:02d}"
        folder.mkdir(exist_ok=True)
        kind = i % 4
        if kind == 0:
            (folder / f"m{i}.py").write_text(f"VALUE = {i}\n" * 20)
        elif kind == 1:
            (folder / f"c{i}.json").write_text(json.dumps({"type": "config", "i": i}))
        else:
            (folder / f"d{i}.bin").write_bytes(rng(1024 * (1 + i % 64)))
    (root / "key.json").write_text(
        json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----"})
    )
    (root / "pkg00" / "id_rsa").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n")
    (root / "application_default_credentials.json").write_text("{}")


def timed(call) -> list[float]:
    times = []
    for i in range(WARMUP + RUNS):
        start = time.perf_counter()
        call()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    from docker.utils.build import exclude_paths

    from caliban_flows.platforms.images import build_context

    C.header(f"credential scan of a {FILES:,}-file project")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_project(root)
        context = build_context(root)
        scanned = timed(lambda: build_context(root))
        plain = timed(lambda: exclude_paths(str(root), []))
    print(f"left out: {', '.join(path for path, _ in context.left_out)}")
    C.table([("build_context (scan)", scanned), ("exclude_paths only", plain)])
    print(f"the scan's own cost (medians): {C.median(scanned) - C.median(plain):.3f} s")
    C.verdict(f"build_context of {FILES:,} files <= {TARGET_S} s (median)",
              C.median(scanned) <= TARGET_S and len(context.left_out) == 3)  # fmt: skip


if __name__ == "__main__":
    main()
