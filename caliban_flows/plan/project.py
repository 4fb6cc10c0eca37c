"""The project folder as the planner reads it: the command line's script args, the entry point,
extra dirs, .calibanconfig.json, the Dockerfile, accelerators and `docker run` args.

All of it runs before anything is built or submitted, so a bad input never half-submits.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

from caliban_flows.plan.inputs import os_user, read_text
from caliban_flows.spec.entrypoint import Entrypoint, resolve_entrypoint
from caliban_flows.spec.errors import SpecError

CALIBANCONFIG = ".calibanconfig.json"
PLACEHOLDER_IMAGE = "dry_run_tag"  # what Caliban's dry runs showed before a build
PROJECT_FILES = ("requirements.txt", "setup.py", "setup.cfg", "pyproject.toml", "environment.yml")


def script_args(command: str, module: str, rest: Sequence[str] | None) -> list[str]:
    """Arguments after `--`; anything between the module and `--` is a misplaced flag."""
    rest = list(rest or [])
    if not rest:
        return []
    if rest[0] != "--":
        stray = []
        for arg in rest:
            if arg == "--":
                break
            stray.append(arg)
        after = rest[len(stray) + 1 :]
        fixed = " ".join(shlex.quote(a) for a in [*stray, module, "--", *after])
        raise SpecError(
            f"{' '.join(map(shlex.quote, stray))} came after the module {module!r} but before "
            f"'--': put caliban flags before the module (caliban {command} ... {fixed}) or "
            "script arguments after '--'"
        )
    return rest[1:]


def resolve_module(module: str) -> Entrypoint:
    cwd = Path.cwd()
    return resolve_entrypoint(module, is_file=lambda p: (cwd / p).is_file(), cwd=str(cwd))


def check_dirs(dirs: Sequence[str] | None) -> tuple[str, ...]:
    cwd = Path.cwd().resolve()
    out = []
    for d in dirs or ():
        path = (cwd / d).resolve()
        if not path.is_dir():
            raise SpecError(f"--dir {d!r} is not a directory under {cwd}")
        if path != cwd and cwd not in path.parents:
            raise SpecError(f"--dir {d!r} is outside the project directory {cwd}")
        out.append(d)
    return tuple(out)


def load_calibanconfig():
    from caliban_flows.spec.calibanconfig import parse_calibanconfig

    path = Path(CALIBANCONFIG)
    text = read_text(CALIBANCONFIG, CALIBANCONFIG) if path.exists() else None
    return parse_calibanconfig(text)


def dockerfile(
    *,
    gpu: bool,
    extras: Sequence[str] | None = None,
    dirs: Sequence[str] = (),
    entrypoint: Entrypoint | None = None,
    jupyter=None,
    shell: str = "bash",
) -> str:
    """The image's Dockerfile, from the project folder as it is now; rendering validates it."""
    from caliban_flows.spec.dockerfile import (
        DockerfileInputs,
        default_base_image,
        render_dockerfile,
        setup_extras,
    )

    config = load_calibanconfig()
    here = {name: Path(name).is_file() for name in PROJECT_FILES}
    installs_package = here["setup.py"] or here["pyproject.toml"]
    inputs = DockerfileInputs(
        base_image=config.base_image_for(gpu) or default_base_image(gpu),
        uid=os.getuid(),
        gid=os.getgid(),
        user=os_user(),  # the image's user is the one whose uid it maps
        apt_packages=tuple(config.apt_packages_for(gpu)),
        requirements_txt=here["requirements.txt"],
        setup_py=here["setup.py"],
        setup_cfg=here["setup.cfg"],
        pyproject_toml=here["pyproject.toml"],
        setup_extras=setup_extras(gpu, extras or ()) if installs_package else (),
        environment_yml=here["environment.yml"],
        extra_dirs=tuple(dirs),
        entrypoint=entrypoint,
        jupyter=jupyter,
        shell=shell,
    )
    return render_dockerfile(inputs)


def docker_run_args(text: str | None) -> list[str]:
    """The words of --docker_run_args, after checking every flag can be passed on."""
    from caliban_flows.spec.docker_run_args import parse_run_words, split_run_args

    words = split_run_args(text)
    parse_run_words(words)
    return words


def check_local_gpu(command: str, gpu: bool) -> None:
    if gpu and platform.system() == "Darwin":
        raise SpecError(
            f"'caliban {command}' cannot use GPUs on a Mac: pass --nogpu "
            "(GPU jobs can still go to 'caliban cloud')"
        )


def gpu_mode(nogpu: bool, gpu_spec: str | None, tpu_spec: str | None) -> bool:
    """Caliban's rule: GPU by default, --nogpu for CPU, and a TPU alone means CPU."""
    if nogpu and gpu_spec:
        raise SpecError("--nogpu conflicts with --gpu_spec: remove one of them")
    if nogpu:
        return False
    return not (tpu_spec and not gpu_spec)


def accelerators(
    nogpu: bool, gpu_spec: str | None, tpu_spec: str | None, *, validate_count: bool = True
):
    """(gpu, tpu) specs for a job; GPU mode without --gpu_spec gets the default GPU."""
    from caliban_flows.spec import accelerators as acc

    use_gpu = gpu_mode(nogpu, gpu_spec, tpu_spec)
    gpu = acc.parse_gpu_spec(gpu_spec, validate_count=validate_count) if gpu_spec else None
    tpu = acc.parse_tpu_spec(tpu_spec, validate_count=validate_count) if tpu_spec else None
    if use_gpu and gpu is None:
        gpu = acc.default_gpu_spec()
    return gpu, tpu


def env_default(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


@contextlib.contextmanager
def inside(root: str | None) -> Iterator[None]:
    """In the project folder, where Caliban's rules look for files (and Docker's context is);
    the same folder, or None, changes nothing."""
    if root is None:
        yield
        return
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise SpecError(f"project folder {root!r} is not a folder (from {Path.cwd()})")
    before = Path.cwd()
    if folder == before.resolve():
        yield
        return
    os.chdir(folder)  # a deployment's flow run is a process of its own under a worker
    try:
        yield
    finally:
        os.chdir(before)
