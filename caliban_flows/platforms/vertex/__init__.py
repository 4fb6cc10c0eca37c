"""Vertex AI CustomJobs (adapter.py), through aiplatform_v1's JobService (client.py)."""

from __future__ import annotations

from caliban_flows.platforms.registry import PlatformEntry

# Vertex AI's default quotas per project and region, in calls a minute: "Job or long-running
# operation submission requests" (CreateCustomJob), and resource management requests (get,
# list, cancel). A project may have others: --submit_quota / --manage_quota, or a block.
SUBMIT_QUOTA = 60.0
MANAGE_QUOTA = 600.0
DEFAULT_MAX_QPS = MANAGE_QUOTA / 60.0  # every call; creates also keep to SUBMIT_QUOTA


def _open(placement: dict):
    from caliban_flows.platforms.vertex.adapter import Vertex

    credentials = None
    if placement.get("credentials_file"):  # --cloud_key
        from caliban_flows.platforms.gcp_credentials import from_key_file

        credentials = from_key_file(placement["credentials_file"])
    elif placement.get("credentials_block"):  # a key kept in a Vertex settings block
        from caliban_flows.blocks.vertex import credentials_from_block

        credentials = credentials_from_block(placement["credentials_block"])
    return Vertex.from_placement(placement, credentials=credentials)


def _check_image(reference: str) -> str:
    import os

    from caliban_flows.platforms.vertex.adapter import ENDPOINT_ENV
    from caliban_flows.spec.vertex_job import check_image_uri

    return check_image_uri(reference, endpoint_host=os.environ.get(ENDPOINT_ENV) or None)


def _follow(placement: dict) -> str:
    return (
        "or in the console: https://console.cloud.google.com/vertex-ai/training/custom-jobs"
        f"?project={placement.get('project')}"
    )


ENTRY = PlatformEntry(
    name="vertex",
    title="Vertex AI",
    open=_open,
    # One list call covers a project's region, asked as one identity.
    place=lambda placement: (
        placement.get("project"),
        placement.get("region"),
        placement.get("credentials_file") or placement.get("credentials_block"),
    ),
    default_max_qps=DEFAULT_MAX_QPS,
    submit_per_minute=lambda p: min(
        p.get("submit_quota") or SUBMIT_QUOTA, (p.get("max_qps") or DEFAULT_MAX_QPS) * 60.0
    ),
    preload=("google.cloud.aiplatform_v1",),
    # The project's Artifact Registry in the jobs' region.
    default_registry=lambda p: f"{p['region']}-docker.pkg.dev/{p['project']}/caliban",
    check_image=_check_image,
    follow=_follow,
    logs_hold_output=False,
)
