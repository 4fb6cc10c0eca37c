"""`caliban shell` and `caliban notebook`: the project's image, this folder live-mounted.

Interactive sessions need a terminal, so they hand over to the `docker` CLI (argv, no shell);
batch jobs go through the docker SDK instead (platforms/local.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from caliban_flows.spec.errors import CalibanError

WORKDIR = "/usr/app"
SESSION_LABEL = "caliban.session=interactive"
FIRST_PORT = 8888
PORT_SEARCH = 1000


def free_port(start: int = FIRST_PORT) -> int:
    for port in range(start, start + PORT_SEARCH):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise CalibanError(f"no free port in {start}-{start + PORT_SEARCH - 1}")


def docker_argv(
    image: str,
    *,
    entrypoint: list[str],
    bare: bool,
    run_args: list[str],
    credentials: list[str],
    tty: bool,
    ports: tuple[int, ...] = (),
) -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        raise CalibanError("the docker command is not installed; it runs interactive sessions")
    user = f"{os.getuid()}:{os.getgid()}"
    argv = [docker, "run", "--rm", "-i", "--ipc", "host", "-w", WORKDIR, "-u", user]
    argv += ["--label", SESSION_LABEL]
    if tty:
        argv.append("-t")
    argv += ["-v", f"{Path.cwd()}:{WORKDIR}"]
    if not bare:
        home = Path.home()
        argv += ["-v", f"{home}:{home}", "-e", f"HOME={home}"]
    for port in ports:
        argv += ["-p", f"{port}:{port}"]
    from caliban_flows.spec.docker_run_args import env_values_out

    # `-e NAME=VALUE` goes as `-e NAME`, the value in the environment docker inherits: it is
    # then neither printed nor in the process list.
    run_args, values = env_values_out(run_args)
    os.environ.update(values)
    argv += [*credentials, *run_args, "--entrypoint", entrypoint[0], image, *entrypoint[1:]]
    return argv


def hand_over(argv: list[str]) -> None:
    """Replace this process with `docker run`, so signals and the terminal go straight to it."""
    print(" ".join(argv), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(argv[0], argv)
