"""Each job's output folder ($CALIBAN_OUTPUT_DIR) on the command line: the bucket flags, and
what dry runs say of it."""

from __future__ import annotations

from typing import Annotated

import typer

from caliban_flows.spec.outputs import OUTPUT_DIR_ENV, OutputPlace, group_folder


def outputs_line(place: OutputPlace | None, xgroup: str, *, flags: str) -> str:
    """Where the group's jobs write, or that they get no output folder (and how to give one)."""
    if place is None:
        return f"Outputs: none; {flags} gives each job a folder in ${OUTPUT_DIR_ENV}"
    where = place.uri(group_folder(xgroup))
    return f"Outputs: {where}/<name>-<key8>/<attempt>/ (${OUTPUT_DIR_ENV} in each job)"


def job_output(place: OutputPlace | None, folder: str) -> tuple[str, ...]:
    """The `Job N - ...` detail naming a job's folder, when it has one."""
    return (f"outputs: {place.uri(folder)}",) if place is not None else ()


def _output_bucket(mounted: str):
    help_text = (
        "Give each job a folder PREFIX/<xgroup>/<name>-<key8>/<attempt>/ in this Cloud Storage "
        f"bucket (PREFIX default: caliban), {mounted} and named to the job as $CALIBAN_OUTPUT_DIR."
    )
    option = typer.Option(
        "--output_bucket", "--output-bucket", metavar="gs://BUCKET[/PREFIX]", help=help_text
    )
    return Annotated[str | None, option]


OutputBucket = _output_bucket("at /gcs/BUCKET through Vertex AI's Cloud Storage FUSE mount,")
OutputBucketGke = _output_bucket(
    "mounted at /gcs/BUCKET with GKE's Cloud Storage FUSE CSI driver (enable it on the cluster)"
)
