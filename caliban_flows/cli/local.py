"""Local Docker commands: shell, notebook, build, run."""

from __future__ import annotations

import os
import shlex
import sys
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.interactive import docker_argv, free_port, hand_over
from caliban_flows.cli.output import emit
from caliban_flows.plan import project as sub
from caliban_flows.plan.inputs import credential_args
from caliban_flows.plan.push_target import require_push_target
from caliban_flows.spec.docker_run_args import cli_words
from caliban_flows.spec.errors import SpecError


def _session_image(
    image_id: str | None,
    text: str | None,
    *,
    gpu: bool,
    no_cache: bool,
    cloud_key: str | None,
    **inputs,
) -> tuple[str, list[str]]:
    """The session's image, built unless given, and the GPU flags for `docker run`.

    On an engine without NVIDIA's runtime, GPU mode falls back to the CPU image.
    """
    from caliban_flows.flows.images import build_here
    from caliban_flows.platforms.local.adapter import docker_client, engine_gpu

    nvidia = engine_gpu(docker_client(), gpu)
    if gpu and not nvidia and image_id is None:
        text = sub.dockerfile(gpu=False, **inputs)
    image = image_id or build_here(text, no_cache=no_cache, credentials=_named(cloud_key)).tag
    return image, (["--runtime", "nvidia"] if nvidia else [])


def _named(cloud_key: str | None) -> tuple[str, ...]:
    """The key file --cloud_key names: never sent to Docker (platforms.images)."""
    return (cloud_key,) if cloud_key else ()


def _default_shell() -> str:
    return "zsh" if "zsh" in os.environ.get("SHELL", "") else "bash"


def shell(
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKeyLocal = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    image_id: o.ImageId = None,
    docker_run_args: o.DockerRunArgs = None,
    shell: Annotated[
        str | None,
        typer.Option(
            "--shell",
            help="Shell inside the container: bash or zsh (default: from $SHELL, else bash).",
        ),
    ] = None,
    bare: Annotated[bool, typer.Option("--bare", help="Do not mount $HOME.")] = False,
) -> None:
    """Open an interactive shell in the project's image, with this folder mounted."""
    chosen = shell or _default_shell()
    if chosen not in ("bash", "zsh"):
        raise SpecError(f"--shell {shell!r} is not supported: use bash or zsh")
    if bare:
        chosen = "bash"  # the user's zsh setup lives in the $HOME we do not mount
    gpu = sub.gpu_mode(nogpu, None, None)
    sub.check_local_gpu("shell", gpu)
    run_args = sub.docker_run_args(docker_run_args)
    text = None if image_id else sub.dockerfile(gpu=gpu, extras=extras, shell=chosen)
    credentials = credential_args(cloud_key)
    image, gpu_args = _session_image(
        image_id,
        text,
        gpu=gpu,
        no_cache=no_cache,
        cloud_key=cloud_key,
        extras=extras,
        shell=chosen,
    )
    argv = docker_argv(
        image,
        entrypoint=[f"/bin/{chosen}"],
        bare=bare,
        run_args=[*gpu_args, *cli_words(run_args)],
        credentials=credentials,
        tty=sys.stdin.isatty(),
    )
    hand_over(argv)


def notebook(
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKeyLocal = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    image_id: o.ImageId = None,
    docker_run_args: o.DockerRunArgs = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            min=1,
            max=65535,
            help="Port for Jupyter (default: first free from 8888).",
        ),
    ] = None,
    jupyter_version: Annotated[
        str | None,
        typer.Option(
            "--jupyter_version", "--jupyter-version", "-jv", help="Jupyter version to pin."
        ),
    ] = None,
    lab: Annotated[bool, typer.Option("--lab", help="Run JupyterLab instead of Notebook.")] = False,
    bare: Annotated[bool, typer.Option("--bare", help="Do not mount $HOME.")] = False,
) -> None:
    """Run Jupyter in the project's image, with this folder mounted."""
    from caliban_flows.spec.dockerfile import JupyterSpec

    gpu = sub.gpu_mode(nogpu, None, None)
    sub.check_local_gpu("notebook", gpu)
    run_args = sub.docker_run_args(docker_run_args)
    jupyter = JupyterSpec(lab, jupyter_version)
    text = None if image_id else sub.dockerfile(gpu=gpu, extras=extras, jupyter=jupyter)
    credentials = credential_args(cloud_key)
    chosen_port = port or free_port()
    image, gpu_args = _session_image(
        image_id,
        text,
        gpu=gpu,
        no_cache=no_cache,
        cloud_key=cloud_key,
        extras=extras,
        jupyter=jupyter,
    )
    app = "lab" if lab else "notebook"
    entrypoint = ["python", "-m", "jupyter", app, "--ip=0.0.0.0", f"--port={chosen_port}",
                  "--no-browser"]  # fmt: skip
    if os.getuid() == 0:  # the container runs as the caller; Jupyter refuses root without this
        entrypoint.append("--allow-root")
    print(f"Jupyter {app} on http://127.0.0.1:{chosen_port}", file=sys.stderr, flush=True)
    argv = docker_argv(
        image,
        entrypoint=entrypoint,
        bare=bare,
        run_args=[*gpu_args, *cli_words(run_args)],
        credentials=credentials,
        tty=sys.stdin.isatty(),
        ports=(chosen_port,),
    )
    hand_over(argv)


