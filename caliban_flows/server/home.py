"""The caliban home on disk: where the local server's state, lock, log and database live.

Files under the caliban home ($CALIBAN_HOME or ~/.caliban):
    server.json        pid (the supervisor's), port, url of the running server
    server.lock        flock: one command at a time decides whether to start a server
    server.last-used   its mtime is the last time a caliban command used the server
    server.log         the supervisor's and the server's output (previous one: server.log.1)
    api-auth           the server's API secret (Prefect's auth string), 0600: the UI asks for it
    prefect/           PREFECT_HOME of the local server and of caliban's Prefect clients
    leases/            who holds each submission lease (state.leases): a dead holder's is freed
    outputs/           local jobs' output folders, unless --output_dir names another

A new home's prefect/ gets the already-migrated database shipped for the installed Prefect
(see _seed_database). The home is its user's alone: 0700, and what is made in it 0600 (the
database holds the key that encrypts block secrets). Only the standard library loads here.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

DATABASE_URL_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"  # a user's own database: no seed
# Prefect's client gives up on a request after 60 s and sends it again, create or not. A
# SQLite-backed server waits up to 60 s for the write lock before it answers, so a create that
# waited was made twice (a second run of one subflow, the first left PENDING for good). Longer
# than the server's wait: its answer, or its 503, arrives first. A value the user set stands.
REQUEST_TIMEOUT_ENV, REQUEST_TIMEOUT_SECONDS = "PREFECT_API_REQUEST_TIMEOUT", "150"


def outwait_the_database(env: dict[str, str] | None = None) -> None:
    """Give `env` (default: this process's) the longer Prefect request timeout."""
    (os.environ if env is None else env).setdefault(REQUEST_TIMEOUT_ENV, REQUEST_TIMEOUT_SECONDS)


class _Paths:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.state = home / "server.json"
        self.lock = home / "server.lock"
        self.last_used = home / "server.last-used"
        self.log = home / "server.log"
        self.prefect_home = home / "prefect"
        self.auth = home / "api-auth"


def caliban_home() -> Path:
    return Path(os.environ.get("CALIBAN_HOME") or Path.home() / ".caliban").expanduser()


PRIVATE_UMASK = 0o077  # the supervisor and the server make files only their user can read


def _make_home(p: _Paths) -> None:
    """The home, 0700: made so, and an older one made so too."""
    p.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    if p.home.stat().st_mode & 0o077:
        p.home.chmod(0o700)


def api_auth(p: _Paths) -> str:
    """The local server's API secret, made once per home (`caliban:<random>`, 0600): the server
    requires it of every request but the health probe, and caliban's clients send it."""
    try:
        return p.auth.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    import secrets

    _make_home(p)
    tmp = p.auth.with_name(f"{p.auth.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"caliban:{secrets.token_urlsafe(32)}\n")
    try:
        os.link(tmp, p.auth)  # whole or not at all; of two at once, the first one's stays
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return p.auth.read_text(encoding="ascii").strip()


def _paths() -> _Paths:
    return _Paths(caliban_home())


# ---------------------------------------------------------------------------------------------
# server.lock, server.json, server.last-used


@contextlib.contextmanager
def _locked(p: _Paths) -> Iterator[None]:
    _make_home(p)
    fd = os.open(p.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_state(p: _Paths) -> dict | None:
    try:
        state = json.loads(p.state.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return None
    if not isinstance(state.get("url"), str):
        return None
    return state


def _forget_state(p: _Paths, pid: int) -> None:
    state = _read_state(p)
    if state is not None and state["pid"] == pid:
        with contextlib.suppress(FileNotFoundError):
            p.state.unlink()


def _touch(p: _Paths) -> None:
    _make_home(p)
    p.last_used.touch()
    os.utime(p.last_used)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# ---------------------------------------------------------------------------------------------
# prefect/prefect.db: the seed database


def _seed_database(p: _Paths) -> bool:
    """Give a new home the already-migrated database shipped for this Prefect version.

    Migrating a fresh database takes most of a first start (about 8 of 12 s on 2 cores);
    the seed (made by devtools/prefect_template.py) is that same result. With any other
    Prefect version there is no seed and Prefect migrates as usual.
    """
    import gzip
    from importlib.metadata import PackageNotFoundError, version
    from importlib.resources import files

    database = p.prefect_home / "prefect.db"
    if database.exists() or os.environ.get(DATABASE_URL_ENV):  # theirs, e.g. PostgreSQL
        return False
    try:
        seed = files("caliban_flows") / "data" / f"prefect-{version('prefect')}.db.gz"
    except PackageNotFoundError:
        return False
    if not seed.is_file():
        return False
    p.prefect_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = database.with_name(database.name + ".seeding")
    with seed.open("rb") as raw, gzip.GzipFile(fileobj=raw) as gz:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(gz.read())
    partial.replace(database)
    _seed_marker(p).write_text(version("prefect"))
    return True


def _seed_marker(p: _Paths) -> Path:
    return p.prefect_home / "caliban-seeded-for"


def _seeded_for_this_prefect(p: _Paths) -> bool:
    """True while the database is our seed's schema for the Prefect installed now."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return _seed_marker(p).read_text().strip() == version("prefect")
    except (OSError, PackageNotFoundError):
        return False
