"""A throwaway PostgreSQL cluster under one folder, for a Prefect server that must scale.

    python -m devtools.postgres up --root DIR     # idempotent; prints the connection URL line
    python -m devtools.postgres down --root DIR   # pg_ctl stop -m fast; keeps the data

    from devtools import postgres
    pg = postgres.up(Path("/tmp/pg"))   # Postgres(url="postgresql+asyncpg://postgres@...")
    env = {"PREFECT_API_DATABASE_CONNECTION_URL": pg.url}
    pg.down()

Prefect's SQLite database answers 503 ("database is locked") beyond about 10 concurrent
writers; PostgreSQL does not. `up()` uses Debian's PostgreSQL binaries
(/usr/lib/postgresql/*/bin); without them, on Debian as root, it installs `postgresql` with
apt first. It never touches the package's own cluster (`/etc/postgresql`, port 5432): it makes
its own with `initdb` in DIR/data (trust auth, superuser `postgres`), starts it with `pg_ctl`
on a free 127.0.0.1 port with its socket in DIR/run, and creates the database `prefect`.
PostgreSQL refuses to run as root, so as root every server-side command runs as the
`postgres` system user the package creates (`runuser -u postgres --`), and DIR's parts are
chowned to it. DIR's parent folders must be searchable by that user (pytest's 0700
/tmp/pytest-of-root is not; /tmp and /var/tmp are).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools import engine

PG_USER = "postgres"  # the system user Debian's package creates, and our superuser's name
DATABASE = "prefect"
HOST = "127.0.0.1"
START_TIMEOUT = 60  # seconds, for pg_ctl start -w
STOP_TIMEOUT = 60
PORT_ATTEMPTS = 3  # another program may take the free port we picked before postgres binds it
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes, minus "/.s.PGSQL.NNNNN"
OWN_NAMES = {"data", "run", "postgres.log", "pg_ctl.log", "apt.log", "postgres.lock"}


class PostgresError(RuntimeError):
    """PostgreSQL could not be installed, initialised, started or stopped (one line)."""


@dataclass(frozen=True)
class Postgres:
    """A running cluster made by `up()`. `url` is what PREFECT_API_DATABASE_CONNECTION_URL takes."""

    root: Path
    port: int
    bin_dir: Path

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{PG_USER}@{HOST}:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def env(self) -> dict[str, str]:
        return {"PREFECT_API_DATABASE_CONNECTION_URL": self.url}

    def down(self) -> bool:
        """pg_ctl stop -m fast. True if the cluster was running."""
        return _stop(self.root, self.bin_dir)


# --------------------------------------------------------------------------- small helpers


def _log(msg: str) -> None:
    print(f"postgres: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _step(msg: str) -> Iterator[None]:
    start = time.monotonic()
    _log(f"{msg} ...")
    yield
    _log(f"{msg}: done in {time.monotonic() - start:.1f} s")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One up()/down() at a time per cluster folder, across processes."""
    with open(root / "postgres.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 1) -> str:
    """The last non-empty lines of a log, joined with ' | ' so an error stays one line."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [x.strip() for x in text.splitlines() if x.strip()][-lines:]
    return " | ".join(kept) or "(empty log)"


def _is_root() -> bool:
    return os.geteuid() == 0


def _version_key(bin_dir: str) -> tuple:
    version = Path(bin_dir).parent.name
    return tuple(int(x) if x.isdigit() else 0 for x in re.split(r"[.]", version))


def find_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL bin folder with initdb, pg_ctl and postgres."""
    dirs = [
        d
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres"))
    ]
    return Path(max(dirs, key=_version_key)) if dirs else None


def _ensure_binaries(root: Path) -> Path:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        if not engine.is_root_on_debian():
            raise PostgresError(
                "initdb not found under /usr/lib/postgresql/*/bin, and installing Debian's "
                "postgresql needs root on Debian: install PostgreSQL first"
            )
        engine.apt_install(["postgresql"], root, error=PostgresError)
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise PostgresError("apt installed postgresql, but no /usr/lib/postgresql/*/bin/initdb")
    return bin_dir


def _pg_user() -> pwd.struct_passwd | None:
    """As root: the `postgres` system user to run the server as. Otherwise: None (ourselves)."""
    if not _is_root():
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise PostgresError(
            f"no system user {PG_USER!r} (Debian's postgresql package makes it); "
            "PostgreSQL refuses to run as root"
        ) from None


def _as_server_user(argv: list[str]) -> list[str]:
    user = _pg_user()
    if user is None:
        return argv
    runuser = shutil.which("runuser", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if runuser is None:
        raise PostgresError("runuser (util-linux) not found: cannot drop root to run PostgreSQL")
    return [runuser, "-u", PG_USER, "--", *argv]


def _run(argv: list[str], root: Path, *, as_server: bool = True, **kwargs):
    cmd = _as_server_user(argv) if as_server else argv
    # cwd: the server user cannot read root's home, and initdb/pg_ctl complain about that.
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False, **kwargs)


def _one_line(done: subprocess.CompletedProcess) -> str:
    lines = [x.strip() for x in (done.stderr + "\n" + done.stdout).splitlines() if x.strip()]
    errors = [x for x in lines if re.search(r"error|fatal|could not|failed", x, re.I)]
    return (errors or lines or [f"exit code {done.returncode}"])[-1]


def _blocking_ancestor(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder on the way to `path` that `user` may not search, by mode bits."""
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if st.st_uid == user.pw_uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return folder
    return None


def _prepare(root: Path) -> None:
    """data/, run/ and the log, owned by the server user; root too when it is ours alone."""
    data, run, log = root / "data", root / "run", root / "postgres.log"
    data.mkdir(mode=0o700, exist_ok=True)
    run.mkdir(mode=0o700, exist_ok=True)
    log.touch()
    user = _pg_user()
    if user is None:
        return
    parts = [data, run, log]
    if set(os.listdir(root)) <= OWN_NAMES:
        parts.insert(0, root)  # a folder made for the cluster: the server may write in it
    for part in parts:
        os.chown(part, user.pw_uid, user.pw_gid)
    blocked = _blocking_ancestor(data, user)
    if blocked is not None:
        mode = stat.S_IMODE(blocked.stat().st_mode)
        raise PostgresError(
            f"user {PG_USER!r} cannot enter {blocked} (mode {mode:04o}), so PostgreSQL cannot "
            f"use {root}: put the cluster under /tmp or /var/tmp"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _running_port(root: Path, bin_dir: Path) -> int | None:
    """The port of this folder's live postmaster, else None."""
    data = root / "data"
    if not (data / "postmaster.pid").exists():
        return None
    done = _run([str(bin_dir / "pg_ctl"), "status", "-D", str(data)], root)
    if done.returncode != 0:
        return None
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        return int(lines[3])  # pid, data dir, start time, port, socket dir, listen address
    except (OSError, IndexError, ValueError):
        return None


def _initdb(root: Path, bin_dir: Path) -> None:
    data = root / "data"
    if (data / "PG_VERSION").exists():
        return
    if any(data.iterdir()):
        raise PostgresError(f"{data} is neither empty nor a PostgreSQL cluster")
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(data),
        f"--username={PG_USER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-sync",  # a test cluster: no fsync of the new files (saves seconds)
    ]
    with _step(f"initdb {data}"):
        done = _run(argv, root)
    if done.returncode != 0:
        raise PostgresError(f"initdb failed: {_one_line(done)}")


def _start(root: Path, bin_dir: Path) -> int:
    data, run, log = root / "data", root / "run", root / "postgres.log"
    if len(str(run)) > MAX_SOCKET_PATH:
        raise PostgresError(f"{run} is too long for a Unix socket path: use a shorter folder")
    for attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        options = (
            f"-c listen_addresses={HOST} -p {port} -k {run} "
            "-c max_connections=200 -c log_min_messages=warning"
        )
        argv = [str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log)]
        argv += ["-w", "-t", str(START_TIMEOUT), "-o", options]
        with _step(f"pg_ctl start on {HOST}:{port}"):
            # Its own session: a Ctrl-C meant for the caller must not stop the cluster.
            done = _run(argv, root, start_new_session=True)
        if done.returncode == 0:
            return port
        reason = _tail(log)
        if "already in use" in reason and attempt < PORT_ATTEMPTS - 1:
            _log(f"port {port} was taken: trying another")
            continue
        raise PostgresError(f"pg_ctl start failed: {_one_line(done)}; log: {reason} ({log})")
    raise AssertionError("unreachable")


