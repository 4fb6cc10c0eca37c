"""Secret values a user passes (`--docker_run_args "-e TOKEN=..."`, a script's `--api_key X`)
reach the job, and nothing caliban or Prefect keeps holds them: every flow run, task run,
artifact, log line, event, block (without its secrets), container label and file of the
caliban home is searched for them, after a run and a resubmit.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools import test_pki
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, caliban_runner, wait_for
from tests.e2e.test_vertex_e2e import IMAGE, api_url
from tests.prefect_http import api_client

TOKEN = f"tok-{uuid.uuid4().hex}"
API_KEY = f"key-{uuid.uuid4().hex}"
SECRETS = (TOKEN, API_KEY)


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# The job checks what it got against hashes: its source holds no secret either.
TRAIN = f"""\
import hashlib, os, sys
args = sys.argv[1:]
key = args[args.index("--api_key") + 1]
sha = lambda v: hashlib.sha256(v.encode()).hexdigest()
got_key = sha(key) == "{_sha(API_KEY)}"
got_token = sha(os.environ.get("TOKEN", "")) == "{_sha(TOKEN)}"
print("api_key", "ok" if got_key else "WRONG", "TOKEN", "ok" if got_token else "WRONG")
sys.exit(0 if got_key and got_token else 3)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "trainer").mkdir(parents=True)
    (root / "trainer" / "__init__.py").write_text("")
    (root / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (root / "requirements.txt").write_text("")
    (root / "exp.json").write_text('{"lr": [0.1, 0.2]}')
    return root


@pytest.fixture
def cli(project: Path, docker_client):
    home = project.parent / "home"
    env = {**os.environ, "CALIBAN_HOME": str(home), "HOME": str(project.parent / "user")}
    env.pop("PREFECT_API_URL", None)
    runner = caliban_runner(project, env)
    yield runner
    stop = "from caliban_flows.server import backend; backend.stop()"
    subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)


def _paged(http, path: str, body: dict | None = None) -> Iterator[dict]:
    offset = 0
    while True:
        page = http.post(path, json={**(body or {}), "limit": 200, "offset": offset})
        page.raise_for_status()
        yield from page.json()
        if len(page.json()) < 200:
            return
        offset += 200


def _events(http) -> Iterator[dict]:
    since = {"filter": {"occurred": {"since": "2000-01-01T00:00:00Z"}}, "limit": 50}
    got = http.post("/events/filter", json=since)
    got.raise_for_status()
    page = got.json()
    while True:
        yield from page["events"]
        if not page.get("next_page"):
            return
        got = http.get(page["next_page"])
        got.raise_for_status()
        page = got.json()


def _every_run_state_has_its_event(http) -> bool:
    """The server writes events after it answers; wait for the latest state of each run."""
    runs = list(_paged(http, "/flow_runs/filter"))
    seen = {(e["resource"]["prefect.resource.id"], e["event"]) for e in _events(http)}
    return bool(runs) and all(
        (f"prefect.flow-run.{run['id']}", f"prefect.flow-run.{run['state']['name']}") in seen
        for run in runs
    )


def _everything_prefect_keeps(cli) -> dict[str, str]:
    """What the home's Prefect API gives back, by kind, as text."""
    with api_client(api_url(cli), cli, timeout=60) as http:
        wait_for(lambda: _every_run_state_has_its_event(http))
        kept = {
            "flow runs": list(_paged(http, "/flow_runs/filter")),
            "task runs": list(_paged(http, "/task_runs/filter")),
            "artifacts": list(_paged(http, "/artifacts/filter")),
            "logs": list(_paged(http, "/logs/filter")),
            "blocks": list(_paged(http, "/block_documents/filter")),
            "deployments": list(_paged(http, "/deployments/filter")),
            "events": list(_events(http)),
        }
    assert kept["flow runs"] and kept["artifacts"] and kept["logs"] and kept["events"], kept
    return {kind: json.dumps(items) for kind, items in kept.items()}


def _files_of(home: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(home.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(home)), path.read_bytes()


def _found(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in zip(("TOKEN", "--api_key"), SECRETS) if value.encode() in data]


def test_secret_values_reach_the_job_and_nothing_kept_holds_them(cli, project, docker_client):
    xgroup = f"secrets-{uuid.uuid4().hex[:8]}"
    argv = ["--nogpu", "--xgroup", xgroup, "--docker_run_args", f"-e TOKEN={TOKEN}",
            "trainer.train", "--", "--api_key", API_KEY, "--lr", "0.1"]  # fmt: skip
    ran = cli("run", *argv)
    assert ran.returncode == 0, ran.stderr  # the job exits 3 unless both values reached it
    assert "api_key ok TOKEN ok" in ran.stdout
    assert _found(ran.stdout + ran.stderr) == []
    # A rerun (what Retry in the UI also does) finds the --api_key value again; TOKEN comes
    # from this environment, as `-e TOKEN` does for docker.
    again = cli(
        "resubmit", "--xgroup", xgroup, "--all_jobs", "--yes", env={**cli.env, "TOKEN": TOKEN}
    )
    assert again.returncode == 0, again.stderr
    assert _found(again.stdout + again.stderr) == []
    # A key for the rerun means nothing to local containers: refused, not ignored.
    key = test_pki.write_key(project.parent / "sa.json", test_pki.new_service_account_key("p"))
    keyed = cli("resubmit", "--xgroup", xgroup, "--all_jobs", "--yes", "--cloud_key", str(key),
                env={**cli.env, "TOKEN": TOKEN})  # fmt: skip
    assert keyed.returncode == 2 and "--cloud_key applies to" in keyed.stderr, keyed.stderr

    containers = docker_client.containers.list(
        all=True, filters={"label": f"caliban.xgroup={xgroup}"}
    )
    assert len(containers) == 2
    for container in containers:
        assert container.attrs["State"]["ExitCode"] == 0
        assert API_KEY in container.attrs["Config"]["Cmd"]  # the job got it...
        assert _found(json.dumps(container.labels)) == []  # ...no label did
    for kind, text in _everything_prefect_keeps(cli).items():
        assert _found(text) == [], kind
    home = Path(cli.env["CALIBAN_HOME"])
    for name, data in _files_of(home):
        assert _found(data) == [], name


def test_a_vertex_job_gets_the_secret_arg_and_no_label_or_record_holds_it(project, tmp_path):
    home = tmp_path / "vertex-home"
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=3) as vertex:
        env = {**os.environ, "CALIBAN_HOME": str(home), "HOME": str(tmp_path / "user"),
               **vertex.client_env(vertex.new_key()), "CALIBAN_VERTEX_POLL_SECONDS": "0.2",
               "PROJECT_ID": "caliban-test"}  # fmt: skip
        env.pop("PREFECT_API_URL", None)
        cli = caliban_runner(project, env)
        try:
            xgroup = f"vsecrets-{uuid.uuid4().hex[:8]}"
            sent = cli("cloud", "--nogpu", "--xgroup", xgroup, "--image_tag", IMAGE,
                       "--experiment_config", "exp.json", "trainer.train", "--",
                       "--api_key", API_KEY)  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            jobs = vertex.jobs()
            assert len(jobs) == 2
            for job in jobs:
                args = list(job.job_spec.worker_pool_specs[0].container_spec.args)
                assert API_KEY in args
                assert _found(json.dumps(dict(job.labels))) == []
            kept = _everything_prefect_keeps(cli)
        finally:
            stop = "from caliban_flows.server import backend; backend.stop()"
            subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)
    for kind, text in kept.items():
        assert _found(text) == [], kind
    for name, data in _files_of(home):
        assert _found(data) == [], name
