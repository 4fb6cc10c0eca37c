"""A Vertex AI CustomJob per experiment, as the plain mapping `aiplatform_v1.CustomJob` takes.

Pure: `--dry_run` prints these without loading the Google client, and the platform adapter
turns them into protos. Field names are the proto's (snake_case).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.labels import MAX_LABELS, value_label
from caliban_flows.spec.outputs import OUTPUT_DIR_ENV, OutputPlace

# Every job carries these, so one list call by xgroup finds a group's jobs and their keys.
XGROUP_ID_LABEL = "caliban_xgroup_id"  # a hash: any xgroup name, always a valid label value
XGROUP_LABEL = "caliban_xgroup"  # readable, sanitized, for people filtering in the console
JOB_KEY_LABEL = "caliban_job_key"
ATTEMPT_LABEL = "caliban_attempt"
BOOKKEEPING = (XGROUP_ID_LABEL, XGROUP_LABEL, JOB_KEY_LABEL, ATTEMPT_LABEL)

DISPLAY_NAME_LIMIT = 128


def xgroup_id(xgroup: str) -> str:
    return hashlib.sha256(xgroup.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Placement:
    """What every job of one `caliban cloud` submission shares."""

    project: str
    region: str
    machine_type: str
    accelerator_type: str | None = None
    accelerator_count: int = 0
    service_account: str | None = None
    network: str | None = None
    spot: bool = False
    timeout_seconds: int | None = None
    restart_job_on_worker_restart: bool = False

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"


def job_labels(
    labels: Mapping[str, str], *, xgroup: str, key: str, attempt: int, image: str
) -> dict[str, str]:
    out = dict(labels)
    out["docker_image"] = value_label(image)
    out[XGROUP_ID_LABEL] = xgroup_id(xgroup)
    out[XGROUP_LABEL] = value_label(xgroup)
    out[JOB_KEY_LABEL] = key
    out[ATTEMPT_LABEL] = str(attempt)
    if len(out) > MAX_LABELS:
        raise SpecError(
            f"a job would carry {len(out)} labels (caliban adds {len(BOOKKEEPING)} of its own) "
            f"but Vertex AI allows at most {MAX_LABELS}: pass fewer --label options or flags"
        )
    return out


def custom_job(
    *,
    display_name: str,
    image: str,
    args: Sequence[str],
    labels: Mapping[str, str],
    placement: Placement,
    outputs: OutputPlace | None = None,
    folder: str = "",
) -> dict:
    """The CustomJob of one job attempt; with a bucket as `outputs`, `folder` under it is the
    job's base output directory (Vertex then sets AIP_MODEL_DIR and the like beneath it) and,
    through Vertex's Cloud Storage FUSE mount, its $CALIBAN_OUTPUT_DIR."""
    machine: dict = {"machine_type": placement.machine_type}
    if placement.accelerator_type and placement.accelerator_count:
        machine["accelerator_type"] = placement.accelerator_type
        machine["accelerator_count"] = placement.accelerator_count
    scheduling: dict = {}
    if placement.timeout_seconds:
        scheduling["timeout"] = f"{placement.timeout_seconds}s"
    if placement.restart_job_on_worker_restart:
        scheduling["restart_job_on_worker_restart"] = True
    if placement.spot:
        scheduling["strategy"] = "SPOT"
    container: dict = {"image_uri": image, "args": list(args)}
    spec: dict = {
        "worker_pool_specs": [
            {"machine_spec": machine, "replica_count": 1, "container_spec": container}
        ]
    }
    if outputs is not None and outputs.kind == "gcs":
        spec["base_output_directory"] = {"output_uri_prefix": outputs.uri(folder)}
        container["env"] = [{"name": OUTPUT_DIR_ENV, "value": outputs.container_dir(folder)}]
    if scheduling:
        spec["scheduling"] = scheduling
    if placement.service_account:
        spec["service_account"] = placement.service_account
    if placement.network:
        spec["network"] = placement.network
    return {
        "display_name": display_name[:DISPLAY_NAME_LIMIT],
        "labels": dict(labels),
        "job_spec": spec,
    }


def console_url(job_name: str) -> str:
    """The Cloud console page of `projects/P/locations/L/customJobs/ID`."""
    parts = job_name.split("/")
    project, region, job_id = parts[1], parts[3], parts[5]
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/training/{job_id}"
        f"?project={project}"
    )


def check_image_uri(image: str, *, endpoint_host: str | None = None) -> str:
    """Vertex pulls from Artifact Registry (REGION-docker.pkg.dev/PROJECT/REPO/IMAGE) or gcr.io.

    A registry on this machine's loopback is reachable only from this machine: by a Vertex
    endpoint (`endpoint_host`) that is on loopback too, never by Google's.
    """
    host = image.split("/", 1)[0]
    here = _on_loopback(host) and endpoint_host is not None and _on_loopback(endpoint_host)
    if "/" not in image or not (
        host.endswith("-docker.pkg.dev") or host == "gcr.io" or host.endswith(".gcr.io") or here
    ):
        raise SpecError(
            f"image {image!r} is not in a registry Vertex AI can pull from: use "
            "REGION-docker.pkg.dev/PROJECT/REPO/IMAGE (Artifact Registry) or gcr.io/PROJECT/IMAGE"
        )
    return image


def _on_loopback(host_port: str) -> bool:
    from urllib.parse import urlsplit

    host = urlsplit("//" + host_port).hostname or host_port  # host, host:port, [v6]:port
    return host in ("127.0.0.1", "localhost", "::1")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_timeout(text: str) -> int:
    """'3600', '90m', '12h' or '7d' as seconds."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        seconds = int(float(number) * _UNITS[unit])
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise SpecError(f"--timeout {text!r} must be a positive duration like 3600, 90m or 12h")
    return seconds
