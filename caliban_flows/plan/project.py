"""The project folder as the planner reads it: the command line's script args, the entry point,
extra dirs, .calibanconfig.json, the Dockerfile, accelerators and `docker run` args.

All of it runs before anything is built or submitted, so a bad input never half-submits.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import shlex
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from caliban_flows.plan.inputs import os_user, read_text
from caliban_flows.spec.entrypoint import Entrypoint, resolve_entrypoint
from caliban_flows.spec.errors import SpecError

CALIBANCONFIG = ".calibanconfig.json"
PLACEHOLDER_IMAGE = "dry_run_tag"  # what Caliban's dry runs showed before a build
_WARNED: set[str] = set()
PROJECT_FILES = ("requirements.txt", "setup.py", "setup.cfg", "pyproject.toml", "environment.yml")


def script_args(
    command: str,
    module: str,
    rest: Sequence[str] | None,
    *,
    typed: Sequence[str] | None = None,
    own_flags: Mapping[str, bool] | None = None,
) -> list[str]:
    """Arguments after `--`; anything between the module and `--` is a misplaced word, and the
    error shows the command line fixed. `typed` is what the user typed after `caliban`,
    `own_flags` this command's options (name -> takes a value)."""
    rest = list(rest or [])
    if not rest:
        return []
    if rest[0] != "--":
        stray = list(itertools.takewhile(lambda a: a != "--", rest))
        after = rest[len(stray) + 1 :]
        ours, theirs = _split_stray(stray, own_flags or {})
        before = _typed_before(typed, module, stray) or [*command.split(), "..."]
        script = [*theirs, *after]
        fixed = [*before, *ours, module, *(["--", *script] if script else [])]
        raise SpecError(
            f"{_quoted(stray)} came after the module {module!r} but before '--': caliban flags "
            "go before the module, script arguments after '--'; did you mean: caliban "
            f"{_quoted(fixed)}"
        )
    return rest[1:]


def _quoted(words: Sequence[str]) -> str:
    return " ".join(w if w == "..." else shlex.quote(w) for w in words)


def _split_stray(stray: list[str], own_flags: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """(caliban's own flags, with their values; the script's words) among `stray`."""
    ours: list[str] = []
    theirs: list[str] = []
    words = iter(stray)
    for word in words:
        name = word.split("=", 1)[0]
        if name in own_flags:
            ours.append(word)
            if own_flags[name] and "=" not in word:
                ours.extend(itertools.islice(words, 1))
        else:
            theirs.append(word)
    return ours, theirs


def _typed_before(typed: Sequence[str] | None, module: str, stray: list[str]) -> list[str]:
    """The words the user typed before the module, if `typed` shows where it is."""
    words = list(typed or [])
    for i, word in enumerate(words):
        if word == module and words[i + 1 : i + 1 + len(stray)] == stray:
            return words[:i]
    return []


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
    config = parse_calibanconfig(text)
    for line in config.ignored_key_warnings():
        if line not in _WARNED:  # a command may read the file more than once
            _WARNED.add(line)
            print(f"warning: {line}", file=sys.stderr)
    return config


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
    nogpu: bool,
    gpu_spec: str | None,
    tpu_spec: str | None,
    *,
    validate_count: bool = True,
    cluster: bool = False,
):
    """(gpu, tpu) specs for a job; GPU mode without --gpu_spec gets the default GPU.

    For a `cluster`, Vertex's retired GPUs are fine (the nodes decide) and the TPU is left to
    the caller (spec.gke_tpu): GKE's TPU types are not Vertex's."""
    from caliban_flows.spec import accelerators as acc

    use_gpu = gpu_mode(nogpu, gpu_spec, tpu_spec)
    gpu = (
        acc.parse_gpu_spec(gpu_spec, validate_count=validate_count, retired_ok=cluster)
        if gpu_spec
        else None
    )
    tpu = (
        acc.parse_tpu_spec(tpu_spec, validate_count=validate_count)
        if tpu_spec and not cluster
        else None
    )
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
