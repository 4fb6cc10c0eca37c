"""`--docker_run_args`: the `docker run` flags we can pass to the engine, parsed without a shell.

Caliban pasted the string into a shell command. We split it shell-style and translate a known
set of flags into docker SDK arguments; anything else is refused by name rather than dropped.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from caliban_flows.spec.docker_run_values import (
    GpuRequest,
    Mount,
    Ulimit,
    parse_device,
    parse_gpus,
    parse_host,
    parse_mount,
    parse_tmpfs,
    parse_ulimit,
)
from caliban_flows.spec.errors import SpecError

SUPPORTED = (
    "-v/--volume",
    "--mount",
    "--tmpfs",
    "-e/--env",
    "--env-file",
    "--gpus",
    "--device",
    "--network",
    "--add-host",
    "--ipc",
    "--shm-size",
    "--cpus",
    "-m/--memory",
    "--ulimit",
    "--pids-limit",
    "-p/--publish",
    "-w/--workdir",
    "-u/--user",
    "--group-add",
    "--cap-add",
    "--cap-drop",
    "--security-opt",
    "--privileged",
    "--init",
    "--runtime",
)
# Docker's boolean flags, also written --privileged=false.
_SWITCHES = ("--privileged", "--init")


@dataclass(frozen=True)
class RunOptions:
    volumes: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "K=V", or "K" to copy the caller's value
    env_files: tuple[str, ...] = ()
    gpus: GpuRequest | None = None
    network: str | None = None
    shm_size: str | None = None
    cpus: float | None = None
    memory: str | None = None
    publish: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    runtime: str | None = None
    mounts: tuple[Mount, ...] = ()
    tmpfs: tuple[tuple[str, str], ...] = ()  # (container path, mount options)
    devices: tuple[str, ...] = ()  # HOST:CONTAINER:PERMISSIONS
    extra_hosts: tuple[str, ...] = ()  # NAME:IP
    ulimits: tuple[Ulimit, ...] = ()
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    group_add: tuple[str, ...] = ()
    ipc: str | None = None
    pids_limit: int | None = None
    privileged: bool = False
    init: bool = False


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SpecError(f"--docker_run_args: {message}; supported: {', '.join(SUPPORTED)}")


class _BadValue(Exception):  # not a ValueError, which argparse would reword
    pass


def _checked(flag: str, parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type that names the flag and the reason when a value does not parse."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as e:
            raise _BadValue(f"--docker_run_args: {flag} {e}") from None

    return convert


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="--docker_run_args", add_help=False, allow_abbrev=False)
    many: dict[str, Any] = {"action": "append", "default": []}
    p.add_argument("-v", "--volume", **many)
    p.add_argument("--mount", type=_checked("--mount", parse_mount), **many)
    p.add_argument("--tmpfs", type=_checked("--tmpfs", parse_tmpfs), **many)
    p.add_argument("-e", "--env", **many)
    p.add_argument("--env-file", **many)
    p.add_argument("--gpus", type=_checked("--gpus", parse_gpus))
    p.add_argument("--device", type=_checked("--device", parse_device), **many)
    p.add_argument("--network", "--net")
    p.add_argument("--add-host", type=_checked("--add-host", parse_host), **many)
    p.add_argument("--ipc")
    p.add_argument("--shm-size")
    p.add_argument("--cpus", type=float)
    p.add_argument("-m", "--memory")
    p.add_argument("--ulimit", type=_checked("--ulimit", parse_ulimit), **many)
    p.add_argument("--pids-limit", type=int)
    p.add_argument("-p", "--publish", **many)
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--group-add", **many)
    p.add_argument("--cap-add", **many)
    p.add_argument("--cap-drop", **many)
    p.add_argument("--security-opt", **many)
    p.add_argument("--runtime")
    return p


def _switches(words: list[str]) -> tuple[list[str], dict[str, bool]]:
    """The words without --privileged/--init (bare or =true/false), and their values: the
    last one given wins, as in docker."""
    rest: list[str] = []
    values: dict[str, bool] = {}
    for word in words:
        flag, sep, value = word.partition("=")
        if flag not in _SWITCHES:
            rest.append(word)
        elif not sep or value.lower() in ("true", "1"):
            values[flag] = True
        elif value.lower() in ("false", "0"):
            values[flag] = False
        else:
            raise SpecError(f"--docker_run_args: {word!r}: {flag} takes true or false")
    return rest, values


def split_run_args(text: str | None) -> list[str]:
    """The words of --docker_run_args, split shell-style (never given to a shell)."""
    if not text:
        return []
    try:
        return shlex.split(text)
    except ValueError as e:
        raise SpecError(f"--docker_run_args {text!r} cannot be split: {e}") from None


def parse_run_args(text: str | None) -> RunOptions:
    return parse_run_words(split_run_args(text))


def parse_run_words(words: Sequence[str]) -> RunOptions:
    """Already-split words; they are kept as words so values with spaces survive."""
    if not words:
        return RunOptions()
    words, switches = _switches(list(words))
    try:
        ns, rest = _parser().parse_known_args(words)
    except _BadValue as e:
        raise SpecError(str(e)) from None
    if rest:
        raise SpecError(
            f"--docker_run_args: {' '.join(rest)!r} is not a flag caliban passes to docker; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    for volume in ns.volume:
        if ":" not in volume:
            raise SpecError(
                f"--docker_run_args: volume {volume!r} must be HOST_PATH:CONTAINER_PATH"
            )
    return RunOptions(
        volumes=tuple(ns.volume),
        env=tuple(ns.env),
        env_files=tuple(ns.env_file),
        gpus=ns.gpus,
        network=ns.network,
        shm_size=ns.shm_size,
        cpus=ns.cpus,
        memory=ns.memory,
        publish=tuple(ns.publish),
        workdir=ns.workdir,
        user=ns.user,
        runtime=ns.runtime,
        mounts=tuple(ns.mount),
        tmpfs=tuple(ns.tmpfs),
        devices=tuple(ns.device),
        extra_hosts=tuple(ns.add_host),
        ulimits=tuple(ns.ulimit),
        cap_add=tuple(ns.cap_add),
        cap_drop=tuple(ns.cap_drop),
        security_opt=tuple(ns.security_opt),
        group_add=tuple(ns.group_add),
        ipc=ns.ipc,
        pids_limit=ns.pids_limit,
        privileged=switches.get("--privileged", False),
        init=switches.get("--init", False),
    )


def _gpus_for_cli(gpus: GpuRequest) -> str:
    fields = [] if gpus.count is None else [f"count={'all' if gpus.count < 0 else gpus.count}"]
    if gpus.device_ids:
        fields.append(f'"device={",".join(gpus.device_ids)}"')  # quoted: one CSV field
    if gpus.driver:
        fields.append(f"driver={gpus.driver}")
    extra = [c for c in gpus.capabilities if c != "gpu"]
    if extra:
        fields.append(f'"capabilities={",".join(extra)}"')
    return ",".join(fields)


def cli_words(words: Sequence[str]) -> list[str]:
    """The words for the docker CLI itself (shell, notebook), with each --gpus value written
    so that docker reads it as we do: `device=0,2` unquoted would mean device 0, count 2."""
    out = list(words)
    for i, word in enumerate(out):
        if word == "--gpus" and i + 1 < len(out):
            out[i + 1] = _gpus_for_cli(parse_gpus(out[i + 1]))
        elif word.startswith("--gpus="):
            out[i] = "--gpus=" + _gpus_for_cli(parse_gpus(word[len("--gpus=") :]))
    return out


def env_values_out(words: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The words with every `-e NAME=VALUE` (`--env`, `-eNAME=VALUE`, `--env=...`) turned into
    `-e NAME`, which Docker fills from the caller's environment, and the values taken out.

    What a group records never holds such a value; the process that runs the job puts the
    values into its own environment, and a later rerun takes them from the environment then.
    """
    out: list[str] = []
    values: dict[str, str] = {}
    pending = False  # the previous word was a bare -e/--env: this one is its NAME=VALUE
    for word in words:
        item = None
        if pending:
            item, pending = word, False
        elif word in ("-e", "--env"):
            pending = True
            out.append(word)
            continue
        elif word.startswith("--env="):
            out.append("--env")
            item = word[len("--env=") :]
        elif word.startswith("-e") and len(word) > 2 and not word.startswith("--"):
            out.append("-e")
            item = word[2:]
        if item is None:
            out.append(word)
            continue
        name, sep, value = item.partition("=")
        if sep:
            values[name] = value
        out.append(name)
    return out, values
