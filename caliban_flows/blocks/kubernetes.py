"""A Prefect block for the Kubernetes settings that outlive one `caliban cluster job submit`.

The cluster's kubeconfig, when kept in Prefect rather than in ~/.kube/config, lives in a
nested prefect-kubernetes "Kubernetes Cluster Config" block. Importing this module imports
Prefect: call `backend.use_backend()` (or `server.ready.prefect_ready()`) first.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect_kubernetes.credentials import KubernetesClusterConfig
from pydantic import Field

from caliban_flows.blocks.saved import load_saved

BLOCK_TYPE = "Caliban Cluster Settings"
SETTINGS = ("context", "namespace", "registry", "backoff_limit", "max_qps")


class ClusterSettings(Block):
    """Kubernetes defaults for `caliban cluster job submit`: where jobs go and how."""

    _block_type_name = BLOCK_TYPE
    _documentation_url = "https://kubernetes.io/docs/concepts/workloads/controllers/job/"
    _code_example = """
    ```python
    from caliban_flows.blocks.kubernetes import ClusterSettings

    settings = ClusterSettings.load("BLOCK_NAME")
    ```
    Or on the command line: `caliban cluster job submit --cluster_block BLOCK_NAME ...`.
    """
    _description = (
        "Kubernetes settings for caliban: kubeconfig context and namespace, image registry, "
        "Job retries, submission rate, and optionally the kubeconfig itself."
    )

    context: str | None = Field(default=None, description="kubeconfig context to submit to.")
    namespace: str | None = Field(default=None, description="Namespace of the Jobs.")
    registry: str | None = Field(
        default=None, description="Where images are pushed; the cluster must be able to pull."
    )
    backoff_limit: int | None = Field(
        default=None, ge=0, description="Pod retries before a Job fails (Job backoffLimit)."
    )
    max_qps: float | None = Field(default=None, gt=0, description="Most Job creates per second.")
    cluster_config: KubernetesClusterConfig | None = Field(
        default=None,
        description="A kubeconfig kept in Prefect; unset: the user's own ~/.kube/config.",
    )


def load_block(name: str) -> ClusterSettings:
    """The saved block `name`; ValueError with a one-line message if there is none."""
    return load_saved(ClusterSettings, name)


def settings_from_block(name: str) -> dict[str, Any]:
    """The block's plain settings that are set; never the kubeconfig."""
    block = load_block(name)
    settings = {key: value for key in SETTINGS if (value := getattr(block, key)) is not None}
    if block.cluster_config is not None and "context" not in settings:
        settings["context"] = block.cluster_config.context_name
    return settings


def kube_config_from_block(name: str) -> dict | None:
    """The kubeconfig (as a mapping) the block keeps, or None: use ~/.kube/config."""
    block = load_block(name)
    return dict(block.cluster_config.config) if block.cluster_config is not None else None
