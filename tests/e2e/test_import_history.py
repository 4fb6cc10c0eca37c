"""`caliban import_history`: a history database written by Caliban 0.4.2 itself comes along.

tests/fixtures/caliban042/caliban.db was made by devtools/make_caliban_db.py: Caliban 0.4.2
ran a 2x2 sweep (two jobs succeed, two fail, then Caliban's resubmit fails them again) and one
single job on this Docker engine. Imported into a real Prefect server (caliban's embedded one),
its groups show in `caliban status`, importing again adds nothing, and the failed jobs rerun
with `caliban resubmit` once the code is fixed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from devtools.make_caliban_db import PROJECT
from tests.conftest import BIN, caliban_runner

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "caliban042" / "caliban.db"
GROUPS = ("sweep-a", "single")
# Caliban's launcher turned the trainer's exit 3 into 1: the code Caliban recorded.
SWEEP = {
    ("caliban_1", 1): ("SUCCEEDED", 0),
    ("caliban_2", 1): ("SUCCEEDED", 0),
    ("caliban_3", 1): ("FAILED", 1),
    ("caliban_3", 2): ("FAILED", 1),
    ("caliban_4", 1): ("FAILED", 1),
    ("caliban_4", 2): ("FAILED", 1),
}


def _remove_containers(docker_client) -> None:
    """Containers of earlier runs of these tests: a rerun would find them as its attempts."""
    for xgroup in GROUPS:
        for container in docker_client.containers.list(
            all=True, filters={"label": f"caliban.xgroup={xgroup}"}
        ):
            container.remove(force=True)


@pytest.fixture(scope="module")
def cli(tmp_path_factory, docker_client):
    root = tmp_path_factory.mktemp("import-history")
    env = {**os.environ, "CALIBAN_HOME": str(root / "home"), "HOME": str(root / "user"),
           "USER": "ada", "LOGNAME": "ada"}  # fmt: skip
    for name in ("PREFECT_API_URL", "CALIBAN_DB_URL", "CALIBAN_USER"):
        env.pop(name, None)
    _remove_containers(docker_client)
    # The project folder Caliban built from, still there, its bug since fixed.
    shutil.rmtree(PROJECT.parent, ignore_errors=True)
    PROJECT.mkdir(parents=True)
    (PROJECT / "trainer.py").write_text("import sys\nprint('fixed', sys.argv[1:])\n")
    (PROJECT / "requirements.txt").write_text("")
    (PROJECT / ".calibanconfig.json").write_text('{"base_image": "python:3.11-slim"}\n')
    try:
        yield caliban_runner(root, env)
    finally:
        stop = "from caliban_flows.server import backend; backend.stop()"
        subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)
        _remove_containers(docker_client)
        shutil.rmtree(PROJECT.parent, ignore_errors=True)


def _jobs(cli, xgroup: str) -> dict[tuple[str, int], dict]:
    shown = cli("status", "--xgroup", xgroup, "--max_jobs", "0", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    return {(r["name"], r["attempt"]): r for r in json.loads(shown.stdout)}


def test_caliban_groups_are_imported_once_and_shown(cli, tmp_path):
    first = cli("import_history", str(FIXTURE))
    assert first.returncode == 0, first.stderr
    assert "2 groups imported, 0 already imported" in first.stdout

    text = cli("status")
    assert text.returncode == 0, text.stderr
    assert "xgroup sweep-a:" in text.stdout and "xgroup single:" in text.stdout
    assert "python trainer.py --epochs 2 --fail 1 --learning_rate 0.1" in text.stdout
    sweep = _jobs(cli, "sweep-a")
    assert {k: (r["state"], r["exit_code"]) for k, r in sweep.items()} == SWEEP
    assert {r["platform"] for r in sweep.values()} == {"local"}
    assert sweep["caliban_1", 1]["args"] == ["--epochs", "2", "--fail", "0", "--learning_rate",
                                            "0.1"]  # fmt: skip
    single = _jobs(cli, "single")
    assert [(r["state"], r["args"]) for r in single.values()] == [("SUCCEEDED", ["--epochs", "1"])]

    # Again, from another path and through CALIBAN_DB_URL and --db_url: nothing twice.
    copy = tmp_path / "elsewhere.db"
    shutil.copyfile(FIXTURE, copy)
    again = [
        cli("import_history", str(FIXTURE)),
        cli("import_history", env={**cli.env, "CALIBAN_DB_URL": f"sqlite:///{copy}"}),
        cli("import_history", "--db_url", f"sqlite:///{copy}"),
    ]
    for done in again:
        assert done.returncode == 0, done.stderr
        assert "0 groups imported, 2 already imported" in done.stdout
    assert _jobs(cli, "sweep-a") == sweep
    assert len(_jobs(cli, "single")) == 1

    # Caliban recorded its local jobs once they had ended: nothing to stop.
    stopped = cli("stop", "--xgroup", "sweep-a", "--yes")
    assert stopped.returncode == 0, stopped.stderr
    assert "no submitted or running jobs in xgroup 'sweep-a'" in stopped.stdout


def test_failed_caliban_jobs_rerun_from_the_fixed_code(cli):
    """`caliban resubmit` rebuilds the folder Caliban built from (its code fixed) and reruns
    the failed jobs as their attempt 3; the others stay as Caliban recorded them."""
    assert cli("import_history", str(FIXTURE)).returncode == 0
    rerun = cli("resubmit", "--xgroup", "sweep-a", "--yes")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "Job caliban_3 succeeded!" in rerun.stdout
    sweep = _jobs(cli, "sweep-a")
    assert sweep["caliban_3", 3]["state"] == sweep["caliban_4", 3]["state"] == "SUCCEEDED"
    assert sweep["caliban_3", 3]["image"].startswith("caliban/")
    assert {k: (r["state"], r["exit_code"]) for k, r in sweep.items() if k[1] < 3} == SWEEP


def test_an_ai_platform_job_is_shown_with_a_note(cli, tmp_path):
    """Caliban's database with one AI Platform job it last saw RUNNING, added to a copy (no
    AI Platform here to run one): shown UNKNOWN with why, neither stopped nor resubmitted."""
    db = tmp_path / "caliban.db"
    shutil.copyfile(FIXTURE, db)
    spec = {"jobId": "caliban_ada_1", "trainingInput": {"region": "us-central1", "args": ["--x",
            "1"], "masterConfig": {"imageUri": "gcr.io/p/img:1"}}}  # fmt: skip
    with sqlite3.connect(db) as conn:
        stamp = "2020-06-01 10:00:00.000000"
        conn.execute("INSERT INTO experiment_groups VALUES (9, 'cloud-a', ?, 'ada')", (stamp,))
        conn.execute("INSERT INTO experiments VALUES (90, ?, '[\"--x\", \"1\"]', '{}', 1, 9)",
                     (stamp,))  # fmt: skip
        conn.execute(
            "INSERT INTO job_specs VALUES (90, ?, ?, 'CAIP', 90)", (stamp, json.dumps(spec))
        )
        conn.execute(
            "INSERT INTO jobs VALUES (90, ?, 90, 90, 'gcr.io/p/img:1', 'RUNNING', ?, 'ada')",
            (stamp, json.dumps({"jobId": "caliban_ada_1", "project_id": "p"})),
        )
    done = cli("import_history", str(db))
    assert done.returncode == 0, done.stderr
    assert "1 groups imported, 2 already imported" in done.stdout
    assert "Vertex AI does not know it" in done.stderr
    assert "gcloud ai-platform jobs describe|cancel projects/p/jobs/caliban_ada_1" in done.stderr

    [job] = _jobs(cli, "cloud-a").values()
    assert (job["state"], job["args"]) == ("UNKNOWN", ["--x", "1"])
    assert "Vertex AI does not know it" in job["detail"]
    stopped = cli("stop", "--xgroup", "cloud-a", "--yes")
    assert "no submitted or running jobs" in stopped.stdout, stopped.stderr
    refused = cli("resubmit", "--xgroup", "cloud-a", "--all_jobs", "--yes")
    assert refused.returncode == 1
    assert "job caliban_1 was recorded by an older caliban" in refused.stderr


def test_a_missing_database_is_one_line(cli, tmp_path):
    missing = cli("import_history", str(tmp_path / "nope.db"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"caliban import_history: error: no Caliban history database at {tmp_path / 'nope.db'} "
        "(give its path or --db_url)"
    ]
