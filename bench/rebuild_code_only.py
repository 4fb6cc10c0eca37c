"""`caliban build` after a code-only change: only the code layer may be rebuilt.

A temp project whose requirements.txt (`six`) and trainer/train.py carry a fresh unique
comment, so neither the image nor the dependency layer exists from an earlier run. The first
build is timed once; then 5 times trainer/train.py alone gets a new comment and the build is
timed again. Docker's build log (caliban's stderr) must say `Using cache` for the
`pip install -r requirements.txt` step of every code-only rebuild.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import _common as C
import _engine as E

RUNS = 5
TARGET_S = 2.0  # seconds, median code-only rebuild
BUILD = [E.CALIBAN, "build", "--nogpu", "trainer.train"]


def pip_step_cached(log: str) -> bool | None:
    """Whether the `pip install -r requirements.txt` step said `Using cache` (None: no step)."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Step ") and "pip install" in line and "requirements.txt" in line:
            step = []
            for following in lines[i + 1 :]:
                if following.startswith("Step "):
                    break
                step.append(following)
            return any("Using cache" in x for x in step)
    return None


def main() -> None:
    info = E.up()
    client = info.client()
    tags: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project = d / "bench-rebuild"
        env = E.env_for(d / "home", info)
        try:
            E.write_project(project, requirements=f"# bench {E.unique()}\nsix\n")
            first, out, log = E.run_out(BUILD, cwd=project, env=env)
            tags.append(out.strip())
            first_cached = pip_step_cached(log)

            rebuilds, cached = [], []
            for _ in range(RUNS):
                E.write_train(project, E.unique())
                t, out, log = E.run_out(BUILD, cwd=project, env=env)
                tag = out.strip()
                if tag in tags:
                    raise RuntimeError(f"a code change kept the same tag {tag}: nothing rebuilt")
                tags.append(tag)
                rebuilds.append(t)
                cached.append(pip_step_cached(log))
        finally:
            E.remove_images(client, tags)
            E.stop_server(env)

    C.header("caliban build --nogpu: first build, then code-only rebuilds (trainer/train.py)")
    C.table([("first build", [first]), ("code-only rebuild", rebuilds)])
    m = C.median(rebuilds)
    print(f"ratio first build / code-only rebuild (median): {first / m:.1f}x")
    ran = {True: "no (Using cache)", False: "yes", None: "step not found"}[first_cached]
    print(f"first build ran the dependency step: {ran}")
    print(f"pip step 'Using cache' per rebuild: {['yes' if c else 'NO' for c in cached]}")
    rebuilt = not all(c is True for c in cached)
    print(f"dependency layer rebuilt: {'yes' if rebuilt else 'no'}")
    ok = m <= TARGET_S and not rebuilt
    C.verdict(
        f"code-only rebuild median <= {TARGET_S} s (got {m:.3f} s) "
        f"AND dependency layer never rebuilt (rebuilt: {'yes' if rebuilt else 'no'})",
        ok,
    )


if __name__ == "__main__":
    main()
