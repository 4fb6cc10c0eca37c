"""The `kubernetes` client's parts, imported without its package-wide imports.

Each case runs in a fresh interpreter, since what is imported is the thing under test, and
talks to the Kubernetes emulator through a real kubeconfig.
"""

from __future__ import annotations

import textwrap

from tests.conftest import fresh_python

SETUP = """
import asyncio, json, sys
from pathlib import Path
from devtools.k8s_emulator import K8sEmulator
from caliban_flows.platforms.base import JobRequest
from caliban_flows.platforms.kubernetes.adapter import Kubernetes
from caliban_flows.spec import k8s_job as kj

emu = K8sEmulator(run_containers=False, sim_step=0.01).start()
kubeconfig = emu.write_kubeconfig(Path(sys.argv[1]) / "kubeconfig")
k8s = Kubernetes(config_file=str(kubeconfig), resources=kj.resources(min_cpu=None, min_mem=None))
request = JobRequest(xgroup="g", key="k1", attempt=1, name="job", image="img:1", args=("--a", "1"),
                     labels={})

def loaded():
    return {
        "modules": sum(1 for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")),
        "models_ran": "kubernetes.client.models.v1_job" in sys.modules,
    }
"""


def probe(tmp_path, body: str) -> dict:
    code = SETUP + textwrap.dedent(body) + "\nemu.stop()\nprint(json.dumps(out))\n"
    return fresh_python(code, str(tmp_path))


def test_submit_and_poll_load_a_few_modules_and_no_models(tmp_path):
    out = probe(
        tmp_path,
        """
        asyncio.run(k8s.submit_all([request]))
        jobs = k8s.poll("g")
        k8s.cancel([jobs[0].remote_id])
        out = {**loaded(), "polled": [(j.key, j.attempt) for j in jobs], "left": len(emu.jobs())}
        """,
    )
    assert out["polled"] == [["k1", 1]] and out["left"] == 0
    assert not out["models_ran"]
    assert out["modules"] < 40, out  # the whole client is about 870


def test_the_rest_of_the_package_loads_on_first_use(tmp_path):
    out = probe(
        tmp_path,
        """
        jobs = k8s.poll("g")
        before = loaded()
        import kubernetes
        from kubernetes import client, config, watch
        from caliban_flows.platforms.kubernetes import client as kube_client
        body = client.ApiClient().sanitize_for_serialization(
            client.V1Job(metadata=client.V1ObjectMeta(name="x")))
        out = {
            "before": before,
            "after": loaded(),
            "same_class": client.BatchV1Api is type(k8s.batch()),
            "same_error": client.exceptions.ApiException is kube_client.api_exception(),
            "body": body,
            "watch": watch.Watch.__name__,
            "config": config.new_client_from_config is kube_client.config().new_client_from_config,
        }
        """,
    )
    assert not out["before"]["models_ran"]
    assert out["after"]["models_ran"] and out["after"]["modules"] > 500
    assert out["same_class"] and out["same_error"] and out["config"]
    assert out["body"] == {"metadata": {"name": "x"}} and out["watch"] == "Watch"


def test_the_client_models_still_deserialize(tmp_path):
    out = probe(
        tmp_path,
        """
        asyncio.run(k8s.submit_all([request]))
        api = k8s.api()
        listed = k8s.batch().list_namespaced_job(k8s.namespace)  # the client's models
        out = {**loaded(), "names": [j.metadata.name for j in listed.items]}
        """,
    )
    assert out["models_ran"] and len(out["names"]) == 1


def test_an_imported_client_is_used_as_it_is(tmp_path):
    out = probe(
        tmp_path,
        """
        import kubernetes
        from kubernetes import client
        jobs = k8s.poll("g")
        out = {**loaded(), "same": client.BatchV1Api is type(k8s.batch())}
        """,
    )
    assert out["same"] and out["modules"] > 500


def test_a_client_laid_out_otherwise_is_imported_the_plain_way(tmp_path):
    out = probe(
        tmp_path,
        """
        from caliban_flows.platforms.kubernetes import client as kube_client
        # A module where a package used to be: the lean path refuses it and falls back.
        kube_client.DEFERRED_PACKAGES = (*kube_client.DEFERRED_PACKAGES, "kubernetes.client.rest")
        asyncio.run(k8s.submit_all([request]))
        out = {**loaded(), "polled": len(k8s.poll("g"))}
        """,
    )
    assert out["polled"] == 1 and out["modules"] > 500
