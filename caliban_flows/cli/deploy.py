"""`caliban deploy`: register a prefect.yaml's deployments against caliban's Prefect API.

Only typer loads at start-up; Prefect is imported inside the command. The
`caliban.image.pushed` event their triggers react to is caliban_flows.state.events.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from caliban_flows.spec.errors import CalibanError, SpecError

DEFAULT_FILE = "deployments/prefect.yaml"
DEFAULT_POOL = "caliban-process"
_CREATED = re.compile(r"Deployment '([^']+)' successfully created")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b")
_BOX = "│╭╮╰╯─┃━┏┓┗┛ "


def deploy(
    prefect_file: Annotated[
        Path,
        typer.Option(
            "--prefect-file",
            "--prefect_file",
            "-f",
            metavar="FILE",
            help="The prefect.yaml to deploy.",
        ),
    ] = Path(DEFAULT_FILE),
    names: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            "-n",
            metavar="NAME",
            help="Deploy only this deployment (repeatable; default: all of them).",
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show Prefect's own `prefect deploy` output.")
    ] = False,
) -> None:
    """Register the deployments of a prefect.yaml (sweeps on schedules and events) in Prefect.

    Runs `prefect deploy` against caliban's Prefect API (its local server, or
    PREFECT_API_URL), after creating the process work pools the file names. Flow runs then
    start once a worker polls the pool: `prefect worker start --pool caliban-process`.
    Deployments without a work pool go to caliban-process. Run it from the project folder:
    flow runs without a `pull` section work in the folder it was run from.
    """
    deployments = read_deployments(prefect_file, names)
    from caliban_flows.server.ready import prefect_ready

    url = prefect_ready("prefect.client.orchestration")
    pools = list(dict.fromkeys(_pool(d) or DEFAULT_POOL for d in deployments))
    for pool in ensure_pools(pools):
        print(f"created process work pool {pool!r}", file=sys.stderr)
    created = _prefect_deploy(prefect_file, names, deployments, verbose=verbose)
    for line in created or [_deployment_label(d) for d in deployments]:
        print(f"deployed {line}")
    for d in deployments:
        for what in _describe(d):
            print(f"  {d['name']}: {what}")
    _hints(url, pools)


def read_deployments(path: Path, names: list[str] | None = None) -> list[dict]:
    """The file's deployments (only `names`, if given); SpecError on anything unusable."""
    import yaml

    if not path.is_file():
        raise SpecError(f"{path} is not a file: give a prefect.yaml with --prefect-file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read {path}: {e}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{path} is not valid YAML{at}: {reason}") from None
    found = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(found, list) or not found:
        raise SpecError(f"{path} has no `deployments:` list")
    out = []
    for i, d in enumerate(found, 1):
        if not isinstance(d, dict) or not d.get("name"):
            raise SpecError(f"{path}: deployment {i} has no name")
        if not d.get("entrypoint"):
            raise SpecError(f"{path}: deployment {d['name']!r} has no entrypoint")
        out.append(d)
    if names:
        known = {d["name"] for d in out}
        missing = [n for n in names if n not in known]
        if missing:
            raise SpecError(
                f"{path} has no deployment named {', '.join(map(repr, missing))}; "
                f"it has {', '.join(sorted(known))}"
            )
        out = [d for d in out if d["name"] in names]
    return out


def _pool(deployment: dict) -> str | None:
    pool = deployment.get("work_pool")
    return pool.get("name") if isinstance(pool, dict) else None


