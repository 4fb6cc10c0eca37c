"""batch/v1 Jobs on any cluster in a kubeconfig (adapter.py, client.py, kubeconfig.py), and
GKE cluster management (gke.py)."""

from __future__ import annotations

from caliban_flows.platforms.registry import PlatformEntry

DEFAULT_MAX_QPS = 50.0  # the API server's default client QPS in kubectl is 50 (burst 100)


def _open(placement: dict):
    from caliban_flows.platforms.kubernetes.adapter import Kubernetes

    config = None
    if placement.get("cluster_block"):  # a kubeconfig kept in a cluster settings block
        from caliban_flows.blocks.kubernetes import kube_config_from_block

        config = kube_config_from_block(placement["cluster_block"])
    return Kubernetes.from_record(placement, config_dict=config)


ENTRY = PlatformEntry(
    name="kubernetes",
    title="Kubernetes",
    open=_open,
    place=lambda p: (p.get("config_file"), p.get("context"), p.get("namespace")),
    default_max_qps=DEFAULT_MAX_QPS,
)
