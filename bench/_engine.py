"""Shared helpers for the bench scripts that use the Docker engine and the local Prefect server.

Projects are real folders with a `trainer` package; each script runs caliban with its own
temporary CALIBAN_HOME and stops that home's Prefect server at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import _common as C

REGISTRY = "127.0.0.1:5000"
CALIBAN = str(C.OUR_BIN / "caliban")
PYTHON = str(C.OUR_BIN / "python")
STOP_SERVER = "from caliban_flows.server import backend; backend.stop()"


def up():
    """The Docker engine, registry and offline base images (idempotent, fast when up)."""
    from devtools import engine

    return engine.up()


def unique() -> str:
    return uuid.uuid4().hex


def write_project(root: Path, *, requirements: str = "six\n", note: str | None = None) -> None:
    """A minimal project: trainer/train.py prints its args; `note` makes its content unique."""
    (root / "trainer").mkdir(parents=True, exist_ok=True)
    (root / "trainer" / "__init__.py").write_text("")
    (root / "requirements.txt").write_text(requirements)
    write_train(root, note or unique())


def write_train(root: Path, note: str) -> None:
    (root / "trainer" / "train.py").write_text(
        f"# bench {note}\nimport sys\n\nif __name__ == '__main__':\n"
        "    print('training with', sys.argv[1:])\n"
    )


def env_for(home: Path, info=None) -> dict[str, str]:
    """This process's environment with its own caliban home (and the engine's DOCKER_HOST)."""
    env = {**os.environ, "CALIBAN_HOME": str(home)}
    if info is not None:
        env.update(info.env())
    return env


def run_out(cmd: list[str], **kwargs) -> tuple[float, str, str]:
    """Wall time, stdout and stderr of one whole process run. Raises if it exits non-zero."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{Path(cmd[0]).name} exited {done.returncode}: {last}")
    return elapsed, done.stdout, done.stderr


def time_status(xgroup: str, runs: int, **kwargs) -> tuple[list[float], list[list[dict]]]:
    """`caliban status --xgroup X --format json`, `runs` times: the wall times, and the rows
    each run printed."""
    cmd = [CALIBAN, "status", "--xgroup", xgroup, "--format", "json"]
    times, listed = [], []
    for _ in range(runs):
        t, out, _ = run_out(cmd, **kwargs)
        times.append(t)
        listed.append(json.loads(out))
    return times, listed


def stop_server(env: dict[str, str]) -> None:
    """Stop the local Prefect server of env's CALIBAN_HOME, if one runs."""
    subprocess.run([PYTHON, "-c", STOP_SERVER], env=env, check=False)


def remove_containers(client, xgroups: list[str]) -> int:
    """Force-remove every container labelled with one of these xgroups; how many."""
    removed = 0
    for xgroup in xgroups:
        for c in client.api.containers(all=True, filters={"label": f"caliban.xgroup={xgroup}"}):
            client.api.remove_container(c["Id"], force=True)
            removed += 1
    return removed


def remove_images(client, refs: list[str]) -> None:
    """Untag (and delete, when nothing else uses them) these images; missing ones are fine."""
    import docker.errors

    for ref in dict.fromkeys(refs):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(ref, force=True)


def sweep_jobs(xgroup: str, n: int, *, platform: str, image: str,
               job_name: str) -> tuple[dict, list[dict]]:  # fmt: skip
    """The recipe and the job records of an `{"i": [0..n-1]}` sweep of `trainer.train` on a
    prebuilt image, made as a submission makes them today (`plan_group`: `job_specs`,
    `recipe`, `planned_jobs`). No GPU, no user labels, first attempts."""
    from caliban_flows.spec.entrypoint import PYTHON_MODULE
    from caliban_flows.spec.experiment import ExperimentConfig
    from caliban_flows.spec.jobspec import job_specs, planned_jobs, recipe, runs_what

    specs = job_specs(
        config=ExperimentConfig({"i": list(range(n))}),
        script_args=[],
        job_name=job_name,
        image=image,
        gpu_enabled=False,
        tpu_enabled=False,
    )
    command = [*PYTHON_MODULE, "trainer.train"]
    made = recipe(command=command, image=image, build=None, job_name=job_name, labels={},
                  gpu=False, tpu=False)  # fmt: skip
    return made, planned_jobs(xgroup, specs, recipe=runs_what(command), platform=platform)


def sweep_requests(xgroup: str, n: int, *, platform: str, image: str, job_name: str) -> list:
    """The JobRequests of that sweep (`sweep_jobs`): one `JobRequest.of` per job, as the group
    flow makes them (`expand_sweep`)."""
    from caliban_flows.platforms.base import JobRequest

    made, jobs = sweep_jobs(xgroup, n, platform=platform, image=image, job_name=job_name)
    # A remote platform's recorded placement carries no GPU mode or docker run args.
    return [JobRequest.of(xgroup, made, job) for job in jobs]
