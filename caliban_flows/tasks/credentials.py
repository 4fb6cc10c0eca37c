"""Where a cluster's kubeconfig comes from when a command names a settings block; else the
user's own kube config. Prefect-free until a block is named, so `caliban status` stays fast.
"""

from __future__ import annotations


def kube_config(cluster: dict) -> dict | None:
    """The kubeconfig kept in the group's cluster settings block, if it names one; else None
    (the user's own kubeconfig file)."""
    if not cluster.get("cluster_block"):
        return None
    from caliban_flows.blocks.kubernetes import kube_config_from_block

    return kube_config_from_block(cluster["cluster_block"])
