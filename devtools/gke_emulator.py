"""A GKE ClusterManager emulator (cluster and operation RPCs) on the real gRPC wire protocol.

Like GKE it serves TLS only (devtools.test_pki's CA signs its certificate) and refuses with
UNAUTHENTICATED a call without a valid credential: a self-signed JWT of a service-account key it
trusts (`new_key()`). The real `google.cloud.container_v1.ClusterManagerClient` reaches it as it
reaches Google, given `client_env(key)` ($CALIBAN_GKE_ENDPOINT, the CA roots, the key as ADC):

    with GkeEmulator(op_seconds=0.2, quota={"nvidia-tesla-t4": 8}) as emu:
        client = ClusterManagerClient(credentials=..., client_options={"api_endpoint":
                                      emu.endpoint})

CreateCluster and DeleteCluster answer with an Operation that is RUNNING for `op_seconds` and
then DONE; meanwhile the cluster is PROVISIONING (then RUNNING) or STOPPING (then gone).
Requests are checked the way GKE checks them (cluster names, locations, node-autoprovisioning
resource limits, one operation per cluster at a time) plus an optional quota table. Latency and
UNAVAILABLE answers can be injected while it runs, and every call is counted per method.

    python -m devtools.gke_emulator [--port N] [--op-seconds S] [--latency S] [--error-rate F]
                                    [--quota TYPE=N ...]
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import json
import random
import re
import shlex
import signal
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from google.cloud import container_v1

from devtools import test_pki

SERVICE = "google.container.v1.ClusterManager"
API = "https://container.googleapis.com/v1"
# What a service-account JWT may be issued for (its scope claim, cloud-platform, also does).
AUDIENCES = ("https://container.googleapis.com/", "https://compute.googleapis.com/")

ClusterStatus = container_v1.Cluster.Status
PoolStatus = container_v1.NodePool.Status
OpStatus = container_v1.Operation.Status
OpType = container_v1.Operation.Type
Channel = container_v1.ReleaseChannel.Channel

# Raw protobuf classes: cheap to copy under the lock; proto-plus only at the edges.
ClusterPb = container_v1.Cluster.pb()
OperationPb = container_v1.Operation.pb()
NodePoolPb = container_v1.NodePool.pb()
_CreatePb = container_v1.CreateClusterRequest.pb()
_GetPb = container_v1.GetClusterRequest.pb()
_ListPb = container_v1.ListClustersRequest.pb()
_ListRespPb = container_v1.ListClustersResponse.pb()
_DeletePb = container_v1.DeleteClusterRequest.pb()
_GetOpPb = container_v1.GetOperationRequest.pb()
_ListOpsPb = container_v1.ListOperationsRequest.pb()
_ListOpsRespPb = container_v1.ListOperationsResponse.pb()
_ListPoolsPb = container_v1.ListNodePoolsRequest.pb()
_ListPoolsRespPb = container_v1.ListNodePoolsResponse.pb()

PARENT_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)$")
CLUSTER_PATH_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/clusters/([^/]+)$")
OPERATION_PATH_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)/operations/([^/]+)$")
# GKE's own pattern and wording for cluster (and node pool) names.
NAME_PATTERN = "(?:[a-z](?:[-a-z0-9]{0,38}[a-z0-9])?)"
NAME_RE = re.compile(f"^{NAME_PATTERN}$")
NAME_RULE = (
    "only alphanumerics and '-' allowed, must start with a letter and end with an "
    "alphanumeric, and must be no longer than 40 characters"
)
REGION_RE = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
ZONE_RE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z]$")
GPU_RE = re.compile(r"^nvidia-[a-z0-9]+(?:-[a-z0-9]+)*$")
TPU_RE = re.compile(r"^tpu-[a-z0-9]+(?:-[a-z0-9]+)*$")

# What each channel hands a new cluster (a plausible snapshot; GKE moves these weekly).
CHANNEL_VERSIONS = {
    Channel.UNSPECIFIED: "1.32.4-gke.1415000",
    Channel.RAPID: "1.33.2-gke.1240000",
    Channel.REGULAR: "1.32.4-gke.1415000",
    Channel.STABLE: "1.31.8-gke.1113000",
    Channel.EXTENDED: "1.30.12-gke.1086000",
}
FULL_VERSION_RE = re.compile(r"^1\.[0-9]+\.[0-9]+-gke\.[0-9]+$")
DEFAULT_POOL = "default-pool"
DEFAULT_MACHINE_TYPE = "e2-medium"
DEFAULT_DISK_GB = 100
REGION_ZONES = ("a", "b", "c")  # real regions differ; three zones is the common shape
FAKE_CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nemulator\n-----END CERTIFICATE-----\n")


class _Abort(Exception):
    """Answer the RPC with this status code instead of a response."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(message: str) -> _Abort:
    return _Abort(grpc.StatusCode.INVALID_ARGUMENT, message)


