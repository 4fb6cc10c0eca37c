"""Render the Dockerfile for a job image: a pure function of `DockerfileInputs`.

Layer order is the point: base, user, apt packages, Python dependencies, then `--dir` folders
and finally the code, so a code-only change rebuilds in seconds. Installs run as root (the
base images' site-packages are root-owned); the image switches to the caller's uid:gid at the
end. No credentials ever go into the image: local runs mount them, cloud jobs use the job's
service account.

The output is byte-for-byte deterministic because the image tag is a hash of it.

Limitation: a `setup.py`/`pyproject.toml` install sees only the build files (setup.py,
setup.cfg, pyproject.toml), not the package source, so it installs the dependencies and extras
while the code itself is imported from /usr/app. A build that reads other files (a README,
the package's `__init__` for its version) or a backend that insists on finding the package
(hatchling) fails; list those dependencies in requirements.txt instead.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from caliban_flows.spec.entrypoint import Entrypoint
from caliban_flows.spec.errors import SpecError

WORKDIR = "/usr/app"
DEFAULT_CPU_BASE_IMAGE = "python:3.11-slim"
# GPU: NVIDIA's CUDA runtime + cuDNN on Ubuntu 24.04, plus Ubuntu's Python 3.12 in a venv.
# Chosen over a Deep Learning Containers base-cuXXX image because it is several GB smaller and
# has no conda or preinstalled frameworks (so, as with the CPU image, only declared
# dependencies get installed), and DLC base images fall out of availability quickly
# (base-cu124's date was 2026-04-01). CUDA 12.8 covers Blackwell GPUs; the cu12x
# PyTorch/JAX/TF wheels bring their own CUDA libraries anyway.
DEFAULT_GPU_BASE_IMAGE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
_VENV = "/opt/venv"
_NON_CONDA_DEFAULTS = frozenset({DEFAULT_CPU_BASE_IMAGE, DEFAULT_GPU_BASE_IMAGE})

# Debian package names (policy 5.6.1), optionally `:arch`, `=version` or `/release`. Strict on
# purpose: the names are pasted into a shell command.
APT_PACKAGE_RE = re.compile(
    r"[a-z0-9][a-z0-9+.-]*(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+~:-]+|/[A-Za-z0-9.-]+)?"
)
_EXTRA_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")  # PEP 685
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]*")
_VERSION_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!-]*")
# Characters Docker's COPY would expand ($), glob (*?[) or that break its quoting.
_COPY_UNSAFE_RE = re.compile(r"[$*?\[\]\\\"'\x00-\x1f\x7f]")
_COPY_PLAIN_RE = re.compile(r"[A-Za-z0-9._/@+=,-]+")
SHELLS = ("bash", "zsh")
_MAX_ID = 2**32 - 2  # 2**32 - 1 is the "no id" marker


@dataclass(frozen=True)
class JupyterSpec:
    """Notebook images: install `jupyter`, or `jupyterlab` with lab=True, optionally pinned."""

    lab: bool = False
    version: str | None = None

    @property
    def requirement(self) -> str:
        name = "jupyterlab" if self.lab else "jupyter"
        return f"{name}=={self.version}" if self.version else name


@dataclass(frozen=True)
class DockerfileInputs:
    base_image: str
    uid: int
    gid: int
    user: str
    apt_packages: tuple[str, ...] = ()
    requirements_txt: bool = False
    setup_py: bool = False
    setup_extras: tuple[str, ...] = ()
    environment_yml: bool = False
    extra_dirs: tuple[str, ...] = ()
    entrypoint: Entrypoint | None = None
    jupyter: JupyterSpec | None = None
    shell: str = "bash"
    # Copied with setup.py for its install; pyproject_toml alone also triggers the install.
    setup_cfg: bool = False
    pyproject_toml: bool = False


def default_base_image(gpu: bool) -> str:
    return DEFAULT_GPU_BASE_IMAGE if gpu else DEFAULT_CPU_BASE_IMAGE


def setup_extras(gpu: bool, extras: Sequence[str]) -> tuple[str, ...]:
    """The setup.py extras to install: the mode's (`cpu`/`gpu`) first, then `--extras`."""
    out: list[str] = ["gpu" if gpu else "cpu"]
    for extra in extras:
        _check_extra(extra)
        if extra not in out:
            out.append(extra)
    return tuple(out)


