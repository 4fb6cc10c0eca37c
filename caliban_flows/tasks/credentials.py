"""Where a group's platform credentials come from: a Prefect block it names, or the user's own
gcloud / kube config. Prefect-free until a block is named, so `caliban status` stays fast.
"""

from __future__ import annotations


def vertex_credentials(vertex: dict):
    """A key kept in the group's Vertex settings block, if it names one; else gcloud's login."""
    if not vertex.get("credentials_block"):
        return None
    from caliban_flows.blocks.vertex import credentials_from_block

    return credentials_from_block(vertex["credentials_block"])


def kube_config(cluster: dict) -> dict | None:
    """The kubeconfig kept in the group's cluster settings block, if it names one; else None
    (the user's own kubeconfig file)."""
    if not cluster.get("cluster_block"):
        return None
    from caliban_flows.blocks.kubernetes import kube_config_from_block

    return kube_config_from_block(cluster["cluster_block"])


def platforms():
    """One Platforms for a command or a service round, with the blocks' credentials."""
    from caliban_flows.state.reconcile import Platforms

    return Platforms(vertex_credentials, kube_config)
