"""GKE cluster management, pure: the create request Caliban made, limits from quota, GPU checks.

`cluster create` turns node autoprovisioning on, with resource maxima taken from the
project's Compute Engine quota in the region (as Caliban did; maxima under 1 are left out), TPU
slice node pools included (spec.gke_tpu).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from caliban_flows.spec import gke_tpu
from caliban_flows.spec.errors import SpecError

RELEASE_CHANNELS = ("UNSPECIFIED", "RAPID", "REGULAR", "STABLE")
MEMORY_GB_PER_CPU = 64  # GKE's autoprovisioning cap on memory per vCPU
DEFAULT_POOL_NODES = 3
# Compute Engine quota metric -> GKE autoprovisioning resource type.
GPU_QUOTAS = {
    "NVIDIA_K80_GPUS": "nvidia-tesla-k80",
    "NVIDIA_P4_GPUS": "nvidia-tesla-p4",
    "NVIDIA_P100_GPUS": "nvidia-tesla-p100",
    "NVIDIA_V100_GPUS": "nvidia-tesla-v100",
    "NVIDIA_T4_GPUS": "nvidia-tesla-t4",
    "NVIDIA_A100_GPUS": "nvidia-tesla-a100",
    "NVIDIA_A100_80GB_GPUS": "nvidia-a100-80gb",
    "NVIDIA_L4_GPUS": "nvidia-l4",
    "NVIDIA_H100_GPUS": "nvidia-h100-80gb",
}
_CLUSTER_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?")
_ZONE = re.compile(r"([a-z]+-[a-z]+[0-9]+)-[a-z]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
NODE_SCOPES = (
    "https://www.googleapis.com/auth/devstorage.read_only",
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring",
    "https://www.googleapis.com/auth/service.management.readonly",
    "https://www.googleapis.com/auth/servicecontrol",
    "https://www.googleapis.com/auth/trace.append",
)
AUTOPROVISIONING_SCOPES = (
    "https://www.googleapis.com/auth/compute",
    "https://www.googleapis.com/auth/cloud-platform",
)


def check_cluster_name(name: str) -> str:
    if not _CLUSTER_NAME.fullmatch(name or ""):
        raise SpecError(
            f"--cluster_name {name!r}: use lowercase letters, digits and '-', starting with a "
            "letter, at most 40 characters"
        )
    return name


def region_of(location: str) -> str:
    """us-central1-a -> us-central1; a region stays itself."""
    found = _ZONE.fullmatch(location)
    if found:
        return found.group(1)
    if _REGION.fullmatch(location):
        return location
    raise SpecError(f"--zone {location!r} is not a zone (us-central1-a) or region (us-central1)")


def resource_limits(
    quotas: Mapping[str, float], tpu_limits: Mapping[str, int] | None = None
) -> list[dict]:
    """Autoprovisioning maxima from region quotas (metric -> limit): cpu, memory, each GPU, and
    TPU chips per GKE TPU accelerator (`tpu_limits` from --tpu_limit, else the quota)."""
    cpus = int(quotas.get("CPUS", 0))
    limits = []
    if cpus >= 1:
        limits.append({"resource_type": "cpu", "maximum": cpus})
        limits.append({"resource_type": "memory", "maximum": cpus * MEMORY_GB_PER_CPU})
    for metric, resource in GPU_QUOTAS.items():
        count = int(quotas.get(metric, 0))
        if count >= 1:  # Caliban 0.4.0: no maximum for a quota under 1
            limits.append({"resource_type": resource, "maximum": count})
    limits.extend(gke_tpu.autoprovisioning_limits(dict(quotas), dict(tpu_limits or {})))
    return limits


def create_request(
    *,
    project: str,
    zone: str,
    name: str,
    single_zone: bool,
    release_channel: str,
    limits: list[dict],
    zones: list[str],
    tpu_legacy: bool = False,
) -> dict:
    """ClusterManager's CreateClusterRequest, as a mapping (container_v1 field names)."""
    if release_channel not in RELEASE_CHANNELS:
        raise SpecError(f"--release_channel {release_channel!r}: one of {RELEASE_CHANNELS}")
    if not any(limit["resource_type"] == "cpu" for limit in limits):
        raise SpecError(
            f"project {project!r} has no CPU quota in {region_of(zone)}: node autoprovisioning "
            "needs one (check IAM & Admin > Quotas)"
        )
    location = zone if single_zone else region_of(zone)
    cluster = {
        "name": check_cluster_name(name),
        "initial_node_count": DEFAULT_POOL_NODES,
        "node_config": {"oauth_scopes": list(NODE_SCOPES)},
        "autoscaling": {
            "enable_node_autoprovisioning": True,
            "resource_limits": limits,
            "autoprovisioning_node_pool_defaults": {"oauth_scopes": list(AUTOPROVISIONING_SCOPES)},
        },
        "ip_allocation_policy": {"use_ip_aliases": True},
        "release_channel": {"channel": release_channel},
    }
    if tpu_legacy:  # Caliban's clusters: deprecated Cloud TPU Nodes for --tpu_legacy jobs
        cluster["enable_tpu"] = True
    if not single_zone:
        cluster["locations"] = zones
    return {"parent": f"projects/{project}/locations/{location}", "cluster": cluster}


def check_gpu_against_limits(
    cluster: str, gpu_resource: str, count: int, limits: Mapping[str, int]
) -> None:
    """Caliban refused a GPU spec the cluster's autoprovisioning could never satisfy."""
    if gpu_resource not in limits:
        offered = ", ".join(sorted(k for k in limits if k.startswith("nvidia-"))) or "none"
        raise SpecError(
            f"cluster {cluster!r} cannot provision {gpu_resource} GPUs (its autoprovisioning "
            f"limits offer: {offered}); use --force to submit anyway"
        )
    if count > limits[gpu_resource]:
        raise SpecError(
            f"cluster {cluster!r} provisions at most {limits[gpu_resource]} {gpu_resource} "
            f"GPUs, but a job asks for {count}; use --force to submit anyway"
        )


def console_url(project: str, location: str, name: str) -> str:
    return (
        f"https://console.cloud.google.com/kubernetes/clusters/details/{location}/{name}"
        f"?project={project}"
    )
