"""`--docker_run_args`: the `docker run` flags we can pass to the engine, parsed without a shell.

Caliban pasted the string into a shell command. We split it shell-style and translate a known
set of flags into docker SDK arguments; anything else is refused by name rather than dropped.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from caliban_flows.spec.errors import SpecError

SUPPORTED = (
    "-v/--volume",
    "-e/--env",
    "--env-file",
    "--gpus",
    "--network",
    "--shm-size",
    "--cpus",
    "-m/--memory",
    "-p/--publish",
    "-w/--workdir",
    "-u/--user",
    "--runtime",
)


@dataclass(frozen=True)
class RunOptions:
    volumes: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # "K=V", or "K" to copy the caller's value
    env_files: tuple[str, ...] = ()
    gpus: str | None = None
    network: str | None = None
    shm_size: str | None = None
    cpus: float | None = None
    memory: str | None = None
    publish: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    runtime: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SpecError(f"--docker_run_args: {message}; supported: {', '.join(SUPPORTED)}")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="--docker_run_args", add_help=False, allow_abbrev=False)
    p.add_argument("-v", "--volume", action="append", default=[])
    p.add_argument("-e", "--env", action="append", default=[])
    p.add_argument("--env-file", action="append", default=[])
    p.add_argument("--gpus")
    p.add_argument("--network", "--net")
    p.add_argument("--shm-size")
    p.add_argument("--cpus", type=float)
    p.add_argument("-m", "--memory")
    p.add_argument("-p", "--publish", action="append", default=[])
    p.add_argument("-w", "--workdir")
    p.add_argument("-u", "--user")
    p.add_argument("--runtime")
    return p


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
    ns, rest = _parser().parse_known_args(list(words))
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
    )


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