def ensure_pools(names: list[str]) -> list[str]:
    """Create the missing work pools as process pools; the names of those created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    created = []
    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_work_pool(name)
                continue
            except ObjectNotFound:
                pass
            template = ProcessWorker.get_default_base_job_template()
            try:
                client.create_work_pool(
                    WorkPoolCreate(name=name, type="process", base_job_template=template)
                )
            except ObjectAlreadyExists:  # created meanwhile by another command
                continue
            created.append(name)
    return created


def _prefect_deploy(path: Path, names: list[str] | None, deployments: list[dict], *,
                    verbose: bool) -> list[str]:  # fmt: skip
    argv = [sys.executable, "-m", "prefect", "deploy", "--prefect-file", str(path)]
    if names:
        for name in names:
            argv += ["--name", name]
    else:
        argv.append("--all")
    env = dict(os.environ)  # PREFECT_API_URL and PREFECT_HOME as prefect_ready() set them
    env["PREFECT_CLI_PROMPT"] = "false"  # never ask: nobody may be at the terminal
    env["PREFECT_CLI_COLORS"] = "false"
    env["COLUMNS"] = "1000"  # one line per message, so that they can be read back
    if any(_pool(d) is None for d in deployments):
        env["PREFECT_DEFAULT_WORK_POOL_NAME"] = DEFAULT_POOL
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=not verbose,
            text=True,
        )
    except OSError as e:
        raise CalibanError(f"cannot run prefect deploy: {e}") from None
    if done.returncode != 0:
        reason = _reason(done.stdout or "", done.stderr or "") if not verbose else "see above"
        raise CalibanError(f"prefect deploy of {path} failed: {reason}")
    return _CREATED.findall(done.stdout or "")


def _reason(out: str, err: str) -> str:
    """The line that says why: an exception's last line, else Prefect's last message."""
    for text in (out, err):
        invalid = _validation_errors(text)
        if invalid:
            return invalid
    for text in (err, out):
        lines = [x.strip(_BOX) for x in text.splitlines()]
        telling = [x for x in lines if _ERROR_LINE.match(x)]
        if telling:
            return telling[-1]
    lines = [x.strip(_BOX) for x in (out + "\n" + err).splitlines()]
    lines = [x for x in lines if x and x != "An exception occurred."]
    return lines[-1] if lines else "no output"


def _validation_errors(text: str) -> str | None:
    """pydantic's "N validation errors for X" block, as one line: field: message; ..."""
    lines = [x for x in text.splitlines() if not x.strip().startswith("For further information")]
    for i, line in enumerate(lines):
        if not re.match(r"^\d+ validation errors? for ", line.strip(_BOX)):
            continue
        head = re.sub(r" for \S+$", "", line.strip(_BOX))
        parts = []
        rest = lines[i + 1 :]
        # Each error: the field's path unindented, then its message indented.
        for field, message in itertools.pairwise(rest):
            if field.startswith(" ") or not message.startswith(" "):
                continue
            parts.append(f"{field.strip()}: {message.strip()}")
        return f"{head}: {'; '.join(parts)}" if parts else head
    return None


def _deployment_label(deployment: dict) -> str:
    return str(deployment["name"])


def _describe(deployment: dict) -> list[str]:
    """What starts the deployment's runs, for the summary."""
    out = []
    for s in deployment.get("schedules") or []:
        if not isinstance(s, dict):
            continue
        state = " (inactive)" if s.get("active") is False else ""
        if s.get("cron"):
            out.append(f"cron {s['cron']!r}{state}")
        elif s.get("interval") is not None:
            out.append(f"every {s['interval']} s{state}")
        elif s.get("rrule"):
            out.append(f"rrule {s['rrule']!r}{state}")
    for t in deployment.get("triggers") or []:
        if not isinstance(t, dict):
            continue
        expect = t.get("expect") or []
        expect = [expect] if isinstance(expect, str) else list(expect)
        state = "" if t.get("enabled", True) else " (disabled)"
        out.append(f"on {' or '.join(map(str, expect)) or 'an event'}{state}")
    return out


def _hints(url: str, pools: list[str]) -> None:
    from caliban_flows.server import backend

    say = ", ".join(pools)
    local = backend.status()["mode"] == "local"
    # The local server requires its secret; the hint names the file, never prints it.
    secret = backend.caliban_home() / "api-auth"
    auth = f'PREFECT_API_AUTH_STRING="$(cat {secret})" ' if local else ""
    print(
        f"runs start once a worker polls {say}: "
        f"PREFECT_API_URL={url} {auth}prefect worker start --pool {pools[0]}",
        file=sys.stderr,
    )
    if not local:
        return
    idle = _server_idle_minutes(backend.caliban_home())
    if idle > 0:
        print(
            f"note: caliban's local Prefect server stops after {idle:g} idle minutes, and with "
            "it schedules and triggers: for deployments, start it with "
            "CALIBAN_SERVER_IDLE_MINUTES=0 (after `python -m caliban_flows.server.backend stop`), "
            "or use your own PREFECT_API_URL",
            file=sys.stderr,
        )


def _server_idle_minutes(home: Path) -> float:
    """The running local server's idle limit (from its server.json); 0 means never."""
    import json

    try:
        return float(json.loads((home / "server.json").read_text()).get("idle_minutes", 30))
    except (OSError, ValueError, TypeError, AttributeError):
        return 30.0


def register(app: typer.Typer) -> None:
    app.command()(deploy)
