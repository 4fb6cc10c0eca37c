"""Caliban 0.4.2's history database, read into plain records (no Caliban code needed).

Caliban kept its experiment groups in SQL (`~/.caliban/caliban.db`, or CALIBAN_DB_URL): tables
experiment_groups, experiments, container_specs, job_specs (one per experiment, platform and
image) and jobs (one per execution, with its last known status). Caliban recorded a local job
only once its container had ended, with its return code; remote jobs (AI Platform "CAIP", GKE)
with the status Caliban last saw.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caliban_flows.spec.errors import CalibanError, SpecError

DB_URL_ENV = "CALIBAN_DB_URL"
DEFAULT_PATH = "~/.caliban/caliban.db"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")

_QUERY = """
SELECT g.id, g.name, g.user, g.created,
       e.id, e.args, e.kwargs, c.spec,
       s.platform, s.spec,
       j.id, j.created, j.container, j.status, j.details
FROM jobs j
JOIN job_specs s ON j.job_spec_id = s.id
JOIN experiments e ON s.experiment_id = e.id
JOIN experiment_groups g ON e.xgroup_id = g.id
LEFT JOIN container_specs c ON e.container_spec_id = c.id
ORDER BY g.id, j.created, j.id
"""


@dataclass(frozen=True)
class CalibanJob:
    """One execution Caliban recorded: what ran, where, and its last known status."""

    job_id: int
    experiment_id: int
    platform: str  # LOCAL, CAIP or GKE
    status: str  # SUBMITTED, RUNNING, SUCCEEDED, FAILED, STOPPED or UNKNOWN
    created: str
    image: str
    args: tuple[str, ...]  # what the entry point got: script args, then the experiment's flags
    command: tuple[str, ...] = ()  # the entry point, from the container spec's package
    run_args: tuple[str, ...] = ()  # local: the `docker run` options the user gave
    gpu: bool = False
    exit_code: int | None = None
    remote_id: str | None = None  # CAIP: projects/P/jobs/J; GKE: the Kubernetes Job's name
    where: dict = field(default_factory=dict)  # CAIP: project, region; GKE: cluster
    # How Caliban built the image: its project folder, entry point, setup extras, extra dirs.
    build: dict | None = None


@dataclass(frozen=True)
class CalibanGroup:
    group_id: int
    name: str
    user: str
    created: str
    jobs: tuple[CalibanJob, ...]


def db_url(location: str | None) -> str:
    """The database Caliban used: a path or SQLAlchemy URL given, else CALIBAN_DB_URL, else
    Caliban's default file."""
    chosen = location or os.environ.get(DB_URL_ENV) or DEFAULT_PATH
    if "://" in chosen:
        return chosen
    return "sqlite:///" + str(Path(chosen).expanduser().resolve())


def read_history(url: str) -> list[CalibanGroup]:
    """Every group with at least one job, oldest first, its jobs in the order they ran."""
    rows = _sqlite_rows(url) if url.startswith("sqlite:///") else _sqlalchemy_rows(url)
    groups: dict[int, CalibanGroup] = {}
    for row in rows:
        gid, name, user, created = row[0], row[1], row[2] or "", str(row[3] or "")
        job = _job(row)
        if gid not in groups:
            groups[gid] = CalibanGroup(gid, name, user, created, ())
        group = groups[gid]
        groups[gid] = CalibanGroup(gid, group.name, group.user, group.created, (*group.jobs, job))
    return list(groups.values())


def _sqlite_rows(url: str) -> list[tuple]:
    import sqlite3

    path = Path(url.removeprefix("sqlite:///")).expanduser()
    if not path.is_file():
        raise SpecError(f"no Caliban history database at {path} (give its path or --db_url)")
    try:  # read-only: the import never changes Caliban's record
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return db.execute(_QUERY).fetchall()
    except sqlite3.DatabaseError as e:
        raise SpecError(f"{path} is not a Caliban history database: {e}") from None


def _sqlalchemy_rows(url: str) -> list[tuple]:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(sqlalchemy.text(_QUERY))]
    except ImportError as e:  # e.g. no PostgreSQL driver in this environment
        raise CalibanError(f"cannot open {_safe(url)}: {e}") from None
    except sqlalchemy.exc.ArgumentError as e:
        raise SpecError(f"not a database URL: {_safe(url)} ({e})") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        raise CalibanError(f"cannot read Caliban's history at {_safe(url)}: {_first(e)}") from None


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***@{host}" if at else url


