"""A Kubernetes batch/v1 Job per experiment, as the plain mapping the API takes (camelCase).

Pure: `--dry_run` prints these without loading the Kubernetes client, and the platform adapter
sends them as they are. On GKE, accelerators and spot nodes are picked with GKE's node labels
(and tolerations); elsewhere a GPU is only an `nvidia.com/gpu` limit. With --max_restarts a Job
carries a podFailurePolicy, and what its failed pods say back is read here too (`failed_pod`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from caliban_flows.spec import gke_tpu
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.vertex_job import xgroup_id

# Every Job (and its pods) carries these: one list call by xgroup finds a group's jobs.
XGROUP_ID_LABEL = "caliban.dev/xgroup-id"
XGROUP_LABEL = "caliban.dev/xgroup"
JOB_KEY_LABEL = "caliban.dev/job-key"
ATTEMPT_LABEL = "caliban.dev/attempt"
BOOKKEEPING = (XGROUP_ID_LABEL, XGROUP_LABEL, JOB_KEY_LABEL, ATTEMPT_LABEL)

DEFAULT_CPU_ACCELERATED = 1500  # milli-CPUs, as Caliban
DEFAULT_CPU = 31000
DEFAULT_BACKOFF_LIMIT = 0  # Caliban's jobs ran once; a retry is a resubmit, on purpose
GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GKE_SPOT = "cloud.google.com/gke-spot"
TPU_VERSION_ANNOTATION = gke_tpu.LEGACY_VERSION_ANNOTATION

# The pod failure policy (batch/v1, Kubernetes >= 1.26) that --max_restarts adds: a pod the
# cluster disrupted (preempted, evicted, its node drained) or that exited with a named code is
# replaced and counted against backoffLimit (= max_restarts), any other failure of the code
# ends the Job at once. Count, not Ignore, for disruptions: Ignore would replace a preempted
# pod forever, and --max_restarts N promises at most N restarts.
CONTAINER_NAME = "caliban"
DISRUPTION_TARGET = "DisruptionTarget"
MAX_EXIT_CODE = 255
# Kubernetes takes at most 255 values in a rule; the FailJob rule lists 0 and every named code.
MAX_RESTART_CODES = 254

# A DisruptionTarget condition's reason (who took the pod away), in words.
DISRUPTIONS = {
    "PreemptionByScheduler": "preempted",
    "EvictionByEvictionAPI": "evicted",
    "DeletionByTaintManager": "node tainted NoExecute",
    "DeletionByPodGC": "node gone",
    "TerminationByKubelet": "node shut down",  # a GKE Spot VM's preemption looks like this
}
# A pod the kubelet failed for its node's sake (its status.reason), with or without the
# condition (clusters before 1.26 have none).
NODE_REASONS = {
    "Evicted": "evicted by the kubelet",
    "Terminated": "node shut down",
    "Shutdown": "node shut down",
    "NodeShutdown": "node shutting down",
    "NodeLost": "node lost",
}

_NAME_PART = re.compile(r"[^a-z0-9-]")
_VALUE_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_KEY_BAD = re.compile(r"[^a-z0-9_.-]")
MAX_NAME = 63


@dataclass(frozen=True)
class Resources:
    """What every job of one `caliban cluster job submit` asks for."""

    cpu_millis: int
    memory_mb: int | None = None
    gpu_count: int = 0
    gpu_type: str | None = None  # the catalog's accelerator type, e.g. NVIDIA_TESLA_T4
    tpu_count: int = 0
    # spec.gke_tpu's name (V4, V5E, V5P, V6E); V2/V3 only in Caliban's Cloud TPU Node form
    tpu_type: str | None = None
    tpu_topology: str | None = None
    tpu_driver: str = "1.14"  # the Cloud TPU Node form's TF version annotation
    preemptible_tpu: bool = True
    spot: bool = True  # GKE only
    gke: bool = False
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT
    # Disruptions the cluster replaces the pod for, without limit; with restart_on_exit_codes,
    # up to max_restarts pods that ended on one of those codes are replaced too.
    max_restarts: int = 0
    restart_on_exit_codes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # A recorded placement comes back from JSON with a list here.
        object.__setattr__(self, "restart_on_exit_codes", tuple(self.restart_on_exit_codes))


def resources(
    *,
    min_cpu: int | None,
    min_mem: int | None,
    gpu=None,
    tpu=None,
    nonpreemptible: bool = False,
    nonpreemptible_tpu: bool = False,
    tpu_driver: str = "1.14",
    gke: bool = False,
    backoff_limit: int = DEFAULT_BACKOFF_LIMIT,
    max_restarts: int = 0,
    restart_on_exit_codes: Sequence[int] = (),
) -> Resources:
    """From Caliban's flags; `gpu` is spec.accelerators' GpuSpec, `tpu` spec.gke_tpu's
    ClusterTpu."""
    if backoff_limit < 0:
        raise SpecError(f"--backoff_limit {backoff_limit} must be 0 or more")
    codes = restart_codes(max_restarts, restart_on_exit_codes)
    accelerated = gpu is not None or tpu is not None
    cpu = (
        min_cpu
        if min_cpu is not None
        else (DEFAULT_CPU_ACCELERATED if accelerated else DEFAULT_CPU)
    )
    return Resources(
        cpu_millis=cpu,
        memory_mb=min_mem,
        gpu_count=gpu.count if gpu else 0,
        gpu_type=gpu.accelerator_type if gpu else None,
        tpu_count=tpu.count if tpu else 0,
        tpu_type=tpu.tpu if tpu else None,
        tpu_topology=tpu.topology if tpu else None,
        tpu_driver=tpu_driver,
        preemptible_tpu=not nonpreemptible_tpu,
        spot=not nonpreemptible,
        gke=gke,
        backoff_limit=backoff_limit,
        max_restarts=max_restarts,
        restart_on_exit_codes=codes,
    )


def restart_codes(max_restarts: int, exit_codes: Sequence[int]) -> tuple[int, ...]:
    """The exit codes a pod is restarted on, checked: sorted and unique, as Kubernetes wants."""
    if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
        raise SpecError(f"--max_restarts {max_restarts} must be 0 or more")
    bad = [
        c
        for c in exit_codes
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_EXIT_CODE
    ]
    if bad:
        raise SpecError(
            f"--restart_on_exit_codes {bad[0]}: exit codes are 1 to {MAX_EXIT_CODE} "
            "(0 is success, never restarted)"
        )
    codes = tuple(sorted(set(exit_codes)))
    if codes and not max_restarts:
        raise SpecError("--restart_on_exit_codes needs --max_restarts 1 or more")
    if len(codes) > MAX_RESTART_CODES:
        raise SpecError(f"--restart_on_exit_codes takes at most {MAX_RESTART_CODES} exit codes")
    return codes


def pod_failure_policy(restart_on_exit_codes: Sequence[int]) -> dict:
    """batch/v1 spec.podFailurePolicy; the first rule a failed pod matches decides."""
    codes = sorted(set(restart_on_exit_codes))
    rules: list[dict] = [
        {"action": "Count", "onPodConditions": [{"type": DISRUPTION_TARGET, "status": "True"}]}
    ]
    if codes:
        rules.append(
            {
                "action": "Count",
                "onExitCodes": {"containerName": CONTAINER_NAME, "operator": "In", "values": codes},
            }
        )
    rules.append(
        {
            "action": "FailJob",
            "onExitCodes": {
                "containerName": CONTAINER_NAME,
                "operator": "NotIn",
                "values": [0, *codes],
            },
        }
    )
    return {"rules": rules}


def gke_accelerator(accelerator_type: str) -> str:
    """GKE's node label value: NVIDIA_TESLA_T4 -> nvidia-tesla-t4."""
    return accelerator_type.lower().replace("_", "-")