def _psql(root: Path, bin_dir: Path, port: int, sql: str) -> subprocess.CompletedProcess:
    argv = [str(bin_dir / "psql"), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1"]
    argv += ["-h", str(root / "run"), "-p", str(port), "-U", PG_USER, "-d", "postgres", "-c", sql]
    return _run(argv, root, as_server=False)


def _create_database(root: Path, bin_dir: Path, port: int) -> None:
    found = _psql(root, bin_dir, port, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
    if found.returncode != 0:
        raise PostgresError(f"psql cannot reach the cluster on port {port}: {_one_line(found)}")
    if found.stdout.strip() == "1":
        return
    made = _psql(root, bin_dir, port, f"CREATE DATABASE {DATABASE}")
    if made.returncode != 0:
        raise PostgresError(f"CREATE DATABASE {DATABASE} failed: {_one_line(made)}")


def _stop(root: Path, bin_dir: Path | None = None) -> bool:
    bin_dir = bin_dir or find_bin_dir()
    data = Path(root).resolve() / "data"
    if bin_dir is None or not (data / "postmaster.pid").exists():
        return False
    root = data.parent
    with _locked(root):
        if _running_port(root, bin_dir) is None:
            return False
        argv = [str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast"]
        argv += ["-w", "-t", str(STOP_TIMEOUT)]
        with _step(f"pg_ctl stop {data}"):
            done = _run(argv, root)
        if done.returncode != 0:
            raise PostgresError(f"pg_ctl stop failed: {_one_line(done)}")
    return True


# --------------------------------------------------------------------------- public API


def up(root: Path) -> Postgres:
    """A running cluster in `root` with a database `prefect`; idempotent. See the docstring."""
    root = Path(root).resolve()
    start = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PostgresError(f"cannot make {root}: {e.strerror or e}") from None
    with _locked(root):
        bin_dir = _ensure_binaries(root)
        _prepare(root)
        port = _running_port(root, bin_dir)
        if port is None:
            _initdb(root, bin_dir)
            port = _start(root, bin_dir)
        else:
            _log(f"already running on {HOST}:{port}")
        _create_database(root, bin_dir, port)
    pg = Postgres(root=root, port=port, bin_dir=bin_dir)
    _log(f"ready in {time.monotonic() - start:.1f} s: {pg.url}")
    return pg


def down(root: Path) -> bool:
    """Stop the cluster in `root` (pg_ctl stop -m fast); keeps its data. True if it ran."""
    return _stop(Path(root))


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.postgres", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--root", type=Path, required=True, help="the cluster's folder")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            pg = up(args.root)
            for key, value in pg.env().items():
                print(f"{key}={value}")
        else:
            stopped = down(args.root)
            _log("stopped" if stopped else f"no cluster of {args.root} was running")
    except PostgresError as err:
        print(f"postgres: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