def _not_found(what: str) -> _Abort:
    return _Abort(grpc.StatusCode.NOT_FOUND, f"Not found: {what}.")


@dataclass
class _Op:
    proto: Any  # OperationPb; mutated only under the emulator lock
    project: str
    cluster: str  # full cluster path
    due: float  # monotonic time the operation finishes


def _timestamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------- request paths


def _location_path(parent: str, project: str, zone: str, what: str) -> tuple[str, str]:
    """(project, location) from `parent` or the legacy project_id/zone fields."""
    if parent:
        match = PARENT_RE.match(parent)
        if not match:
            raise _invalid(f"{what} must be projects/P/locations/L, got {parent!r}")
        return match[1], match[2]
    if project and zone:
        return project, zone
    raise _invalid(f"{what} (or the legacy project_id and zone) must be set")


def _cluster_path(request) -> tuple[str, str, str]:
    """(project, location, cluster) from `name` or project_id/zone/cluster_id."""
    if request.name:
        match = CLUSTER_PATH_RE.match(request.name)
        if not match:
            raise _invalid(f"name must be projects/P/locations/L/clusters/C, got {request.name!r}")
        return match[1], match[2], match[3]
    if request.project_id and request.zone and request.cluster_id:
        return request.project_id, request.zone, request.cluster_id
    raise _invalid("name (or the legacy project_id, zone and cluster_id) must be set")


def _check_location(location: str) -> None:
    if not (REGION_RE.match(location) or ZONE_RE.match(location)):
        raise _invalid(f'Location "{location}" is not a valid GKE region or zone.')


# --------------------------------------------------------------------------- validation


def _validate_cluster(cluster: Any, location: str) -> None:
    """Raise INVALID_ARGUMENT where GKE would refuse `cluster` (a ClusterPb)."""
    if not cluster.name:
        raise _invalid("Cluster.name must be specified.")
    if not NAME_RE.match(cluster.name):
        raise _invalid(
            f'Invalid value for field "cluster.name": "{cluster.name}". '
            f"Must be a match of regex '{NAME_PATTERN}' ({NAME_RULE})."
        )
    if cluster.node_pools and cluster.initial_node_count:
        raise _invalid("Cluster.initial_node_count and Cluster.node_pools cannot both be set.")
    if not cluster.node_pools and cluster.initial_node_count <= 0:
        raise _invalid("Cluster.initial_node_count must be greater than zero.")
    zonal = ZONE_RE.match(location)
    region = zonal[1] if zonal else location
    for zone in cluster.locations:
        match = ZONE_RE.match(zone)
        if not match or match[1] != region:
            raise _invalid(
                f'Invalid value for field "cluster.locations": "{zone}" is not a zone in {region}.'
            )
    if zonal and cluster.locations and location not in cluster.locations:
        raise _invalid(f'Cluster.locations must include the cluster zone "{location}".')
    pool_names: set[str] = set()
    for i, pool in enumerate(cluster.node_pools):
        if not NAME_RE.match(pool.name):
            raise _invalid(
                f'Invalid value for field "cluster.node_pools[{i}].name": "{pool.name}" '
                f"({NAME_RULE})."
            )
        if pool.name in pool_names:
            raise _invalid(f'Node pool "{pool.name}" is listed more than once.')
        pool_names.add(pool.name)
        if pool.initial_node_count < 0:
            raise _invalid(f"cluster.node_pools[{i}].initial_node_count must not be negative.")
    _validate_autoscaling(cluster.autoscaling)


