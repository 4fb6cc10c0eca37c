"""`aiplatform_v1`'s JobService parts, imported without its package-wide imports.

The emulator runs here (it imports all of aiplatform_v1); each case is a fresh interpreter
talking to it, since what that interpreter imports is the thing under test.
"""

from __future__ import annotations

import textwrap

import pytest

from devtools.vertex_emulator import VertexEmulator
from tests.conftest import fresh_python

SETUP = """
import asyncio, json, sys
from caliban_flows.platforms.base import JobRequest
from caliban_flows.platforms.vertex.adapter import Vertex
from caliban_flows.spec import vertex_job as vj

placement = vj.Placement(project="p", region="us-central1", machine_type="n1-standard-4")
vertex = Vertex("p", "us-central1", placement=placement, endpoint=sys.argv[1])
request = JobRequest(xgroup="g", key="k1", attempt=1, name="job", image="img:1", args=("--a",),
                     labels={})

def loaded():
    return sum(1 for m in sys.modules if m.startswith("google.cloud.aiplatform_v1"))
"""


@pytest.fixture(scope="module")
def endpoint():
    """Each fresh interpreter inherits the TLS roots and the key caliban would be given."""
    with (
        VertexEmulator(run_containers=False, sim_step=0.05) as emu,
        pytest.MonkeyPatch.context() as env,
    ):
        for name, value in emu.client_env(emu.new_key()).items():
            env.setenv(name, value)
        yield emu.endpoint


def probe(endpoint: str, body: str) -> dict:
    return fresh_python(SETUP + textwrap.dedent(body) + "\nprint(json.dumps(out))\n", endpoint)


def test_submit_and_poll_load_a_few_modules(endpoint):
    out = probe(
        endpoint,
        """
        asyncio.run(vertex.submit_all([request]))
        jobs = vertex.poll("g")
        out = {"modules": loaded(), "polled": [(j.key, j.attempt) for j in jobs]}
        """,
    )
    assert out["polled"] == [["k1", 1]]
    assert out["modules"] < 80, out  # the whole package is about 490


def test_the_rest_of_the_package_loads_on_first_use(endpoint):
    out = probe(
        endpoint,
        """
        vertex.poll("g")
        before = loaded()
        from google.cloud import aiplatform_v1
        from caliban_flows.platforms.vertex import client as vertex_client
        out = {
            "before": before,
            "accelerator": aiplatform_v1.AcceleratorType.NVIDIA_TESLA_T4.name,
            "after": loaded(),
            "same": aiplatform_v1.CustomJob is vertex_client.job_service().CustomJob,
            "client": aiplatform_v1.JobServiceClient is type(vertex.client()),
        }
        """,
    )
    assert out["before"] < 80 < 400 < out["after"]
    assert out["accelerator"] == "NVIDIA_TESLA_T4" and out["same"] and out["client"]


def test_an_imported_package_is_used_as_it_is(endpoint):
    out = probe(
        endpoint,
        """
        from google.cloud import aiplatform_v1
        jobs = vertex.poll("g")
        out = {"modules": loaded(), "same": aiplatform_v1.JobServiceClient is type(vertex.client())}
        """,
    )
    assert out["same"] and out["modules"] > 400


def test_a_package_laid_out_otherwise_is_imported_the_plain_way(endpoint):
    out = probe(
        endpoint,
        """
        from caliban_flows.platforms.vertex import client as vertex_client
        # A module where a package used to be: the lean path refuses it and falls back.
        vertex_client.DEFERRED_PACKAGES = (*vertex_client.DEFERRED_PACKAGES,
                                           "google.cloud.aiplatform_v1.gapic_version")
        asyncio.run(vertex.submit_all([request]))
        out = {"polled": len(vertex.poll("g")), "modules": loaded()}
        """,
    )
    assert out["polled"] == 1 and out["modules"] > 400
