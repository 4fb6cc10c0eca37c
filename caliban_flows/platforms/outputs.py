"""What jobs left behind: the metrics in their output folders or their logs, and the folders
themselves, wherever the group's output root is (a host folder, a bucket, a claim)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from caliban_flows.spec.errors import CalibanError
from caliban_flows.spec.outputs import (
    METRICS_FILES,
    OutputPlace,
    metrics_from_json,
    metrics_from_jsonl,
    metrics_from_logs,
)

LOG_READERS = 16  # jobs whose logs are read at once
_PARSERS = {"metrics.json": metrics_from_json, "metrics.jsonl": metrics_from_jsonl}


def _read_local(root: Path, folder: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = None
    for name in METRICS_FILES:
        try:
            text = (root / folder / name).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise CalibanError(f"cannot read {root / folder / name}: {e.strerror}") from None
        found = {**(found or {}), **_PARSERS[name](text)}
    return found


def folder_metrics(
    place: OutputPlace, folders: Sequence[str], placement: Mapping | None = None
) -> dict[str, dict[str, Any]]:
    """The metrics files of these job folders (metrics.jsonl, then metrics.json over it), by
    folder; a folder without either is left out. A claim cannot be read from outside its
    cluster: its jobs' metrics come from their logs."""
    if place.kind == "local":
        root = Path(place.root)
        out = {}
        for folder in folders:
            found = _read_local(root, folder)
            if found is not None:
                out[folder] = found
        return out
    if place.kind == "gcs":
        from caliban_flows.platforms import gcs

        return gcs.read_metrics(place, list(folders), **gcs.access(placement or {}))
    return {}


def log_metrics(
    logs: Callable[[str], Iterable[bytes]], remote_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The `CALIBAN_METRICS` lines of each job's output (docker logs, pod logs), by remote id;
    a job whose logs cannot be read (removed, not scheduled yet) has none."""

    def read(remote_id: str) -> dict[str, Any]:
        try:
            text = b"".join(logs(remote_id)).decode("utf-8", errors="replace")
        except Exception:  # gone or unreadable: its state says more than its logs could
            return {}
        return metrics_from_logs(text.splitlines())

    with ThreadPoolExecutor(min(LOG_READERS, max(1, len(remote_ids)))) as pool:
        found = dict(zip(remote_ids, pool.map(read, remote_ids)))
    return {k: v for k, v in found.items() if v}


def copy_folder(place: OutputPlace, folder: str, dest: Path, placement: Mapping | None) -> int:
    """Copy one job folder's files into `dest`; how many files were copied."""
    if place.kind == "local":
        source = Path(place.root) / folder
        if not source.is_dir():
            return 0
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return sum(1 for p in dest.rglob("*") if p.is_file())
    if place.kind == "gcs":
        from caliban_flows.platforms import gcs

        return gcs.copy_folder(place, folder, dest, **gcs.access(placement or {}))
    raise CalibanError(
        f"the outputs are on PersistentVolumeClaim {place.claim!r}, which caliban cannot read "
        "from outside the cluster: copy them from a pod that mounts it (kubectl cp)"
    )
