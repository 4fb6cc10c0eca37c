"""Prefect blocks for settings that outlive a command.

`prefect block register -m caliban_flows.blocks` registers them with a Prefect server (the UI
then offers them). Credentials live in prefect-gcp's and prefect-docker's own blocks, which
these reference. Importing this package imports Prefect and prefect-gcp (3-5 s): only code
that uses a block imports it.
"""

from caliban_flows.blocks.vertex import VertexSettings

__all__ = ["VertexSettings"]
