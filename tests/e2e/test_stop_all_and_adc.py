"""`caliban stop` without --xgroup, and gcloud's application-default credentials in local
jobs: end to end on the real Docker engine and a caliban home of this module's own."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN, caliban_runner, wait_for
from tests.e2e.test_local_e2e import TRAIN
from tests.prefect_http import auth_headers

ADC_PROBE = """\
import hashlib, os
path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
readable = bool(path) and os.access(path, os.R_OK)
print("adc path:", path, "readable:", readable, flush=True)
if readable:
    print("adc sha256:", hashlib.sha256(open(path, "rb").read()).hexdigest(), flush=True)
"""


@pytest.fixture(scope="module")
def cli(tmp_path_factory, docker_client):
    root = tmp_path_factory.mktemp("stop-all")
    project = root / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (project / "trainer" / "adc.py").write_text(ADC_PROBE)
    (project / "requirements.txt").write_text("")
    env = {**os.environ, "CALIBAN_HOME": str(root / "home"), "HOME": str(root / "user"),
           "CLOUDSDK_CONFIG": str(root / "gcloud")}  # fmt: skip
    for name in ("PREFECT_API_URL", "GOOGLE_APPLICATION_CREDENTIALS"):
        env.pop(name, None)
    run = caliban_runner(project, env)
    try:
        yield run
    finally:
        subprocess.run([str(BIN / "caliban"), "server", "stop"], env=env, timeout=60)


def _states(cli) -> dict[str, str]:
    done = cli("status", "--max_jobs", "0", "--format", "json")
    assert done.returncode == 0, done.stderr
    return {row["xgroup"]: row["state"] for row in json.loads(done.stdout)}


def _start(cli, xgroup: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "caliban"), "run", "--nogpu", "--xgroup", xgroup, "trainer.train",
         "--", "--sleep", "600"],
        cwd=cli.cwd, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_stop_without_xgroup_lists_and_stops_all_your_running_groups(cli):
    groups = [f"all-{i}-{uuid.uuid4().hex[:6]}" for i in (1, 2)]
    running = [_start(cli, g) for g in groups]
    try:
        wait_for(lambda: all(_states(cli).get(g) == "RUNNING" for g in groups))

        dry = cli("stop", "--dry_run")
        assert dry.returncode == 0, dry.stderr
        assert "would be stopped" in dry.stdout
        assert all(f"xgroup {g}:" in dry.stdout for g in groups), dry.stdout

        declined = cli("stop", input="n\n")
        assert declined.returncode == 0, declined.stderr
        assert "do you wish to stop these 2 jobs? [yN]" in declined.stdout
        assert all(_states(cli)[g] == "RUNNING" for g in groups)

        stopped = cli("stop", input="y\n")
        assert stopped.returncode == 0, stopped.stderr
        assert "stopped 2 jobs in 2 groups" in stopped.stdout
        wait_for(lambda: all(_states(cli)[g] == "STOPPED" for g in groups))
        assert all(p.wait(timeout=60) != 0 for p in running)
        nothing = cli("stop", input="y\n")
        assert nothing.stdout.strip() == "no submitted or running jobs in any group"
    finally:
        for p in running:
            p.kill()


def test_local_jobs_read_the_application_default_credentials_mounted_read_only(cli, docker_client):
    secret = f"adc-secret-{uuid.uuid4().hex}"
    content = json.dumps({"type": "authorized_user", "refresh_token": secret}).encode()
    adc = Path(cli.env["CLOUDSDK_CONFIG"]) / "application_default_credentials.json"
    adc.parent.mkdir(parents=True, exist_ok=True)
    adc.write_bytes(content)
    adc.chmod(0o600)
    xgroup = f"adc-{uuid.uuid4().hex[:6]}"
    try:
        done = cli("run", "--nogpu", "--xgroup", xgroup, "trainer.adc")
    finally:
        adc.unlink()
    assert done.returncode == 0, done.stderr
    inside = "/var/run/caliban/application_default_credentials.json"
    assert f"adc path: {inside} readable: True" in done.stdout, done.stdout
    assert f"adc sha256: {hashlib.sha256(content).hexdigest()}" in done.stdout

    container = docker_client.containers.list(
        all=True, filters={"label": f"caliban.xgroup={xgroup}"}
    )[0]
    mount = next(m for m in container.attrs["Mounts"] if m["Destination"] == inside)
    assert mount["RW"] is False and mount["Source"] == str(adc.resolve())
    assert secret not in json.dumps(container.attrs["Config"])  # env and labels

    api = cli.env["CALIBAN_HOME"]
    url = json.loads((Path(api) / "server.json").read_text())["url"]
    with httpx.Client(base_url=url, headers=auth_headers(cli), timeout=30) as http:
        body = {"flow_runs": {"tags": {"all_": ["caliban", f"xgroup:{xgroup}"]}}}
        runs = http.post("/flow_runs/filter", json=body).json()
        assert runs
        ids = [r["id"] for r in runs]
        record = [
            runs,
            http.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": ids}}}).json(),
            http.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": ids}}}).json(),
            http.post("/artifacts/filter", json={"flow_runs": {"id": {"any_": ids}}}).json(),
        ]
    assert secret not in json.dumps(record)
    status = cli("status", "--xgroup", xgroup, "--format", "json")
    assert status.returncode == 0 and secret not in status.stdout
