"""The pod volumes the Kubernetes emulator mounts: job output folders, as a cluster holds them.

- `csi: {driver: gcsfuse.csi.storage.gke.io, volumeAttributes: {bucketName: B}}`: the GKE Cloud
  Storage FUSE CSI driver's volume binds `<buckets>/B`, the folder the storage emulator serves as
  bucket B. GKE's admission webhook injects the driver's sidecar only into pods annotated
  `gke-gcsfuse/volumes: "true"`; without it the mount fails as on GKE, and the pod stays in
  ContainerCreating with the driver's message.
- `persistentVolumeClaim: {claimName: C}` binds `<pvcs>/C`; a claim's folder is made on first use.

A mount's `subPath` is a folder under its volume, created as kubelet does (devtools.bucket_folders:
open to any uid, as the container's user may be anyone).
Other volume kinds are left unmounted, as before.
"""

from __future__ import annotations

import re
from pathlib import Path

from devtools.bucket_folders import open_bucket, open_folder

GCSFUSE_DRIVER = "gcsfuse.csi.storage.gke.io"
GCSFUSE_ANNOTATION = "gke-gcsfuse/volumes"
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")

Cause = tuple[str, str, str]  # field, reason, detail: the API server's field errors


class MountError(Exception):
    """Why kubelet cannot set up a pod's volumes; str() is the FailedMount message."""


def volume_errors(pod: dict, path: str = "spec.template.spec") -> list[Cause]:
    """The API server's checks of a pod spec's volumes and of its containers' volumeMounts."""
    errors: list[Cause] = []
    names: set[str] = set()
    for i, volume in enumerate(pod.get("volumes") or []):
        where = f"{path}.volumes[{i}]"
        name = volume.get("name") if isinstance(volume, dict) else None
        if not name:
            errors.append((f"{where}.name", "FieldValueRequired", "Required value"))
            continue
        if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 63:
            errors.append((f"{where}.name", "FieldValueInvalid", f'Invalid value: "{name}"'))
        elif name in names:
            errors.append((f"{where}.name", "FieldValueDuplicate", f'Duplicate value: "{name}"'))
        names.add(str(name))
        claim = volume.get("persistentVolumeClaim")
        if claim is not None and not (claim or {}).get("claimName"):
            field = f"{where}.persistentVolumeClaim.claimName"
            errors.append((field, "FieldValueRequired", "Required value"))
        csi = volume.get("csi")
        if csi is not None and not (csi or {}).get("driver"):
            errors.append((f"{where}.csi.driver", "FieldValueRequired", "Required value"))
    for c, container in enumerate(pod.get("containers") or []):
        if not isinstance(container, dict):
            continue
        for m, mount in enumerate(container.get("volumeMounts") or []):
            if not isinstance(mount, dict):
                continue
            where = f"{path}.containers[{c}].volumeMounts[{m}]"
            if mount.get("name") not in names:
                detail = f'Not found: "{mount.get("name")}"'
                errors.append((f"{where}.name", "FieldValueNotFound", detail))
            if not str(mount.get("mountPath") or "").startswith("/"):
                errors.append((f"{where}.mountPath", "FieldValueRequired", "Required value"))
            sub = str(mount.get("subPath") or "")
            if sub.startswith("/") or ".." in sub.split("/"):
                detail = f'Invalid value: "{sub}": must be a relative path without ".."'
                errors.append((f"{where}.subPath", "FieldValueInvalid", detail))
    return errors


def binds(pod: dict, *, buckets: Path, pvcs: Path) -> dict[str, dict[str, str]]:
    """docker `volumes=` for the pod's first container: host folder -> bind. MountError if a
    volume cannot be set up."""
    spec = pod["spec"]
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    volumes = {v["name"]: v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    out: dict[str, dict[str, str]] = {}
    for mount in spec["containers"][0].get("volumeMounts") or []:
        volume = volumes.get(mount.get("name"), {})
        if volume.get("csi"):
            root = _bucket(volume, annotations, buckets)
        elif volume.get("persistentVolumeClaim"):
            root = open_folder(pvcs / volume["persistentVolumeClaim"]["claimName"])
        else:
            continue
        host = open_folder(root / mount["subPath"]) if mount.get("subPath") else root
        mode = "ro" if mount.get("readOnly") else "rw"
        out[str(host.resolve())] = {"bind": mount["mountPath"], "mode": mode}
    return out


def _bucket(volume: dict, annotations: dict, buckets: Path) -> Path:
    csi = volume["csi"]
    name = volume["name"]
    if csi.get("driver") != GCSFUSE_DRIVER:
        raise MountError(
            f'MountVolume.SetUp failed for volume "{name}" : kubernetes.io/csi: mounter.SetUpAt '
            f"failed to get CSI client: driver name {csi.get('driver')} not found in the list "
            "of registered CSI drivers"
        )
    if str(annotations.get(GCSFUSE_ANNOTATION, "")).lower() != "true":
        raise MountError(
            f'MountVolume.SetUp failed for volume "{name}" : rpc error: code = '
            "FailedPrecondition desc = failed to find the sidecar container in Pod spec "
            f'(the pod needs the annotation {GCSFUSE_ANNOTATION}: "true")'
        )
    bucket = (csi.get("volumeAttributes") or {}).get("bucketName") or ""
    if not bucket or "/" in bucket or bucket in (".", ".."):
        raise MountError(
            f'MountVolume.SetUp failed for volume "{name}" : rpc error: code = '
            "InvalidArgument desc = bucketName must be given in volumeAttributes"
        )
    return open_bucket(buckets, bucket)