def _validate_autoscaling(autoscaling: Any) -> None:
    seen: set[str] = set()
    for i, limit in enumerate(autoscaling.resource_limits):
        field = f"cluster.autoscaling.resource_limits[{i}]"
        kind = limit.resource_type
        if kind not in ("cpu", "memory") and not GPU_RE.match(kind) and not TPU_RE.match(kind):
            raise _invalid(
                f'Invalid value for field "{field}.resource_type": "{kind}". Expected "cpu", '
                '"memory", a GPU type such as "nvidia-tesla-t4" or a TPU type such as '
                '"tpu-v4-podslice".'
            )
        if kind in seen:
            raise _invalid(f'Resource limits for "{kind}" are set more than once.')
        seen.add(kind)
        if limit.minimum < 0 or limit.maximum < 0:
            raise _invalid(f'Invalid value for field "{field}": limits must not be negative.')
        if limit.minimum > limit.maximum:
            raise _invalid(
                f'Invalid value for field "{field}": minimum ({limit.minimum}) is greater than '
                f'maximum ({limit.maximum}) for resource "{kind}".'
            )
    if autoscaling.enable_node_autoprovisioning:
        maxima = {limit.resource_type: limit.maximum for limit in autoscaling.resource_limits}
        if maxima.get("cpu", 0) <= 0 or maxima.get("memory", 0) <= 0:
            raise _invalid(
                "Node autoprovisioning needs a maximum resource limit for both cpu and memory."
            )


def _check_quota(autoscaling: Any, quota: dict[str, int], location: str) -> None:
    # GKE itself only meets quota when it scales up; refusing early keeps the failure testable.
    for limit in autoscaling.resource_limits:
        allowed = quota.get(limit.resource_type)
        if allowed is not None and limit.maximum > allowed:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Insufficient quota to satisfy request: resource "{limit.resource_type}": '
                f"autoprovisioning maximum {limit.maximum} exceeds the project quota of "
                f"{allowed} in {location}.",
            )


# --------------------------------------------------------------------------- the emulator


