"""`caliban build --push` of an unchanged folder: nothing may be uploaded again.

A temp project with a unique trainer/train.py is built and pushed once to the local registry
(timed), then `caliban build --push` of the same folder is timed 7 more times; each push's
uploaded layers are counted from the "<layer> Pushed" lines of its stderr. The library call
alone, `push_image(client, tag, registry)` in this process, is timed too: that is the figure
the target is about, since the whole command also pays Python start-up and hashing the folder.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import _common as C
import _engine as E

RUNS, LIB_RUNS, LIB_WARMUP = 7, 7, 1
TARGET_S = 0.5  # seconds, median of the in-process push_image of an unchanged tag
PUSH = [E.CALIBAN, "build", "--nogpu", "--push", "--registry", E.REGISTRY, "trainer.train"]
_PUSHED = re.compile(r"^\S+ Pushed$")
_MOUNTED = re.compile(r"^\S+ Mounted from ")


def count(pattern: re.Pattern, log: str) -> int:
    return sum(bool(pattern.match(line.strip())) for line in log.splitlines())


def main() -> None:
    info = E.up()
    client = info.client()
    refs: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project = d / "bench-push"
        env = E.env_for(d / "home", info)
        try:
            E.write_project(project)
            first, out, log = E.run_out(PUSH, cwd=project, env=env)
            reference = out.strip()
            tag = reference.removeprefix(f"{E.REGISTRY}/")
            refs += [tag, reference]
            first_pushed, first_mounted = count(_PUSHED, log), count(_MOUNTED, log)

            again, uploaded, skipped = [], [], 0
            for _ in range(RUNS):
                t, out, log = E.run_out(PUSH, cwd=project, env=env)
                if out.strip() != reference:
                    raise RuntimeError(f"unchanged folder, new reference {out.strip()}")
                again.append(t)
                uploaded.append(count(_PUSHED, log))
                skipped += "already in the registry" in log

            from caliban_flows.platforms.images import push_image

            lib, lib_pushed = [], 0
            for i in range(LIB_WARMUP + LIB_RUNS):
                start = time.perf_counter()
                result = push_image(client, tag, E.REGISTRY)
                elapsed = time.perf_counter() - start
                if i >= LIB_WARMUP:
                    lib.append(elapsed)
                    lib_pushed += result.pushed
        finally:
            E.remove_images(client, refs)
            E.stop_server(env)

    C.header(f"caliban build --push to {E.REGISTRY}: first push, then the unchanged folder")
    C.table(
        [
            ("first build + push", [first]),
            ("unchanged: whole command", again),
            ("unchanged: push_image()", lib),
        ]
    )
    print(f"(push_image() timed in-process after {LIB_WARMUP} warm-up call)")
    print(
        f"first push: {first_pushed} layer(s) uploaded, {first_mounted} mounted from the registry"
    )
    print(f"layers uploaded per unchanged push: {uploaded}")
    print(f"'already in the registry' said by {skipped}/{RUNS} unchanged pushes")
    print(f"push_image() of the unchanged tag reported pushed={lib_pushed}/{LIB_RUNS} times")
    m = C.median(lib)
    layers = sum(uploaded) + lib_pushed
    ok = m <= TARGET_S and layers == 0 and skipped == RUNS
    C.verdict(
        f"unchanged push_image() median <= {TARGET_S} s (got {m:.3f} s; whole command "
        f"{C.median(again):.3f} s) AND 0 layers uploaded (got {sum(uploaded)})",
        ok,
    )


if __name__ == "__main__":
    main()