def build(
    module: o.Module,
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKeyBuild = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    dirs: o.Dirs = None,
    push: Annotated[
        bool, typer.Option("--push", help="Also push the image to a registry.")
    ] = False,
    registry: o.Registry = None,
    registry_block: o.RegistryBlock = None,
) -> None:
    """Build the image run and cloud would use, and print its tag (pushed: its reference)."""
    target = require_push_target(registry, registry_block) if push else None
    gpu = sub.gpu_mode(nogpu, None, None)
    text = sub.dockerfile(
        gpu=gpu, extras=extras, dirs=sub.check_dirs(dirs), entrypoint=sub.resolve_module(module)
    )
    from caliban_flows.flows.images import build_here, push_here

    built = build_here(text, no_cache=no_cache, credentials=_named(cloud_key))
    print(push_here(built.tag, target) if target else built.tag)


def run(
    module: o.Module,
    rest: o.ScriptArgs = None,
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKeyLocal = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    dirs: o.Dirs = None,
    experiment_config: o.ExperimentConfigOpt = None,
    dry_run: o.DryRun = False,
    image_id: o.ImageId = None,
    docker_run_args: o.DockerRunArgs = None,
    xgroup: o.Xgroup = None,
    parallel: Annotated[
        int,
        typer.Option("--parallel", min=1, help="Jobs to run at once (Caliban ran one at a time)."),
    ] = 1,
    max_running: o.MaxRunning = None,
    pool: o.Pool = None,
    objective: o.Objective = None,
    output_dir: Annotated[
        str | None,
        typer.Option(
            "--output_dir",
            "--output-dir",
            metavar="PATH",
            help="Host folder for the jobs' outputs: each job gets its own "
            "PATH/<xgroup>/<name>-<key8>/<attempt>/, mounted read-write in the container as "
            "$CALIBAN_OUTPUT_DIR (default: $CALIBAN_HOME/outputs, i.e. ~/.caliban/outputs).",
        ),
    ] = None,
) -> None:
    """Run the code in a local Docker container, one job per experiment."""
    from caliban_flows.cli.output_dirs import outputs_line
    from caliban_flows.cli.submit import submit_plan
    from caliban_flows.plan.options import LocalOptions
    from caliban_flows.spec.outputs import (
        CONTAINER_OUTPUT_DIR,
        OUTPUT_DIR_ENV,
        OutputPlace,
        job_folder,
    )

    options = LocalOptions(
        nogpu=nogpu, extras=extras or [], dirs=dirs or [], no_cache=no_cache,
        max_running=max_running, pool=pool, parallel=parallel, docker_run_args=docker_run_args,
        cloud_key=cloud_key, output_dir=output_dir,
        objective=objective,
    )  # fmt: skip
    p = submit_plan("run", module, rest, options, experiment_config=experiment_config,
                    xgroup=xgroup, image=image_id, dry_run=dry_run)  # fmt: skip
    if not dry_run:
        from caliban_flows.flows.engine import run_plan

        raise typer.Exit(run_plan(p))
    image = image_id or sub.PLACEHOLDER_IMAGE
    mode = "GPU" if p.placement["gpu"] else "CPU"
    run_args = cli_words(p.placement["run_args"])
    docker = ["docker", "run", "--ipc", "host", "-e", "PYTHONUNBUFFERED=1"]
    outputs = OutputPlace.of(p.placement.get("outputs"))
    lines = [
        f"Dry run: {len(p.specs)} job(s) in xgroup {p.xgroup!r}, {mode} mode, "
        f"image {'built from ' + os.getcwd() if image_id is None else image_id}",
        outputs_line(outputs, p.xgroup, flags="--output_dir PATH"),
    ]
    for planned, job in zip(p.jobs, p.specs):
        mount: list[str] = []
        if outputs is not None:
            host = outputs.uri(job_folder(p.xgroup, planned["name"], planned["key"],
                                          planned["attempt"]))  # fmt: skip
            mount = ["-v", f"{host}:{CONTAINER_OUTPUT_DIR}",
                     "-e", f"{OUTPUT_DIR_ENV}={CONTAINER_OUTPUT_DIR}"]  # fmt: skip
        lines += [
            f"Job {job.index} - Experiment args: {list(job.args)}",
            f"Job {job.index} - Command: {shlex.join(p.entrypoint.command(job.args))}",
            f"Job {job.index} - Docker: "
            + shlex.join([*docker, *mount, *run_args, image, *job.args]),
            "",
        ]
    lines.append("Nothing was built or run. Run again without --dry_run to execute these jobs.")
    emit(lines)


def register(app: typer.Typer) -> None:
    app.command()(shell)
    app.command()(notebook)
    app.command()(build)
    app.command(context_settings={"allow_interspersed_args": False})(run)
