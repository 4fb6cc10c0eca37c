"""What Prefect orchestration costs per job: `caliban run` of a sweep vs plain `docker run`.

A 10-job sweep of a trivial trainer (prints its args, exits 0) on a prebuilt image: timed as
`caliban run --image_id TAG` (each job a container, one after another, through a Prefect flow
run; warm server, a fresh xgroup per run) and as 10 `docker run --rm TAG --i k` one after
another. Per-job overhead = (median caliban total - median docker total) / 10.

The cold start of the local Prefect server is timed too, in fresh caliban homes: the
`backend.api_url()` call alone, and a first-ever `caliban status` end to end (which also
starts the server the warm runs then use).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import _common as C
import _engine as E

N, RUNS, WARMUP = 10, 3, 1
TARGET_JOB_S = 1.0  # seconds of overhead per job, warm
TARGET_START_S = 3.0  # seconds for backend.api_url() in a fresh home
API_URL = (
    "from caliban_flows.server import backend; import time; t = time.perf_counter(); "
    "backend.api_url(); print(time.perf_counter() - t)"
)


def _waited(log: str) -> float:
    """Seconds `caliban` reported waiting for the server ("waited N s ..."), else 0."""
    match = re.search(r"waited ([0-9.]+) s for the Prefect server", log)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    info = E.up()
    client = info.client()
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise RuntimeError("no docker CLI on PATH")
    run_id = E.unique()[:8]
    xgroups = [f"bench-orch-{run_id}-{i}" for i in range(WARMUP + RUNS)]
    tag = None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        project = d / "bench-orch"
        env = E.env_for(d / "home", info)
        cold_env = E.env_for(d / "cold-home", info)
        first_env = E.env_for(d / "first-home", info)
        try:
            # Cold start, alone: a fresh home whose server is stopped again right after.
            cold_wall, out, _ = E.run_out([E.PYTHON, "-c", API_URL], env=cold_env)
            cold_api = float(out.strip().splitlines()[-1])
            E.stop_server(cold_env)
            # A user's real first command: a new project, so `caliban run` builds its image
            # while the server starts.
            fresh = d / "fresh-project"
            E.write_project(fresh, requirements=f"six\n# {E.unique()}\n")
            fresh_run, _, log = E.run_out(
                [E.CALIBAN, "run", "--nogpu", "--xgroup", "first", "trainer.train"],
                cwd=fresh, env=first_env,
            )  # fmt: skip
            fresh_wait = _waited(log)
            E.stop_server(first_env)
            E.write_project(project)
            (project / "exp.json").write_text(json.dumps({"i": list(range(N))}))
            # `caliban build` needs no Prefect, so the first `caliban run` below is the
            # home's first-ever command: it pays the server's cold start.
            build = [E.CALIBAN, "build", "--nogpu", "trainer.train"]
            _, out, _ = E.run_out(build, cwd=project, env=env)
            tag = out.strip()

            ours, first_run, first_wait = [], 0.0, 0.0
            for i, xgroup in enumerate(xgroups):
                cmd = [E.CALIBAN, "run", "--nogpu", "--image_id", tag, "--xgroup", xgroup]
                cmd += ["--experiment_config", "exp.json", "trainer.train"]
                t, _, log = E.run_out(cmd, cwd=project, env=env)
                if f"{N} jobs succeeded" not in log:
                    raise RuntimeError(f"caliban run did not report {N} successes: {log[-300:]}")
                if i == 0:
                    first_run, first_wait = t, _waited(log)
                if i >= WARMUP:
                    ours.append(t)

            plain = []
            for _ in range(RUNS):
                total = 0.0
                for k in range(N):
                    cmd = [docker_cli, "run", "--rm", tag, "--i", str(k)]
                    total += E.run_out(cmd, env=env)[0]
                plain.append(total)
        finally:
            E.stop_server(cold_env)
            E.stop_server(first_env)
            E.stop_server(env)
            E.remove_containers(client, xgroups)
            E.remove_images(client, [tag] if tag else [])

    C.header(f"{N}-job sweep, prebuilt image: caliban run (warm server) vs {N} x docker run")
    C.table([("caliban run", ours), ("docker run --rm x10", plain)])
    print(f"(caliban run: {RUNS} runs after {WARMUP} warm-up run, each a new xgroup)")
    per_job = (C.median(ours) - C.median(plain)) / N
    print(f"per-job overhead (medians): {per_job:.3f} s")
    print(f"ratio caliban run / docker run (medians): {C.median(ours) / C.median(plain):.2f}x")
    C.verdict(
        f"per-job overhead <= {TARGET_JOB_S} s (got {per_job:.3f} s)", per_job <= TARGET_JOB_S
    )

    C.header("first-ever command: local Prefect server start-up, fresh caliban home")
    print(f"server start alone (backend.api_url()): {cold_api:.3f} s (process {cold_wall:.3f} s)")
    print(
        f"first-ever caliban run, new project (builds): {fresh_run:.3f} s, of which "
        f"{fresh_wait:.3f} s waiting for the Prefect server"
    )
    print(
        f"first-ever caliban run, prebuilt image (--image_id): {first_run:.3f} s, of which "
        f"{first_wait:.3f} s waiting for the Prefect server"
    )
    C.verdict(
        f"a new project's first caliban run waits <= {TARGET_START_S} s for Prefect "
        f"(got {fresh_wait:.3f} s)",
        fresh_wait <= TARGET_START_S,
    )
    C.verdict(
        f"server start alone <= {TARGET_START_S} s (got {cold_api:.3f} s)",
        cold_api <= TARGET_START_S,
    )


if __name__ == "__main__":
    main()