def render_dockerfile(inp: DockerfileInputs) -> str:
    _validate(inp)
    own = f"--chown={inp.uid}:{inp.gid}"
    sections = [_base(inp.base_image), _user(inp)]

    packages = sorted({*inp.apt_packages, *(["zsh"] if inp.shell == "zsh" else [])})
    if packages:
        sections.append(_apt_install(packages))

    deps: list[str] = []
    if inp.jupyter is not None:  # rarely changes, so it goes before the user's dependencies
        deps.append(f"RUN pip install --no-cache-dir {inp.jupyter.requirement}")
    # conda first as the environment's foundation, then pins, then the package, whose
    # install_requires then resolve against what the pins installed.
    if inp.environment_yml:
        deps.append(
            f"COPY {own} environment.yml {WORKDIR}/\n"
            "RUN conda env update --quiet --name base --file environment.yml \\\n"
            "    && conda clean --all --yes --quiet"
        )
    if inp.requirements_txt:
        deps.append(
            f"COPY {own} requirements.txt {WORKDIR}/\n"
            "RUN pip install --no-cache-dir -r requirements.txt"
        )
    if inp.setup_py or inp.pyproject_toml:
        deps.append(_package_install(inp, own))
    if deps:
        deps[0] = (
            f"# Dependencies before any code: a code change rebuilds only what follows.\n{deps[0]}"
        )
        sections.extend(deps)

    dirs = dict.fromkeys(_normalize(d, "extra directory") for d in inp.extra_dirs)
    copies = [_copy(own, d) for d in dirs]
    if inp.entrypoint is not None:
        copies.append(_copy(own, inp.entrypoint.package_path))
    if copies:
        sections.append("\n".join(copies))

    # The variable is inherited, so it also covers python started from a bash script.
    tail = [f"USER {inp.uid}:{inp.gid}", "ENV PYTHONUNBUFFERED=1"]
    if inp.entrypoint is not None:
        tail.append(f"ENTRYPOINT {json.dumps(inp.entrypoint.command())}")
    sections.append("\n".join(tail))
    return "\n\n".join(sections) + "\n"


def _base(image: str) -> str:
    if image != DEFAULT_GPU_BASE_IMAGE:
        return f"FROM {image}"
    # Skipped when the base already has python3 (e.g. a stand-in image in tests).
    return (
        f"FROM {image}\n\n"
        "# The CUDA image has no Python: add Ubuntu's, in a venv because PEP 668 blocks pip\n"
        "# installs into the system one.\n"
        "RUN command -v python3 >/dev/null || ( \\\n"
        "        apt-get update \\\n"
        "        && DEBIAN_FRONTEND=noninteractive apt-get install --yes \\\n"
        "            --no-install-recommends ca-certificates python3 python3-venv \\\n"
        "        && apt-get clean \\\n"
        "        && rm -rf /var/lib/apt/lists/* \\\n"
        "    ) \\\n"
        f"    && python3 -m venv {_VENV}\n"
        f"ENV VIRTUAL_ENV={_VENV} PATH={_VENV}/bin:$PATH"
    )


def _user(inp: DockerfileInputs) -> str:
    uid, gid, home = inp.uid, inp.gid, f"/home/{inp.user}"
    opts = (
        f"--no-log-init --no-create-home --uid {uid} --gid {gid} --home-dir {home} "
        "--shell /bin/bash"
    )
    return (
        "# The caller's uid/gid, so files written to mounted folders keep their owner. Either id\n"
        "# may already exist in the base; if the name is taken or refused, use a fallback name.\n"
        "# --no-log-init: otherwise a huge uid makes useradd write a huge lastlog file.\n"
        "RUN set -e; \\\n"
        f"    getent group {gid} >/dev/null || groupadd --gid {gid} caliban-{gid}; \\\n"
        f"    if ! getent passwd {uid} >/dev/null; then \\\n"
        f'        opts="{opts}"; \\\n'
        f"        useradd $opts {inp.user} 2>/dev/null || useradd $opts caliban-{uid}; \\\n"
        "    fi; \\\n"
        f"    mkdir -p {home} {WORKDIR}; \\\n"
        f"    chown {uid}:{gid} {home} {WORKDIR}\n"
        f"ENV HOME={home}\n"
        f"WORKDIR {WORKDIR}"
    )