class GkeEmulator(test_pki.GoogleService):
    """The ClusterManager service on 127.0.0.1:`port` (0 = a free port). See the module docs."""

    def __init__(
        self,
        op_seconds: float = 0.2,
        quota: dict[str, int] | None = None,
        latency: float = 0.0,
        *,
        port: int = 0,
        error_rate: float = 0.0,
        methods_with_errors: set[str] | None = None,
        seed: int = 0,
        max_rpc_threads: int = 16,
        kube_port: int | None = None,
    ):
        self.port = port
        # Where new clusters' control plane answers: a K8sEmulator(tls=True) on this port
        # (its CA is the test CA), so the Kubernetes API of a cluster made here is reachable.
        self.kube_port = kube_port
        self.max_rpc_threads = max_rpc_threads
        # Knobs: plain attributes (assignment is atomic), read once per RPC.
        self.op_seconds = op_seconds
        self.quota = dict(quota) if quota else {}
        self.latency = latency
        self.error_rate = error_rate
        self.methods_with_errors = set(methods_with_errors) if methods_with_errors else None

        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._ids = random.Random(seed + 1)
        self._clusters: dict[str, Any] = {}  # full path -> ClusterPb, in create order
        self._ops: dict[str, _Op] = {}  # operation id -> _Op, in start order
        self._busy: dict[str, str] = {}  # cluster path -> id of its running operation
        self._calls: collections.Counter[str] = collections.Counter()
        self._held = False
        self._server: grpc.Server | None = None
        test_pki.GoogleService.__init__(self, AUDIENCES)

    # ----------------------------------------------------------------- lifecycle

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client_env(self, key_path: str | Path, compute: ComputeQuotaEmulator | None = None):
        """What a process needs to reach this emulator (and `compute`) as caliban reaches GKE."""
        env = {
            "CALIBAN_GKE_ENDPOINT": self.endpoint,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(self.ca_file),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_path),
        }
        if compute is not None:
            env.update(CALIBAN_COMPUTE_ENDPOINT=compute.url, REQUESTS_CA_BUNDLE=str(self.ca_file))
        return env

    def start(self) -> GkeEmulator:
        if self._server is not None:
            return self
        handlers = {
            "CreateCluster": (self._create, _CreatePb, OperationPb),
            "GetCluster": (self._get, _GetPb, ClusterPb),
            "ListClusters": (self._list, _ListPb, _ListRespPb),
            "DeleteCluster": (self._delete, _DeletePb, OperationPb),
            "GetOperation": (self._get_operation, _GetOpPb, OperationPb),
            "ListOperations": (self._list_operations, _ListOpsPb, _ListOpsRespPb),
            "ListNodePools": (self._list_node_pools, _ListPoolsPb, _ListPoolsRespPb),
        }
        generic = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                method: grpc.unary_unary_rpc_method_handler(
                    self._with_faults(method, fn),
                    request_deserializer=request.FromString,
                    response_serializer=response.SerializeToString,
                )
                for method, (fn, request, response) in handlers.items()
            },
        )
        # so_reuseport off: a second emulator on an explicit port must fail, not share it.
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.max_rpc_threads, thread_name_prefix="gke-rpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers((generic,))
        tls = grpc.ssl_server_credentials([(self._tls.server_key, self._tls.server_cert)])
        bound = server.add_secure_port(f"127.0.0.1:{self.port}", tls)
        if bound == 0:
            raise RuntimeError(f"gke emulator: cannot listen on 127.0.0.1:{self.port}")
        self.port = bound
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    def __enter__(self) -> GkeEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- faults

    def _with_faults(self, method: str, fn):
        def handler(request, context):
            denied = self._keys.refusal(context.invocation_metadata())
            with self._lock:
                self._calls[method] += 1
                fail = not denied and self._draw_fault(method)
            if self.latency > 0:
                time.sleep(self.latency)
            if denied is not None:  # before any work, as Google does
                context.abort(grpc.StatusCode.UNAUTHENTICATED, denied)
            if fail:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"injected UNAVAILABLE on {method}")
            try:
                with self._lock:
                    self._advance()
                    return fn(request)
            except _Abort as err:
                context.abort(err.code, err.message)

        return handler

    def _draw_fault(self, method: str) -> bool:
        """Under the lock."""
        if self.methods_with_errors is not None and method not in self.methods_with_errors:
            return False
        return self.error_rate > 0 and self._rng.random() < self.error_rate

    def hold(self, on: bool = True) -> None:
        """Keep every operation RUNNING (clusters PROVISIONING/STOPPING) until hold(False)."""
        with self._lock:
            self._held = on

    # ----------------------------------------------------------------- operations

    def _advance(self) -> None:
        """Finish every operation that is due. Under the lock; runs before each RPC, so no
        timer thread is needed."""
        if self._held:
            return
        now = time.monotonic()
        for op_id in list(self._busy.values()):
            if now >= self._ops[op_id].due:
                self._finish(self._ops[op_id])

    def _finish(self, op: _Op) -> None:
        proto = op.proto
        proto.status = OpStatus.DONE
        proto.end_time = _timestamp()
        proto.progress.status = OpStatus.DONE
        del self._busy[op.cluster]
        cluster = self._clusters.get(op.cluster)
        if cluster is None:
            return
        if proto.operation_type == OpType.DELETE_CLUSTER:
            del self._clusters[op.cluster]
            return
        cluster.status = ClusterStatus.RUNNING
        cluster.status_message = ""
        for pool in cluster.node_pools:
            pool.status = PoolStatus.RUNNING
        zones = len(cluster.locations) or 1
        cluster.current_node_count = sum(
            pool.initial_node_count * (len(pool.locations) or zones) for pool in cluster.node_pools
        )

    def _start_op(self, kind: int, project: str, location: str, path: str) -> Any:
        """Record a RUNNING operation on cluster `path` and return a copy. Under the lock."""
        op_id = f"operation-{time.time_ns() // 1_000_000}-{self._ids.getrandbits(32):08x}"
        proto = OperationPb(
            name=op_id,
            zone=location,
            location=location,
            operation_type=kind,
            status=OpStatus.RUNNING,
            self_link=f"{API}/projects/{project}/locations/{location}/operations/{op_id}",
            target_link=f"{API}/{path}",
            start_time=_timestamp(),
        )
        proto.progress.status = OpStatus.RUNNING
        self._ops[op_id] = _Op(proto, project, path, time.monotonic() + self.op_seconds)
        self._busy[path] = op_id
        return _copy(proto, OperationPb)

    def _refuse_if_busy(self, path: str, cluster_id: str) -> None:
        op_id = self._busy.get(path)
        if op_id is None:
            return
        doing = {OpType.CREATE_CLUSTER: "creating", OpType.DELETE_CLUSTER: "deleting"}
        verb = doing.get(self._ops[op_id].proto.operation_type, "updating")
        raise _Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"Operation {op_id} is currently {verb} cluster {cluster_id}. "
            "Please wait and try again once it is done.",
        )

    # ----------------------------------------------------------------- RPCs (under the lock)

    def _create(self, request) -> Any:
        project, location = _location_path(
            request.parent, request.project_id, request.zone, "parent"
        )
        _check_location(location)
        if not request.HasField("cluster"):
            raise _invalid("cluster must be set")
        _validate_cluster(request.cluster, location)
        path = f"projects/{project}/locations/{location}/clusters/{request.cluster.name}"
        if path in self._clusters:
            raise _Abort(grpc.StatusCode.ALREADY_EXISTS, f"Already exists: {path}.")
        _check_quota(request.cluster.autoscaling, self.quota, location)
        self._clusters[path] = self._new_cluster(request.cluster, project, location, path)
        return self._start_op(OpType.CREATE_CLUSTER, project, location, path)

    def _new_cluster(self, requested: Any, project: str, location: str, path: str) -> Any:
        cluster = _copy(requested, ClusterPb)
        if not cluster.HasField("release_channel"):
            cluster.release_channel.channel = Channel.REGULAR  # GKE enrolls new clusters here
        version = requested.initial_cluster_version
        if not FULL_VERSION_RE.match(version):  # "", "latest", "1.30" ...: the channel's pick
            version = CHANNEL_VERSIONS[cluster.release_channel.channel]
        if not cluster.locations:
            zonal = ZONE_RE.match(location)
            cluster.locations[:] = (
                [location] if zonal else [f"{location}-{z}" for z in REGION_ZONES]
            )
        serial = len(self._ops) + 1
        self_link = f"{API}/{path}"
        cluster.id = f"{self._ids.getrandbits(128):032x}"
        cluster.self_link = self_link
        cluster.zone = location
        cluster.location = location
        cluster.endpoint = f"34.118.{serial // 250 % 250}.{serial % 250 + 1}"
        if self.kube_port is not None:
            cluster.endpoint = f"127.0.0.1:{self.kube_port}"
        cluster.current_master_version = version
        cluster.current_node_version = version
        cluster.status = ClusterStatus.PROVISIONING
        cluster.create_time = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        cluster.network = cluster.network or "default"
        cluster.subnetwork = cluster.subnetwork or "default"
        cluster.logging_service = cluster.logging_service or "logging.googleapis.com/kubernetes"
        cluster.monitoring_service = (
            cluster.monitoring_service or "monitoring.googleapis.com/kubernetes"
        )
        cluster.cluster_ipv4_cidr = cluster.cluster_ipv4_cidr or f"10.{serial % 200}.0.0/14"
        cluster.master_auth.cluster_ca_certificate = (
            FAKE_CA if self.kube_port is None else base64.b64encode(self.ca_pem)
        ).decode()
        cluster.current_node_count = 0
        if not cluster.node_pools:
            pool = cluster.node_pools.add(name=DEFAULT_POOL)
            pool.initial_node_count = cluster.initial_node_count
            pool.config.CopyFrom(cluster.node_config)
            cluster.ClearField("initial_node_count")  # GKE moves it into the default pool
        for pool in cluster.node_pools:
            pool.config.machine_type = pool.config.machine_type or DEFAULT_MACHINE_TYPE
            pool.config.disk_size_gb = pool.config.disk_size_gb or DEFAULT_DISK_GB
            pool.config.image_type = pool.config.image_type or "COS_CONTAINERD"
            pool.version = version
            pool.status = PoolStatus.PROVISIONING
            pool.self_link = f"{self_link}/nodePools/{pool.name}"
        return cluster

    def _get(self, request) -> Any:
        project, location, cluster_id = _cluster_path(request)
        return _copy(self._lookup(project, location, cluster_id), ClusterPb)

    def _list(self, request) -> Any:
        project, location = _location_path(
            request.parent, request.project_id, request.zone, "parent"
        )
        if location != "-":
            _check_location(location)
        response = _ListRespPb()
        for path, cluster in self._clusters.items():
            if path.startswith(f"projects/{project}/") and location in ("-", cluster.location):
                response.clusters.add().CopyFrom(cluster)
        return response

    def _delete(self, request) -> Any:
        project, location, cluster_id = _cluster_path(request)
        cluster = self._lookup(project, location, cluster_id)
        path = f"projects/{project}/locations/{location}/clusters/{cluster_id}"
        self._refuse_if_busy(path, cluster_id)
        cluster.status = ClusterStatus.STOPPING
        for pool in cluster.node_pools:
            pool.status = PoolStatus.STOPPING
        return self._start_op(OpType.DELETE_CLUSTER, project, location, path)

    def _get_operation(self, request) -> Any:
        if request.name:
            match = OPERATION_PATH_RE.match(request.name)
            if not match:
                raise _invalid(
                    f"name must be projects/P/locations/L/operations/O, got {request.name!r}"
                )
            project, location, op_id = match[1], match[2], match[3]
        elif request.project_id and request.zone and request.operation_id:
            project, location, op_id = request.project_id, request.zone, request.operation_id
        else:
            raise _invalid("name (or the legacy project_id, zone and operation_id) must be set")
        op = self._ops.get(op_id)
        if op is None or op.project != project or op.proto.location != location:
            raise _not_found(f"projects/{project}/locations/{location}/operations/{op_id}")
        return _copy(op.proto, OperationPb)

    def _list_operations(self, request) -> Any:
        project, location = _location_path(
            request.parent, request.project_id, request.zone, "parent"
        )
        response = _ListOpsRespPb()
        for op in self._ops.values():
            if op.project == project and location in ("-", op.proto.location):
                response.operations.add().CopyFrom(op.proto)
        return response

    def _list_node_pools(self, request) -> Any:
        match = CLUSTER_PATH_RE.match(request.parent)
        if not match:
            raise _invalid(
                f"parent must be projects/P/locations/L/clusters/C, got {request.parent!r}"
            )
        project, location, cluster_id = match[1], match[2], match[3]
        response = _ListPoolsRespPb()
        for pool in self._lookup(project, location, cluster_id).node_pools:
            response.node_pools.add().CopyFrom(pool)
        return response

    def _lookup(self, project: str, location: str, cluster_id: str) -> Any:
        path = f"projects/{project}/locations/{location}/clusters/{cluster_id}"
        cluster = self._clusters.get(path)
        if cluster is None:
            raise _not_found(path)
        return cluster

    # ----------------------------------------------------------------- inspection

    def clusters(self) -> list[container_v1.Cluster]:
        """Every stored cluster (deleted ones excluded), in create order."""
        with self._lock:
            self._advance()
            copies = [_copy(cluster, ClusterPb) for cluster in self._clusters.values()]
        return [container_v1.Cluster.wrap(copy) for copy in copies]

    def operations(self) -> list[container_v1.Operation]:
        with self._lock:
            self._advance()
            copies = [_copy(op.proto, OperationPb) for op in self._ops.values()]
        return [container_v1.Operation.wrap(copy) for copy in copies]

    def autoprovision(
        self,
        cluster_id: str,
        pool: str,
        machine_type: str,
        accelerators: dict[str, int] | None = None,
        max_nodes: int = 1000,
    ) -> None:
        """Add a node pool as node autoprovisioning does when a pod asks for what the
        cluster's pools lack: `nap-` named, autoscaled from zero."""
        with self._lock:
            cluster = next(c for c in self._clusters.values() if c.name == cluster_id)
            added = cluster.node_pools.add(name=pool, version=cluster.current_node_version)
            added.config.machine_type = machine_type
            added.config.disk_size_gb = DEFAULT_DISK_GB
            added.config.image_type = "COS_CONTAINERD"
            for kind, count in (accelerators or {}).items():
                added.config.accelerators.add(accelerator_type=kind, accelerator_count=count)
            added.autoscaling.enabled = True
            added.autoscaling.autoprovisioned = True
            added.autoscaling.max_node_count = max_nodes
            added.status = PoolStatus.RUNNING
            added.self_link = f"{cluster.self_link}/nodePools/{pool}"

    def authenticates(self, authorization: str | None) -> bool:
        """Whether a Kubernetes API server of this GKE accepts the header: as GKE's control
        plane accepts Google credentials, here a self-signed JWT of a trusted key."""
        try:
            self._keys.verify(authorization)
        except test_pki.AuthError:
            return False
        return True

    def calls(self) -> collections.Counter[str]:
        """RPCs received per method name (e.g. "CreateCluster"), injected failures included."""
        with self._lock:
            return collections.Counter(self._calls)


