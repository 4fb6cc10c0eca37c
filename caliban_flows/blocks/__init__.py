"""Prefect blocks for settings that outlive a command.

`prefect block register -m caliban_flows.blocks` registers them with a Prefect server (the UI
then offers them). Credentials live in prefect-gcp's, prefect-docker's and prefect-kubernetes'
own blocks, which these reference. Importing this package imports Prefect, prefect-gcp and
prefect-kubernetes (3-5 s): only code that uses a block imports it.
"""

from caliban_flows.blocks.kubernetes import ClusterSettings
from caliban_flows.blocks.vertex import VertexSettings

__all__ = ["ClusterSettings", "VertexSettings"]