def _apt_install(packages: Sequence[str]) -> str:
    return (
        "RUN apt-get update \\\n"
        "    && DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends \\\n"
        f"        {' '.join(packages)} \\\n"
        "    && apt-get clean \\\n"
        "    && rm -rf /var/lib/apt/lists/*"
    )


def _copy(own: str, path: str) -> str:
    dest = f"{WORKDIR}/" if path == "." else f"{WORKDIR}/{path}"
    if _COPY_PLAIN_RE.fullmatch(path):
        return f"COPY {own} {path} {dest}"
    return f"COPY {own} {json.dumps([path, dest])}"  # JSON form keeps spaces intact


def _package_install(inp: DockerfileInputs, own: str) -> str:
    present = (
        ("pyproject.toml", inp.pyproject_toml),
        ("setup.cfg", inp.setup_cfg),
        ("setup.py", inp.setup_py),
    )
    files = " ".join(name for name, here in present if here)
    target = f'".[{",".join(inp.setup_extras)}]"' if inp.setup_extras else "."
    # pip builds in place; drop its root-owned leftovers from /usr/app.
    return (
        f"COPY {own} {files} {WORKDIR}/\n"
        f"RUN pip install --no-cache-dir {target} \\\n"
        "    && rm -rf build ./*.egg-info"
    )


def _normalize(path: str, what: str) -> str:
    if not path or path.startswith("/") or ".." in path.split("/"):
        raise SpecError(f"{what} '{path}' must be a relative path inside the project directory")
    if _COPY_UNSAFE_RE.search(path):
        raise SpecError(
            f"{what} '{path}' has characters Docker's COPY would expand or glob "
            "($ * ? [ ] \\ quotes): rename it or leave it out"
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


def _check_extra(extra: str) -> None:
    if not _EXTRA_RE.fullmatch(extra):
        raise SpecError(
            f"extra '{extra}' is not a valid setup.py extras name: use letters, digits, "
            "'.', '_' and '-', like 'gpu' or 'my_deps'"
        )


def _validate(inp: DockerfileInputs) -> None:
    if not _IMAGE_RE.fullmatch(inp.base_image):
        raise SpecError(
            f"base image '{inp.base_image}' is not a Docker image reference like "
            "'python:3.11-slim' or 'us-docker.pkg.dev/project/repo/image:tag'"
        )
    for name, value in (("uid", inp.uid), ("gid", inp.gid)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_ID:
            raise SpecError(f"{name} {value!r} must be an integer from 0 to {_MAX_ID}")
    if not _USER_RE.fullmatch(inp.user):
        raise SpecError(
            f"user name '{inp.user}' cannot be used in the image: it must be 1-32 letters, "
            "digits, '_', '.' or '-'"
        )
    for package in inp.apt_packages:
        if not APT_PACKAGE_RE.fullmatch(package):
            raise SpecError(
                f"apt package '{package}' is not a Debian package name like 'libsm6' "
                "or 'curl=7.88.1-10'"
            )
    for extra in inp.setup_extras:
        _check_extra(extra)
    if inp.shell not in SHELLS:
        raise SpecError(f"shell '{inp.shell}' is not supported: use one of {', '.join(SHELLS)}")
    version = inp.jupyter.version if inp.jupyter is not None else None
    if version is not None and not _VERSION_RE.fullmatch(version):
        raise SpecError(f"jupyter version '{version}' is not a version like '4.2.5'")
    if inp.environment_yml and inp.base_image in _NON_CONDA_DEFAULTS:
        raise SpecError(
            f"environment.yml needs conda, which the default base image '{inp.base_image}' "
            "lacks: set base_image in .calibanconfig.json to a conda image (e.g. "
            "'dlvm:base-cpu' / 'dlvm:base-gpu' or 'continuumio/miniconda3'), or use "
            "requirements.txt"
        )
    if inp.entrypoint is not None:
        path = inp.entrypoint.package_path
        if _normalize(path, "code directory") != path:
            raise SpecError(f"code directory '{path}' is not a normalized relative path")
