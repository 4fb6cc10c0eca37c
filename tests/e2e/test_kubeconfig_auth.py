"""`caliban cluster` with the kubeconfigs users have, against an API server that checks them:
the emulator over TLS (the test CA), requiring a bearer token or a client certificate its
client CA signed. Each kind submits; a refused credential gives one line, exit 1, no Job.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from devtools import k8s_auth
from devtools.k8s_emulator import K8sEmulator
from tests.conftest import caliban_runner
from tests.e2e.test_kubernetes_e2e import IMAGE, SUBMIT, TRAIN, group_jobs


@pytest.fixture(scope="module")
def cluster(caliban_home):
    """One TLS emulator that requires credentials, and one caliban home, for the module."""
    with K8sEmulator(run_containers=False, sim_step=0.05, seed=11, tls=True,
                     require_auth=True, token=f"t-{uuid.uuid4().hex}") as emulator:  # fmt: skip
        yield emulator, caliban_home


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text(TRAIN)
    (tmp_path / "requirements.txt").write_text("")
    (tmp_path / "exp.json").write_text(json.dumps({"i": [1, 2]}))
    return tmp_path


def _submit(cluster, project: Path, user: dict):
    emulator, home = cluster
    kubeconfig = emulator.write_kubeconfig(project / "kubeconfig", user=user)
    env = {**os.environ, "CALIBAN_HOME": str(home), "HOME": str(project / "home"),
           "KUBECONFIG": str(kubeconfig), "PROJECT_ID": ""}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    xgroup = f"auth-{uuid.uuid4().hex[:8]}"
    cli = caliban_runner(project, env)
    done = cli(*SUBMIT, "--image_tag", IMAGE, "--xgroup", xgroup,
               "--experiment_config", "exp.json", "trainer.train")  # fmt: skip
    return xgroup, done


def _users(emulator: K8sEmulator) -> dict[str, dict]:
    assert emulator.client_ca is not None
    return {
        "token": k8s_auth.token_user(emulator.token),
        "client certificate": k8s_auth.cert_user(*emulator.client_ca.issue("alice")),
        "exec plugin": k8s_auth.exec_user(emulator.token),
    }


@pytest.mark.parametrize("kind", ["token", "client certificate", "exec plugin"])
def test_each_kind_of_kubeconfig_user_submits(cluster, project, kind):
    emulator, _ = cluster
    xgroup, done = _submit(cluster, project, _users(emulator)[kind])
    assert done.returncode == 0, done.stderr
    assert len(group_jobs(emulator, xgroup)) == 2


@pytest.mark.parametrize("kind", ["token", "exec plugin"])
def test_a_refused_credential_is_one_line_and_no_job(cluster, project, kind):
    emulator, _ = cluster
    user = k8s_auth.token_user("wrong") if kind == "token" else k8s_auth.exec_user("wrong")
    xgroup, done = _submit(cluster, project, user)
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("waited")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "401" in lines[0] or "Unauthorized" in lines[0], lines[0]
    assert group_jobs(emulator, xgroup) == []
