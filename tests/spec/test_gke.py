"""GKE cluster requests as Caliban made them: limits from quota, locations, GPU checks."""

from __future__ import annotations

import pytest

from caliban_flows.spec import gke, gke_tpu
from caliban_flows.spec.errors import SpecError

QUOTAS = {"CPUS": 24, "NVIDIA_T4_GPUS": 4, "NVIDIA_V100_GPUS": 0.5, "NVIDIA_L4_GPUS": 1}


def test_limits_come_from_quota_and_skip_quotas_under_one():
    assert gke.resource_limits(QUOTAS) == [
        {"resource_type": "cpu", "maximum": 24},
        {"resource_type": "memory", "maximum": 24 * 64},
        {"resource_type": "nvidia-tesla-t4", "maximum": 4},
        {"resource_type": "nvidia-l4", "maximum": 1},
    ]
    assert gke.resource_limits({}) == []


def test_tpu_limits_come_from_the_flag_else_the_v5e_quota():
    quotas = {"CPUS": 8, "TPU_LITE_PODSLICE_V5": 16, "PREEMPTIBLE_TPU_LITE_PODSLICE_V5": 64}
    tpus = [r for r in gke.resource_limits(quotas) if r["resource_type"].startswith("tpu-")]
    assert tpus == [{"resource_type": "tpu-v5-lite-podslice", "maximum": 64}]
    given = gke_tpu.parse_tpu_limits(["V6E=32", "v5p=8", "V5E=4"])
    tpus = [r for r in gke.resource_limits(quotas, given) if r["resource_type"].startswith("tpu")]
    assert tpus == [
        {"resource_type": "tpu-v5-lite-podslice", "maximum": 4},
        {"resource_type": "tpu-v5p-slice", "maximum": 8},
        {"resource_type": "tpu-v6e-slice", "maximum": 32},
    ]
    for bad in ("V6E", "V9=4", "V6E=many", "=4"):
        with pytest.raises(SpecError, match="--tpu_limit"):
            gke_tpu.parse_tpu_limits([bad])


@pytest.mark.parametrize(
    "where, region", [("us-central1-a", "us-central1"), ("europe-west4", "europe-west4")]
)
def test_region_of(where, region):
    assert gke.region_of(where) == region


@pytest.mark.parametrize("where", ["us", "us-central1-ab", "Mars"])
def test_a_location_that_is_neither_zone_nor_region_is_refused(where):
    with pytest.raises(SpecError, match="--zone"):
        gke.region_of(where)


def request(**kw) -> dict:
    args = dict(
        project="p",
        zone="us-central1-a",
        name="c1",
        single_zone=False,
        release_channel="REGULAR",
        limits=gke.resource_limits(QUOTAS),
        zones=["us-central1-a", "us-central1-b"],
    )
    return gke.create_request(**{**args, **kw})


def test_a_regional_cluster_spans_the_regions_zones():
    made = request()
    assert made["parent"] == "projects/p/locations/us-central1"
    cluster = made["cluster"]
    assert cluster["locations"] == ["us-central1-a", "us-central1-b"]
    assert cluster["autoscaling"]["enable_node_autoprovisioning"] is True
    assert cluster["release_channel"] == {"channel": "REGULAR"}
    assert cluster["initial_node_count"] == 3 and "enable_tpu" not in cluster
    assert request(tpu_legacy=True)["cluster"]["enable_tpu"] is True  # Cloud TPU Nodes


def test_a_single_zone_cluster_lives_in_its_zone():
    made = request(single_zone=True)
    assert made["parent"] == "projects/p/locations/us-central1-a"
    assert "locations" not in made["cluster"]


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"name": "Bad_Name"}, "--cluster_name"),
        ({"release_channel": "NIGHTLY"}, "NIGHTLY"),
        ({"limits": []}, "CPU quota"),
    ],
)
def test_bad_requests_are_refused(change, needle):
    with pytest.raises(SpecError, match=needle):
        request(**change)


def test_gpus_are_checked_against_the_clusters_limits():
    limits = {"cpu": 24, "nvidia-tesla-t4": 4}
    gke.check_gpu_against_limits("c1", "nvidia-tesla-t4", 4, limits)
    with pytest.raises(SpecError, match="at most 4"):
        gke.check_gpu_against_limits("c1", "nvidia-tesla-t4", 8, limits)
    with pytest.raises(SpecError, match="offer: nvidia-tesla-t4"):
        gke.check_gpu_against_limits("c1", "nvidia-tesla-v100", 1, limits)
