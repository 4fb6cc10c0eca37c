"""The CustomJob a `caliban cloud` job becomes, before any client sees it."""

from __future__ import annotations

import re

import pytest
from google.cloud import aiplatform_v1

from caliban_flows.spec import vertex_job as vj
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.labels import value_label

PLACEMENT = vj.Placement(
    project="p",
    region="us-central1",
    machine_type="n1-standard-8",
    accelerator_type="NVIDIA_TESLA_V100",
    accelerator_count=2,
    service_account="trainer@p.iam.gserviceaccount.com",
    network="projects/1/global/networks/default",
    spot=True,
    timeout_seconds=7200,
    restart_job_on_worker_restart=True,
)


def test_every_field_lands_in_a_valid_aiplatform_v1_custom_job():
    labels = vj.job_labels({"lr": "0_1"}, xgroup="My Group", key="k" * 20, attempt=2,
                           image="us-docker.pkg.dev/p/r/img:1")  # fmt: skip
    spec = vj.custom_job(display_name="caliban_me_1", image="us-docker.pkg.dev/p/r/img:1",
                         args=["--lr", "0.1"], labels=labels, placement=PLACEMENT)  # fmt: skip
    job = aiplatform_v1.CustomJob(spec)  # the real proto accepts it as is
    pool = job.job_spec.worker_pool_specs[0]
    assert pool.machine_spec.machine_type == "n1-standard-8"
    assert pool.machine_spec.accelerator_type.name == "NVIDIA_TESLA_V100"
    assert pool.machine_spec.accelerator_count == 2
    assert list(pool.container_spec.args) == ["--lr", "0.1"]
    assert job.job_spec.scheduling.strategy.name == "SPOT"
    assert job.job_spec.scheduling.timeout.total_seconds() == 7200
    assert job.job_spec.scheduling.restart_job_on_worker_restart is True
    assert job.job_spec.service_account == "trainer@p.iam.gserviceaccount.com"
    assert dict(job.labels) == {
        "lr": "0_1",
        "docker_image": value_label("us-docker.pkg.dev/p/r/img:1"),
        "caliban_xgroup_id": vj.xgroup_id("My Group"),
        "caliban_xgroup": "mygroup",
        "caliban_job_key": "k" * 20,
        "caliban_attempt": "2",
    }


def test_a_cpu_job_has_no_accelerator_and_no_scheduling():
    cpu = vj.Placement(project="p", region="r", machine_type="n1-highcpu-32")
    spec = vj.custom_job(display_name="x" * 200, image="gcr.io/p/i", args=[], labels={},
                         placement=cpu)  # fmt: skip
    assert spec["job_spec"]["worker_pool_specs"][0]["machine_spec"] == {
        "machine_type": "n1-highcpu-32"
    }
    assert "scheduling" not in spec["job_spec"] and len(spec["display_name"]) == 128


def test_xgroup_ids_are_valid_label_values_for_any_name():
    for name in ("a", "Ünïcode group!", "x" * 500):
        assert re.fullmatch(r"[a-z0-9_-]{1,63}", vj.xgroup_id(name))
    assert vj.xgroup_id("a") != vj.xgroup_id("A")


def test_too_many_labels_is_bad_input():
    many = {f"k{i}": "v" for i in range(61)}
    with pytest.raises(SpecError, match="at most 64"):
        vj.job_labels(many, xgroup="g", key="k", attempt=1, image="i")


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600), ("90m", 5400), ("12h", 43200), ("1.5d", 129600)]
)
def test_timeouts(text, seconds):
    assert vj.parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5m", "soon", "12x"])
def test_bad_timeouts(text):
    with pytest.raises(SpecError, match="positive duration"):
        vj.parse_timeout(text)


def test_images_vertex_can_pull():
    assert vj.check_image_uri("us-central1-docker.pkg.dev/p/r/i:1")
    assert vj.check_image_uri("gcr.io/p/i:1") and vj.check_image_uri("eu.gcr.io/p/i:1")
    # This machine's registry, for a Vertex endpoint on this machine (a regional one cannot).
    assert vj.check_image_uri("127.0.0.1:5000/i:1", endpoint_host="127.0.0.1:8443")
    assert vj.check_image_uri("localhost:5000/i:1", endpoint_host="localhost")
    assert vj.check_image_uri("[::1]:5000/i:1", endpoint_host="[::1]:8443")
    for image, endpoint in [("docker.io/library/python:3.11", None), ("python:3.11", None),
                            ("127.0.0.1:5000/i:1", None),
                            ("127.0.0.1:5000/i:1", "europe-west4-aiplatform.googleapis.com"),
                            ("gcr.io.example.com:5000/i:1", "127.0.0.1:8443"),
                            ("notgcr.io/p/i:1", None)]:  # fmt: skip
        with pytest.raises(SpecError, match="Artifact Registry"):
            vj.check_image_uri(image, endpoint_host=endpoint)


def test_console_url():
    url = vj.console_url("projects/p/locations/europe-west4/customJobs/123")
    assert url == (
        "https://console.cloud.google.com/vertex-ai/locations/europe-west4/training/123?project=p"
    )


def test_a_bucket_gives_the_job_its_base_output_directory_and_output_dir():
    from caliban_flows.spec.outputs import gcs_place, job_folder

    folder = job_folder("My Group", "caliban_me_1", "k" * 20, 3)
    spec = vj.custom_job(display_name="caliban_me_1", image="gcr.io/p/img:1", args=["--a"],
                         labels={}, placement=PLACEMENT, outputs=gcs_place("gs://bkt"),
                         folder=folder)  # fmt: skip
    job = aiplatform_v1.CustomJob(spec)
    uri = f"gs://bkt/caliban/{folder}"
    assert job.job_spec.base_output_directory.output_uri_prefix == uri
    [env] = job.job_spec.worker_pool_specs[0].container_spec.env
    assert (env.name, env.value) == ("CALIBAN_OUTPUT_DIR", f"/gcs/bkt/caliban/{folder}")
    assert folder.startswith("My_Group-") and folder.endswith("/caliban_me_1-kkkkkkkk/3")


def test_no_bucket_no_output_directory():
    spec = vj.custom_job(display_name="j", image="gcr.io/p/img:1", args=[], labels={},
                         placement=PLACEMENT)  # fmt: skip
    assert "base_output_directory" not in spec["job_spec"]
    assert "env" not in spec["job_spec"]["worker_pool_specs"][0]["container_spec"]
