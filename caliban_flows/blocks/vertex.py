"""A Prefect block for the Vertex AI settings that outlive one `caliban cloud` command.

Credentials come from a nested prefect-gcp "GCP Credentials" block, whose key stays a
SecretDict: the API and the UI only ever show it masked.

Importing this module imports Prefect, so call `backend.use_backend()` (or
`server.ready.prefect_ready()`) first. prefect-gcp's import also loads the high-level
`google.cloud.aiplatform` SDK: about 3-4 s.
"""

from __future__ import annotations

from typing import Any

from prefect.blocks.core import Block
from prefect_gcp.credentials import GcpCredentials
from pydantic import Field

from caliban_flows.blocks.saved import load_saved

BLOCK_TYPE = "Caliban Vertex Settings"
SETTINGS = (
    "project",
    "region",
    "service_account",
    "network",
    "registry",
    "max_qps",
    "submit_quota",
    "manage_quota",
    "max_restarts",
    "spot",
    "output_bucket",
)


class VertexSettings(Block):
    """Vertex AI defaults for `caliban cloud`: project, region, job identity and credentials."""

    _block_type_name = BLOCK_TYPE
    _documentation_url = "https://cloud.google.com/vertex-ai/docs/training/create-custom-job"
    _code_example = """
    ```python
    from caliban_flows.blocks.vertex import VertexSettings

    settings = VertexSettings.load("BLOCK_NAME")
    ```
    Or on the command line: `caliban cloud --vertex_block BLOCK_NAME ...`.
    """
    _description = (
        "Vertex AI settings for caliban: project, region, the service account jobs run as, "
        "network, image registry, submission rate, spot VMs, and GCP credentials."
    )

    project: str | None = Field(default=None, description="Google Cloud project ID.")
    region: str | None = Field(default=None, description="Vertex AI region, e.g. us-central1.")
    service_account: str | None = Field(
        default=None,
        description="Email of the service account the jobs run as (an identity, not a key).",
    )
    network: str | None = Field(
        default=None,
        description="VPC network to peer jobs with: projects/NUMBER/global/networks/NAME.",
    )
    registry: str | None = Field(
        default=None,
        description="Where images are pushed, e.g. us-central1-docker.pkg.dev/PROJECT/caliban.",
    )
    max_qps: float | None = Field(
        default=None, gt=0, description="Most Vertex AI requests per second (default 10)."
    )
    submit_quota: float | None = Field(
        default=None,
        gt=0,
        description="Job submissions a minute this project and region allow (Vertex's default "
        "quota: 60). Shared by every caliban using them.",
    )
    manage_quota: float | None = Field(
        default=None,
        gt=0,
        description="Get, list and cancel requests a minute they allow (default quota: 600).",
    )
    spot: bool = Field(default=False, description="Run jobs on Spot VMs.")
    max_restarts: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Restart a job ended by a Spot preemption, a stockout or a lost VM up to "
        "this many times.",
    )
    output_bucket: str | None = Field(
        default=None,
        description="gs://BUCKET[/PREFIX] for each job's output folder (the CustomJob's base "
        "output directory; the job writes to $CALIBAN_OUTPUT_DIR under /gcs/BUCKET).",
    )
    gcp_credentials: GcpCredentials | None = Field(
        default=None,
        description="Credentials for submitting jobs; unset: Application Default Credentials.",
    )


def load_block(name: str) -> VertexSettings:
    """The saved block `name`; ValueError with a one-line message if there is none."""
    return load_saved(VertexSettings, name)


def settings_from_block(name: str) -> dict[str, Any]:
    """The block's plain settings that are set; never its credentials."""
    block = load_block(name)
    return {key: value for key in SETTINGS if (value := getattr(block, key)) is not None}


def credentials_from_block(name: str) -> Any:
    """The block's `google.auth` credentials, or None when it names no GCP Credentials."""
    block = load_block(name)
    if block.gcp_credentials is None:
        return None
    return block.gcp_credentials.get_credentials_from_service_account()
