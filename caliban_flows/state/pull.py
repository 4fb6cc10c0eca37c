"""`caliban pull`: the output folders of a group's jobs, copied to a local folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.outputs import OutputPlace, group_folder, job_folder


def pull_outputs(
    xgroup: str,
    dest: Path | None,
    names: Sequence[str],
    *,
    users: frozenset[str] | None,
    warn: Callable[[str], None],
) -> tuple[int, int, Path]:
    """Copy the latest attempt's folder of each job (or of the jobs `names`) into
    `dest/<name>-<key>/<attempt>/`; (files copied, jobs copied, dest)."""
    from caliban_flows.platforms.outputs import copy_folder
    from caliban_flows.state.groups import latest_attempts
    from caliban_flows.state.reading import no_group, read_groups

    runs, rows = read_groups(xgroup, users=users, warn=warn)
    if not runs:
        raise SpecError(no_group(xgroup, users))
    latest = [r for r in latest_attempts(rows) if r["xgroup"] == xgroup]
    if names:
        unknown = sorted(set(names) - {r["name"] for r in latest})
        if unknown:
            known = ", ".join(sorted({r["name"] for r in latest}))
            raise SpecError(f"--job {unknown[0]!r}: no such job in xgroup {xgroup!r}; "
                            f"its jobs: {known}")  # fmt: skip
        latest = [r for r in latest if r["name"] in names]
    target = (dest or Path(group_folder(xgroup))).expanduser()
    placements = {run.flow_run_id: run.placement or {} for run in runs}
    files = jobs = 0
    for row in latest:
        placement = placements[row["flow_run_id"]]
        place = OutputPlace.of(placement.get("outputs"))
        if place is None:
            warn(f"job {row['name']} has no output folder (submitted before outputs existed, "
                 "or to Vertex AI without --output_bucket)")  # fmt: skip
            continue
        folder = job_folder(xgroup, row["name"], row["key"], row["attempt"])
        relative = folder.split("/", 1)[1]  # without the xgroup: dest is the group's folder
        n = copy_folder(place, folder, target / relative, placement)
        files += n
        jobs += 1 if n else 0
    return files, jobs, target