def _first(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _json(value):
    return json.loads(value) if isinstance(value, str | bytes) else value


def _job(row: tuple) -> CalibanJob:
    exp_args, kwargs, container_spec = _json(row[5]), _json(row[6]), _json(row[7]) or {}
    platform, spec, details = str(row[8]).rsplit(".", 1)[-1], _json(row[9]) or {}, _json(row[14])
    details = details or {}
    common: dict[str, Any] = dict(
        job_id=int(row[10]),
        experiment_id=int(row[4]),
        platform=platform,
        status=str(row[13] or "UNKNOWN").rsplit(".", 1)[-1],
        created=str(row[11] or ""),
        command=_entry_point(container_spec),
        build=_build(container_spec),
    )
    if platform == "LOCAL":
        return CalibanJob(**common, **_local(spec, row[12]), exit_code=details.get("ret_code"))
    if platform == "CAIP":
        training = spec.get("trainingInput") or {}
        project = details.get("project_id")
        job_id = details.get("jobId") or spec.get("jobId")
        return CalibanJob(
            **common,
            image=(training.get("masterConfig") or {}).get("imageUri") or str(row[12]),
            args=tuple(training.get("args") or _flags(exp_args, kwargs)),
            remote_id=f"projects/{project}/jobs/{job_id}" if job_id else None,
            where={"project": project, "region": training.get("region")},
        )
    containers = ((spec.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or [{}]
    job_meta = (details.get("job") or {}).get("metadata") or spec.get("metadata") or {}
    return CalibanJob(
        **common,
        image=containers[0].get("image") or str(row[12]),
        args=tuple(containers[0].get("args") or _flags(exp_args, kwargs)),
        remote_id=job_meta.get("name"),
        where={k: details.get(k) for k in ("cluster_name", "project_id", "zone") if k in details},
    )


def _local(spec: dict, container: str) -> dict:
    """A local job's `docker run` command, taken apart: the user's run args sit between
    Caliban's `--ipc host` and its `-e PYTHONUNBUFFERED=1`; the job's args follow the image."""
    command = list(spec.get("command") or [])
    image = spec.get("container") or container
    at = command.index(image) if image in command else len(command)
    options = command[:at]
    gpu = "nvidia" in options
    start = options.index("host") + 1 if "--ipc" in options and "host" in options else 0
    end = next(
        (
            i
            for i in range(start, len(options))
            if options[i : i + 2] == ["-e", "PYTHONUNBUFFERED=1"]
        ),
        len(options),
    )
    return {"image": image, "args": tuple(command[at + 1 :]), "run_args": tuple(options[start:end]),
            "gpu": gpu}  # fmt: skip


def _entry_point(container_spec: dict) -> tuple[str, ...]:
    """What the image runs: Caliban's package (executable, path, script, module)."""
    package = container_spec.get("package") or []
    if len(package) < 4:
        return ()
    executable, _, script, module = package[:4]
    if module:
        return ("python", "-m", str(module))
    return (*[str(x) for x in executable or ["python"]], str(script))


def _build(container_spec: dict) -> dict | None:
    """caliban's way to rebuild the image from Caliban's project folder; None for a prebuilt
    image (`--image_id`)."""
    package = container_spec.get("package") or []
    root = container_spec.get("build_path")
    if not root or len(package) < 4:
        return None
    return {
        "root": str(root),
        "module": str(package[3] or package[2]),
        "gpu": container_spec.get("job_mode") == "GPU",
        "extras": list(container_spec.get("setup_extras") or []),
        "dirs": list(container_spec.get("extra_dirs") or []),
        "no_cache": False,
        "registry": None,
        "registry_block": None,
        "credentials": None,
    }


def _flags(args, kwargs) -> list[str]:
    """An experiment's argv as Caliban made it: its args, then `--key value` per setting, a
    true boolean as a bare `--key`, a false one left out."""
    out = [str(a) for a in args or []]
    for key, value in (kwargs or {}).items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False:
            out.extend([f"--{key}", str(value)])
    return out


def by_platform(jobs: Iterable[CalibanJob]) -> dict[str, list[CalibanJob]]:
    out: dict[str, list[CalibanJob]] = {}
    for job in jobs:
        out.setdefault(job.platform, []).append(job)
    return out
