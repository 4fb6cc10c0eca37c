"""Printing plans: the dry-run lines every command shares."""

from __future__ import annotations

import sys
from collections.abc import Iterable

NOTHING_DONE = "Nothing was built or submitted. Run again without --dry_run to submit."


def job_block(job, *details: str) -> list[str]:
    """Caliban's per-job dry-run lines: `Job N - ...`, then args and labels, then a blank."""
    return [
        *(f"Job {job.index} - {d}" for d in details),
        f"Job {job.index} - Experiment arguments: {list(job.args)}",
        f"Job {job.index} - labels: {dict(job.labels)}",
        "",
    ]


def emit(lines: Iterable[str]) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def confirm(question: str, yes: bool) -> bool:
    """Caliban's [yN]: anything but y/yes, or no input at all, means no."""
    if yes:
        return True
    try:
        answer = input(f"{question} [yN]: ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
