"""What dry runs say of each job's output folder ($CALIBAN_OUTPUT_DIR)."""

from __future__ import annotations

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