def job_name(name: str, key: str, attempt: int) -> str:
    """A DNS-1123 label, the same for the same key and attempt: a retried create of it is
    answered 409 AlreadyExists, never a second Job."""
    base = _NAME_PART.sub("-", name.lower().replace("_", "-")).strip("-") or "caliban"
    digest = hashlib.sha256(f"{key}/{attempt}".encode()).hexdigest()[:10]
    return f"{base[: MAX_NAME - 11].rstrip('-')}-{digest}"


def label_value(text: str) -> str:
    """Kubernetes' rule: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends."""
    cleaned = _VALUE_BAD.sub("", text)[:MAX_NAME]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def label_key(text: str) -> str:
    cleaned = _KEY_BAD.sub("", text.lower())[:MAX_NAME]
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", cleaned)


def job_labels(labels: Mapping[str, str], *, xgroup: str, key: str, attempt: int) -> dict[str, str]:
    out = {label_key(k): label_value(v) for k, v in labels.items() if label_key(k)}
    out[XGROUP_ID_LABEL] = xgroup_id(xgroup)
    out[XGROUP_LABEL] = label_value(xgroup)
    out[JOB_KEY_LABEL] = key
    out[ATTEMPT_LABEL] = str(attempt)
    return out


def job_manifest(
    *,
    name: str,
    image: str,
    args: Sequence[str],
    labels: Mapping[str, str],
    resources: Resources,
    namespace: str | None = None,
    command: Sequence[str] | None = None,
) -> dict:
    """One batch/v1 Job; `name` is already a job_name()."""
    requests: dict[str, str] = {"cpu": f"{resources.cpu_millis}m"}
    if resources.memory_mb:
        requests["memory"] = f"{resources.memory_mb}Mi"
    limits: dict[str, str] = {}
    selector: dict[str, str] = {}
    tolerations: list[dict] = []
    annotations: dict[str, str] = {}
    if resources.gpu_count:
        limits["nvidia.com/gpu"] = str(resources.gpu_count)
        if resources.gke and resources.gpu_type:
            selector[GKE_ACCELERATOR] = gke_accelerator(resources.gpu_type)
    tpu = resources.tpu_type if resources.tpu_count else None
    legacy_tpu = tpu in gke_tpu.LEGACY_RESOURCES
    spot = resources.spot and resources.gke
    if tpu and legacy_tpu:
        resource = gke_tpu.legacy_resource(tpu, preemptible=resources.preemptible_tpu)
        limits[resource] = str(resources.tpu_count)
        annotations[TPU_VERSION_ANNOTATION] = resources.tpu_driver
    elif tpu:  # a TPU VM slice node: all its chips, picked by accelerator and topology
        chips, tpu_selector = gke_tpu.node_request(
            gke_tpu.ClusterTpu(resources.tpu_count, tpu, topology=resources.tpu_topology)
        )
        limits.update(chips)
        selector.update(tpu_selector)
        # The TPU is the node: a Spot TPU node only if neither flag asks for on-demand.
        spot = spot and resources.preemptible_tpu
        tolerations.append(
            {"key": gke_tpu.TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
        )
    if spot:
        selector[GKE_SPOT] = "true"
        tolerations.append(
            {"key": GKE_SPOT, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        )
    if resources.gpu_count:  # GPU nodes are tainted so only GPU pods land there
        tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    container: dict = {
        "name": CONTAINER_NAME,
        "image": image,
        "args": list(args),
        "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
        "resources": {"requests": requests, **({"limits": limits} if limits else {})},
    }
    if command:
        container["command"] = list(command)
    pod: dict = {
        "restartPolicy": "Never",
        "hostIPC": True,  # as Caliban's cluster jobs
        "containers": [container],
    }
    if selector:
        pod["nodeSelector"] = selector
    if tolerations:
        pod["tolerations"] = tolerations
    template_meta: dict = {"labels": dict(labels)}
    if annotations:
        template_meta["annotations"] = annotations
    metadata: dict = {"name": name, "labels": dict(labels)}
    if namespace:
        metadata["namespace"] = namespace
    spec: dict = {
        "backoffLimit": resources.backoff_limit,
        "template": {"metadata": template_meta, "spec": pod},
    }
    if resources.max_restarts > 0:  # needs restartPolicy Never, as `pod` has
        spec["backoffLimit"] = resources.max_restarts  # counts only the named exit codes now
        spec["podFailurePolicy"] = pod_failure_policy(resources.restart_on_exit_codes)
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def check_job_file(doc: object, source: str) -> dict:
    """A user's own Job manifest, checked before anything is sent: one line per problem."""
    if not isinstance(doc, dict):
        raise SpecError(f"{source}: a Job manifest must be a mapping, not {type(doc).__name__}")
    if doc.get("apiVersion") != "batch/v1" or doc.get("kind") != "Job":
        raise SpecError(
            f"{source}: apiVersion batch/v1, kind Job expected; got "
            f"{doc.get('apiVersion')!r}, {doc.get('kind')!r}"
        )
    meta = doc.get("metadata") or {}
    name = meta.get("name")
    if not name and not meta.get("generateName"):
        raise SpecError(f"{source}: metadata.name (or generateName) is required")
    if name and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
        raise SpecError(f"{source}: metadata.name {name!r} is not a DNS-1123 label")
    pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod.get("containers")
    if not isinstance(containers, list) or not containers:
        raise SpecError(f"{source}: spec.template.spec.containers must list a container")
    for i, c in enumerate(containers):
        if not isinstance(c, dict) or not c.get("image") or not c.get("name"):
            raise SpecError(f"{source}: containers[{i}] needs a name and an image")
    if pod.get("restartPolicy") not in ("Never", "OnFailure"):
        raise SpecError(
            f"{source}: spec.template.spec.restartPolicy must be Never or OnFailure for a Job"
        )
    return doc


# --------------------------------------------------------------------------- failed pods


@dataclass(frozen=True)
class FailedPod:
    """One failed pod of a Job: its exit code, and the cluster's reason if the cluster ended it."""

    exit_code: int | None
    infra: str | None
    why: str  # in words: the infrastructure's reason, else "exit code N"


def disruption(pod: Mapping) -> str | None:
    """Why the cluster, not the code, ended a pod (its JSON); None when it ended on its own."""
    status = pod.get("status") or {}
    node_reason = status.get("reason")
    for condition in status.get("conditions") or []:
        if condition.get("type") == DISRUPTION_TARGET and condition.get("status") == "True":
            reason = condition.get("reason") or DISRUPTION_TARGET
            words = DISRUPTIONS.get(reason, "disrupted")
            if reason == "TerminationByKubelet" and node_reason in NODE_REASONS:
                words = NODE_REASONS[node_reason]  # node pressure says Evicted
            return f"{words} ({reason})"
    if node_reason in NODE_REASONS:
        return f"{NODE_REASONS[node_reason]} ({node_reason})"
    return None


def failed_pod(pod: Mapping) -> FailedPod:
    status = pod.get("status") or {}
    code = None
    for container in status.get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated")
        if ended is not None:
            code = ended.get("exitCode")
    infra = disruption(pod)
    if infra is not None:
        why = infra
    elif code is not None:
        why = f"exit code {code}"
    else:
        why = f"failed ({status.get('reason') or 'no exit code'})"
    return FailedPod(exit_code=code, infra=infra, why=why)


def pod_age(pod: Mapping) -> tuple[str, str, int]:
    """A sort key, oldest first. Timestamps are whole seconds: a pod replaced within the second
    it was made is told from its replacement by when it ended, then by its last write (its
    resourceVersion, an etcd revision: the replacement's life comes after the replaced one's)."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    finished = ""
    for container in status.get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        finished = max(finished, ended.get("finishedAt") or "")
    try:
        revision = int(meta.get("resourceVersion") or 0)
    except ValueError:
        revision = 0
    return meta.get("creationTimestamp") or "", finished, revision
