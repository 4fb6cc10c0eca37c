"""Local Docker commands: shell, notebook, build, run."""

from __future__ import annotations

import os
import shlex
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli import submission as sub
from caliban_flows.cli.output import emit, not_built
from caliban_flows.spec.errors import SpecError

LOCAL_ISSUE = 3


def _default_shell() -> str:
    return "zsh" if "zsh" in os.environ.get("SHELL", "") else "bash"


def shell(
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKey = None,
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
    gpu = sub.gpu_mode(nogpu, None, None)
    sub.check_local_gpu("shell", gpu)
    sub.docker_run_args(docker_run_args)
    if image_id is None:
        sub.dockerfile(gpu=gpu, extras=extras, shell=chosen)
    raise not_built("the interactive shell on local Docker", LOCAL_ISSUE)


def notebook(
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKey = None,
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
    sub.docker_run_args(docker_run_args)
    if image_id is None:
        sub.dockerfile(gpu=gpu, extras=extras, jupyter=JupyterSpec(lab, jupyter_version))
    raise not_built("Jupyter on local Docker", LOCAL_ISSUE)


def build(
    module: o.Module,
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKey = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    dirs: o.Dirs = None,
) -> None:
    """Build the image run and cloud would use, and print its ID."""
    sub.dockerfile(
        gpu=sub.gpu_mode(nogpu, None, None),
        extras=extras,
        dirs=sub.check_dirs(dirs),
        entrypoint=sub.resolve_module(module),
    )
    raise not_built("building images on local Docker", LOCAL_ISSUE)


def run(
    module: o.Module,
    rest: o.ScriptArgs = None,
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKey = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    dirs: o.Dirs = None,
    experiment_config: o.ExperimentConfigOpt = None,
    dry_run: o.DryRun = False,
    image_id: o.ImageId = None,
    docker_run_args: o.DockerRunArgs = None,
    xgroup: o.Xgroup = None,
) -> None:
    """Run the code in a local Docker container, one job per experiment."""
    gpu = sub.gpu_mode(nogpu, None, None)
    sub.check_local_gpu("run", gpu)
    run_args = sub.docker_run_args(docker_run_args)
    p = sub.plan(
        command="run",
        module=module,
        rest=rest,
        experiment_config=experiment_config,
        xgroup=xgroup,
        dirs=dirs,
        gpu=gpu,
        extras=extras,
        prebuilt_image=image_id,
    )
    image = image_id or sub.PLACEHOLDER_IMAGE
    if not dry_run:
        raise not_built("running jobs on local Docker (try --dry_run)", LOCAL_ISSUE)
    mode = "GPU" if gpu else "CPU"
    docker = ["docker", "run", "--ipc", "host", "-e", "PYTHONUNBUFFERED=1", *run_args, image]
    lines = [
        f"Dry run: {len(p.jobs)} job(s) in xgroup {p.xgroup!r}, {mode} mode, "
        f"image {'built from ' + os.getcwd() if image_id is None else image_id}",
    ]
    for job in p.jobs:
        lines += [
            f"Job {job.index} - Experiment args: {list(job.args)}",
            f"Job {job.index} - Command: {shlex.join(p.entrypoint.command(job.args))}",
            f"Job {job.index} - Docker: {shlex.join([*docker, *job.args])}",
            "",
        ]
    lines.append("Nothing was built or run. Run again without --dry_run to execute these jobs.")
    emit(lines)


def register(app: typer.Typer) -> None:
    app.command()(shell)
    app.command()(notebook)
    app.command()(build)
    app.command(context_settings={"allow_interspersed_args": False})(run)