def _copy(message: Any, cls: Any) -> Any:
    out = cls()
    out.CopyFrom(message)
    return out


# --------------------------------------------------------------------------- CLI


class ComputeQuotaEmulator:
    """Compute Engine's regions.get (REST, JSON) on loopback: a region's quotas and zones,
    which `caliban cluster create` reads to set node-autoprovisioning limits.

    `quotas` maps (project, region) or a region alone to {metric: limit}, e.g.
    {"us-central1": {"CPUS": 72, "NVIDIA_T4_GPUS": 4}}. Unknown regions are 404s. HTTPS only
    (the test CA), and a request without a valid service-account JWT is a 401.
    """

    def __init__(
        self,
        quotas: dict,
        zones: tuple[str, ...] = ("a", "b", "c", "f"),
        *,
        trust: test_pki.GoogleService | None = None,
    ):
        self.quotas = quotas
        self.zones = zones
        # The keys it accepts: those of `trust` (the GKE emulator's), or a ring of its own.
        self.service = trust or test_pki.GoogleService(AUDIENCES)
        self.requests: list[str] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ComputeQuotaEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                emulator.requests.append(self.path)
                found = re.fullmatch(r"/compute/v1/projects/([^/]+)/regions/([^/?]+)", self.path)
                given = self.headers.get_all("Authorization") or []
                denied = emulator.service._keys.refusal([("authorization", v) for v in given])
                body, code = emulator._region(*found.groups()) if found else (None, 404)
                if denied is not None:
                    body, code = {"error": {"code": 401, "message": denied}}, 401
                elif body is None:
                    body = {"error": {"code": 404, "message": f"not found: {self.path}"}}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chain = test_pki.scratch_dir() / "compute-server.pem"
        chain.write_bytes(self.service._tls.server_cert + self.service._tls.server_key)
        tls.load_cert_chain(chain)
        self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _region(self, project: str, region: str) -> tuple[dict | None, int]:
        quotas = self.quotas.get((project, region), self.quotas.get(region))
        if quotas is None:
            return None, 404
        base = f"https://www.googleapis.com/compute/v1/projects/{project}"
        return {
            "kind": "compute#region",
            "name": region,
            "status": "UP",
            "zones": [f"{base}/zones/{region}-{z}" for z in self.zones],
            "quotas": [{"metric": m, "limit": float(n), "usage": 0.0} for m, n in quotas.items()],
            "selfLink": f"{base}/regions/{region}",
        }, 200

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ComputeQuotaEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _quota_entry(text: str) -> tuple[str, int]:
    kind, sep, amount = text.partition("=")
    if not sep or not kind:
        raise argparse.ArgumentTypeError(f"expected TYPE=N, got {text!r}")
    try:
        return kind, int(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer after '=', got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.gke_emulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--op-seconds", type=float, default=0.2, help="operation duration")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every RPC")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction UNAVAILABLE")
    parser.add_argument(
        "--quota",
        type=_quota_entry,
        action="append",
        default=[],
        metavar="TYPE=N",
        help="resource limit ceiling, e.g. nvidia-tesla-t4=8 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    emulator = GkeEmulator(
        args.op_seconds,
        dict(args.quota),
        args.latency,
        port=args.port,
        error_rate=args.error_rate,
        seed=args.seed,
    )
    with emulator:
        # The endpoint, then the environment a client needs, as NAME=value lines for a shell.
        env = emulator.client_env(emulator.new_key())
        lines = [emulator.endpoint, *(f"{name}={shlex.quote(v)}" for name, v in env.items())]
        print("\n".join(lines), flush=True)
        while not done.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
