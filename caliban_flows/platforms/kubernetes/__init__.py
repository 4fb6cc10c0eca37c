"""batch/v1 Jobs on any cluster in a kubeconfig (adapter.py, client.py, kubeconfig.py), and
GKE cluster management (gke.py)."""

from __future__ import annotations

from caliban_flows.platforms.registry import PlatformEntry

DEFAULT_MAX_QPS = 50.0  # the API server's default client QPS in kubectl is 50 (burst 100)


def kube_config(placement: dict) -> dict | None:
    """The kubeconfig kept in the cluster settings block the placement names; else None (the
    user's own kubeconfig file). Prefect-free until a block is named."""
    if not placement.get("cluster_block"):
        return None
    from caliban_flows.blocks.kubernetes import kube_config_from_block

    return kube_config_from_block(placement["cluster_block"])


def _open(placement: dict):
    from caliban_flows.platforms.kubernetes.adapter import Kubernetes

    return Kubernetes.from_placement(placement, config_dict=kube_config(placement))


def _default_registry(placement: dict) -> str | None:
    """On GKE, the project's Artifact Registry in the cluster's region; else none."""
    from caliban_flows.platforms.kubernetes.adapter import gke_of
    from caliban_flows.spec.gke import region_of

    gke = gke_of(placement.get("context"))
    if gke is None:
        return None
    return f"{region_of(gke['location'])}-docker.pkg.dev/{gke['project']}/caliban"


ENTRY = PlatformEntry(
    name="kubernetes",
    title="Kubernetes",
    open=_open,
    place=lambda p: (p.get("config_file"), p.get("context"), p.get("namespace")),
    default_max_qps=DEFAULT_MAX_QPS,
    preload=("kubernetes.client",),
    default_registry=_default_registry,
)
