"""Where each job writes its outputs, and how its metrics are read: pure, no I/O.

Every job gets a folder of its own, `<root>/<xgroup>/<job>/<attempt>/`, named to it through
`$CALIBAN_OUTPUT_DIR`. The root is a host folder (local Docker), a Cloud Storage bucket (Vertex
AI, and Kubernetes through the GKE Cloud Storage FUSE CSI driver) or a PersistentVolumeClaim
(Kubernetes). A group's runs record their root as `placement["outputs"]` (an `OutputPlace`
dict), so `caliban results` and `caliban pull` find every job's folder again.

Metrics, by convention (no SDK in the job): `metrics.json` (one object), `metrics.jsonl` (a
series; the last value of each key wins) in the folder, or stdout lines
`CALIBAN_METRICS {"acc": 0.93}` where caliban can read the job's logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from caliban_flows.spec.errors import SpecError

OUTPUT_DIR_ENV = "CALIBAN_OUTPUT_DIR"
METRICS_FILE = "metrics.json"
METRICS_SERIES = "metrics.jsonl"
METRICS_FILES = (METRICS_SERIES, METRICS_FILE)  # read in this order: the object wins
METRICS_LINE = "CALIBAN_METRICS"
# Where a local job's folder, or a PersistentVolumeClaim's subPath, is mounted in the container.
CONTAINER_OUTPUT_DIR = "/caliban/output"
# Vertex AI mounts every bucket the job may read at /gcs/BUCKET (Cloud Storage FUSE); the GKE
# CSI driver's volume is mounted at the same place, so a job sees one layout on both.
GCS_FUSE_ROOT = "/gcs"
GCSFUSE_CSI_DRIVER = "gcsfuse.csi.storage.gke.io"
DEFAULT_PREFIX = "caliban"  # the folder under a bucket that holds every group's outputs

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
# Cloud Storage's bucket naming rules (without dots: those need a verified domain).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]")
_LINE = re.compile(rf"^{METRICS_LINE}\s+(\{{.*\}})\s*$")


def _safe(part: str) -> str:
    """A name as one path segment: kept when already safe, else made safe and told apart by a
    hash of the original (two xgroups that differ only in a space never share a folder)."""
    cleaned = _SAFE.sub("_", part).strip(".") or "_"
    if cleaned == part:
        return part
    return f"{cleaned}-{hashlib.sha256(part.encode()).hexdigest()[:8]}"


def job_folder(xgroup: str, name: str, key: str, attempt: int) -> str:
    """A job attempt's folder under the root: `<xgroup>/<name>-<key[:8]>/<attempt>`.

    The key's head is in it because two submissions of one group number their jobs from 1
    again: `caliban_me_1` of each is another experiment, and must not share a folder.
    """
    return f"{_safe(xgroup)}/{_safe(name)}-{key[:8]}/{attempt}"


def group_folder(xgroup: str) -> str:
    return _safe(xgroup)


@dataclass(frozen=True)
class OutputPlace:
    """The root of a group's output folders, as recorded in a run's placement.

    kind "local": `root` is an absolute host folder. kind "gcs": `bucket` and `prefix`.
    kind "pvc": `claim`, a PersistentVolumeClaim in the job's namespace.
    """

    kind: str
    root: str = ""
    bucket: str = ""
    prefix: str = ""
    claim: str = ""

    def record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}

    @classmethod
    def of(cls, record: Mapping[str, Any] | None) -> OutputPlace | None:
        if not record:
            return None
        return cls(**{k: str(record.get(k) or "") for k in ("kind", "root", "bucket",
                                                             "prefix", "claim")})  # fmt: skip

    def uri(self, folder: str = "") -> str:
        """Where a folder under the root is, as caliban reads it: a host path, `gs://...` or
        `pvc://CLAIM/...`."""
        tail = f"/{folder}" if folder else ""
        if self.kind == "local":
            return self.root.rstrip("/") + tail
        if self.kind == "gcs":
            return f"gs://{self.bucket}/{self.prefix}".rstrip("/") + tail
        return f"pvc://{self.claim}{tail}"

    def object_prefix(self, folder: str) -> str:
        """The Cloud Storage object name prefix of a folder (kind "gcs"), with a trailing /."""
        return "/".join(p for p in (self.prefix.strip("/"), folder) if p) + "/"

    def container_dir(self, folder: str) -> str:
        """`$CALIBAN_OUTPUT_DIR` inside the job's container."""
        if self.kind == "gcs":
            return f"{GCS_FUSE_ROOT}/{self.bucket}/{self.object_prefix(folder).rstrip('/')}"
        return CONTAINER_OUTPUT_DIR


def gcs_place(uri: str) -> OutputPlace:
    """`gs://BUCKET[/PREFIX]` or a bare bucket name as the root of a group's outputs."""
    text = uri.strip()
    rest = text[len("gs://") :] if text.startswith("gs://") else text
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise SpecError(
            f"--output_bucket {uri!r} is not a Cloud Storage bucket: give gs://BUCKET[/PREFIX], "
            "a bucket name of 3-63 lowercase letters, digits, - and _"
        )
    return OutputPlace("gcs", bucket=bucket, prefix=prefix.strip("/") or DEFAULT_PREFIX)


def pvc_place(claim: str) -> OutputPlace:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", claim):
        raise SpecError(
            f"--output_pvc {claim!r} is not a PersistentVolumeClaim name: lowercase letters, "
            "digits, - and ., starting and ending with a letter or digit"
        )
    return OutputPlace("pvc", claim=claim)


# ---------------------------------------------------------------------------------------------
# metrics


def _scalars(obj: Any) -> dict[str, Any]:
    """The metrics of one JSON object: numbers, strings and booleans, nested keys joined by /."""
    out: dict[str, Any] = {}
    if not isinstance(obj, dict):
        return out
    for key, value in obj.items():
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in _scalars(value).items()})
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[str(key)] = value
    return out


def metrics_from_json(text: str) -> dict[str, Any]:
    """`metrics.json`: one object. A file caught half-written reads as no metrics."""
    try:
        return _scalars(json.loads(text))
    except ValueError:
        return {}


def metrics_from_jsonl(text: str) -> dict[str, Any]:
    """`metrics.jsonl`: one object per line; the last value of each key wins. A line that is
    not JSON (the last, still being written) is skipped."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if line.strip():
            out.update(metrics_from_json(line))
    return out


def metrics_from_logs(lines: Iterable[str]) -> dict[str, Any]:
    """`CALIBAN_METRICS {...}` lines of a job's output; the last value of each key wins."""
    out: dict[str, Any] = {}
    for line in lines:
        if METRICS_LINE in line:
            match = _LINE.match(line.strip())
            if match:
                out.update(metrics_from_json(match.group(1)))
    return out


# ---------------------------------------------------------------------------------------------
# experiment args as typed columns


def _typed(text: str) -> Any:
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            return text
        return value
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    return text


def arg_columns(args: Sequence[str]) -> dict[str, Any]:
    """A job's args as columns: `--C 0.1` -> {"C": 0.1}, a bare `--flag` -> True,
    `--k=v` -> {"k": v}; positional words are kept together under "args"."""
    out: dict[str, Any] = {}
    loose: list[str] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            if eq:
                out[name] = _typed(value)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[name] = _typed(args[i + 1])
                i += 1
            else:
                out[name] = True
        else:
            loose.append(word)
        i += 1
    if loose:
        out["args"] = " ".join(loose)
    return out
