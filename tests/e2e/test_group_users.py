"""Groups have users: two people who both name their group `sweep` on one Prefect server (one
caliban home here) keep two groups. status, stop and resubmit act on your own unless you say
--user NAME or --all_users, and another user's jobs are always asked about.

The user is the OS user as Python's getpass reads it ($USER first), so one test process can be
two people.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import BIN, caliban_runner

TRAIN = "import sys\nprint('training', sys.argv[1:])\n"


@pytest.fixture
def two_users(tmp_path: Path, docker_client):
    project = tmp_path / "project"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (project / "requirements.txt").write_text("")
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "u")}
    env.pop("PREFECT_API_URL", None)
    users = {name: caliban_runner(project, {**env, "USER": name, "LOGNAME": name})
             for name in ("alice", "bob")}  # fmt: skip
    yield users
    stop = "from caliban_flows.server import backend; backend.stop()"
    subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)


def _rows(cli, xgroup: str, *flags: str) -> list[dict]:
    done = cli("status", "--xgroup", xgroup, "--format", "json", "--max_jobs", "0", *flags)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_two_users_groups_of_one_name_stay_apart(two_users, docker_client):
    alice, bob = two_users["alice"], two_users["bob"]
    xgroup = f"sweep-{uuid.uuid4().hex[:6]}"
    for cli in (alice, bob):
        ran = cli("run", "--nogpu", "--xgroup", xgroup, "trainer.train", "--", "--lr", "0.1")
        assert ran.returncode == 0, ran.stderr
    containers = docker_client.containers.list(
        all=True, filters={"label": f"caliban.xgroup={xgroup}"}
    )
    assert len(containers) == 2  # bob's run found no job of alice's to take for his own

    mine = _rows(alice, xgroup)
    assert [(r["user"], r["attempt"], r["state"]) for r in mine] == [("alice", 1, "SUCCEEDED")]
    assert [r["user"] for r in _rows(bob, xgroup)] == ["bob"]
    assert [r["user"] for r in _rows(bob, xgroup, "--user", "alice")] == ["alice"]
    assert sorted(r["user"] for r in _rows(bob, xgroup, "--all_users")) == ["alice", "bob"]
    assert len({r["key"] for r in _rows(bob, xgroup, "--all_users")}) == 2
    both = bob("status", "--xgroup", xgroup, "--all_users", "--user", "alice")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1, both.stderr

    # bob reruns alice's job: asked even with --yes; "no" changes nothing.
    again = ("resubmit", "--xgroup", xgroup, "--all_jobs", "--yes", "--user", "alice")
    refused = bob(*again, input="n\n")
    assert refused.returncode == 0, refused.stderr
    assert "belong to alice" in refused.stdout
    assert [r["attempt"] for r in _rows(alice, xgroup)] == [1]
    agreed = bob(*again, input="y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert sorted(r["attempt"] for r in _rows(alice, xgroup)) == [1, 2]
    assert [r["attempt"] for r in _rows(bob, xgroup)] == [1]  # bob's own job untouched
