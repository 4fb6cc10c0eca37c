"""A Kubernetes Job's output folder: a Cloud Storage bucket through GKE's Cloud Storage FUSE
CSI driver, or a PersistentVolumeClaim; either way the job finds it at $CALIBAN_OUTPUT_DIR.

Pure, like spec.k8s_job, whose manifests these functions extend.
"""

from __future__ import annotations

from caliban_flows.spec.outputs import (
    CONTAINER_OUTPUT_DIR,
    GCS_FUSE_ROOT,
    GCSFUSE_CSI_DRIVER,
    OUTPUT_DIR_ENV,
    OutputPlace,
)

VOLUME = "caliban-outputs"
# GKE's webhook injects the gcsfuse sidecar into pods that carry this annotation.
GCSFUSE_ANNOTATION = "gke-gcsfuse/volumes"
# Cloud Storage has no folders: without implicit-dirs a job's own PREFIX/... would not list.
# The driver mounts as root with modes 0644/0755, and caliban's images run as the submitting
# user's uid: open modes let that uid write (the mount is the pod's alone).
GCSFUSE_MOUNT_OPTIONS = "implicit-dirs,file-mode=666,dir-mode=777"


def with_outputs(manifest: dict, place: OutputPlace | None, folder: str) -> dict:
    """`manifest` (a job_manifest) with the job's output folder mounted, in place; unchanged
    without a bucket or claim.

    A bucket is mounted whole at /gcs/BUCKET, as Vertex AI does, so a job sees one layout on
    both. A claim is mounted at the folder itself (a subPath the kubelet makes), so jobs of
    one claim never see each other's files.
    """
    if place is None or place.kind not in ("gcs", "pvc"):
        return manifest
    template = manifest["spec"]["template"]
    pod = template["spec"]
    container = pod["containers"][0]
    if place.kind == "gcs":
        attributes = {"bucketName": place.bucket, "mountOptions": GCSFUSE_MOUNT_OPTIONS}
        volume: dict = {"name": VOLUME, "csi": {"driver": GCSFUSE_CSI_DRIVER,
                                                "volumeAttributes": attributes}}  # fmt: skip
        mount = {"name": VOLUME, "mountPath": f"{GCS_FUSE_ROOT}/{place.bucket}"}
        template["metadata"].setdefault("annotations", {})[GCSFUSE_ANNOTATION] = "true"
    else:
        volume = {"name": VOLUME, "persistentVolumeClaim": {"claimName": place.claim}}
        mount = {"name": VOLUME, "mountPath": CONTAINER_OUTPUT_DIR, "subPath": folder}
    pod.setdefault("volumes", []).append(volume)
    container.setdefault("volumeMounts", []).append(mount)
    container.setdefault("env", []).append(
        {"name": OUTPUT_DIR_ENV, "value": place.container_dir(folder)}
    )
    return manifest
