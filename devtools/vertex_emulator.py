"""A Vertex AI JobService emulator (CustomJob RPCs) that speaks the real gRPC wire protocol.

Like Vertex it serves TLS only (devtools.test_pki's CA signs its certificate) and refuses with
UNAUTHENTICATED any RPC without a self-signed JWT from a service-account key it trusts: what the
real client sends, offline, given a key file. So clients take Vertex's code path; only the
endpoint, the trusted roots and the key differ:

    with VertexEmulator(run_containers=False) as emu:
        os.environ.update(emu.client_env(emu.new_key()))  # see the note on roots below
        credentials, _ = google.auth.default()  # the key, from $GOOGLE_APPLICATION_CREDENTIALS
        options = {"api_endpoint": emu.endpoint}
        client = JobServiceClient(credentials=credentials, client_options=options)

gRPC reads $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH once per process, at the first TLS handshake that
uses the default roots (not when a channel is made); later changes are ignored. A process that
may have connected before passes the CA itself: `JobServiceGrpcTransport(host=emu.endpoint,
credentials=..., ssl_channel_credentials=grpc.ssl_channel_credentials(emu.ca_pem))`.

Jobs either run as real containers on the local dockerd (`run_containers=True`) or walk
QUEUED -> PENDING -> RUNNING -> SUCCEEDED on a timer (`run_containers=False`). Latency, 429/503
errors (including "job created but the response was lost") and server crashes can be injected
while it runs, and every create is counted per job key so tests can assert "no duplicates".

Vertex's per-minute request quotas (devtools.vertex_quota) are off unless set: `quota_submit`
meters CreateCustomJob, `quota_manage` Get/List/Cancel/Delete, each per project and region over a
sliding 60 s window of `clock` (time.monotonic unless a test swaps it); a call over budget gets
RESOURCE_EXHAUSTED as from Vertex. `preempt(job)` ends a RUNNING job as a Spot VM preemption does.

A job's containers see the `buckets` folder at /gcs (read-write), as Vertex mounts the project's
buckets with Cloud Storage FUSE; a job with job_spec.base_output_directory (gs:// only, as
Vertex checks) gets AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR under it.

    python -m devtools.vertex_emulator [--port N] [--latency S] [--error-rate F] [--simulate]
        [--quota-submit 60/min] [--quota-manage 600/min] [--buckets DIR]
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import queue
import random
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, empty_pb2

from devtools import test_pki, vertex_quota
from devtools.bucket_folders import open_bucket, open_folder

SERVICE = "google.cloud.aiplatform.v1.JobService"
KEY_LABEL = "caliban_job_key"
CONTAINER_JOB_LABEL = "caliban-emulator.job"
CONTAINER_PORT_LABEL = "caliban-emulator.port"
PROJECT = "emu-project"  # the project of the keys new_key() mints
# A self-signed JWT made for an audience rather than scopes names the service's default host.
AUDIENCES = ("https://aiplatform.googleapis.com/",)

JobState = aiplatform_v1.JobState
QUEUED = JobState.JOB_STATE_QUEUED
PENDING = JobState.JOB_STATE_PENDING
RUNNING = JobState.JOB_STATE_RUNNING
SUCCEEDED = JobState.JOB_STATE_SUCCEEDED
FAILED = JobState.JOB_STATE_FAILED
CANCELLING = JobState.JOB_STATE_CANCELLING
CANCELLED = JobState.JOB_STATE_CANCELLED
TERMINAL = frozenset(
    {
        SUCCEEDED,
        FAILED,
        CANCELLED,
        JobState.JOB_STATE_EXPIRED,
        JobState.JOB_STATE_PARTIALLY_SUCCEEDED,
    }
)

# Raw protobuf classes: faster than proto-plus and cheap to copy under the lock.
CustomJobPb = aiplatform_v1.CustomJob.pb()
_CreatePb = aiplatform_v1.CreateCustomJobRequest.pb()
_GetPb = aiplatform_v1.GetCustomJobRequest.pb()
_ListPb = aiplatform_v1.ListCustomJobsRequest.pb()
_ListRespPb = aiplatform_v1.ListCustomJobsResponse.pb()
_CancelPb = aiplatform_v1.CancelCustomJobRequest.pb()
_DeletePb = aiplatform_v1.DeleteCustomJobRequest.pb()
_DeleteMetaPb = aiplatform_v1.DeleteOperationMetadata.pb()

PARENT_RE = re.compile(r"^projects/[^/]+/locations/[^/]+$")
NAME_RE = re.compile(r"^projects/[^/]+/locations/[^/]+/customJobs/[^/]+$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
MAX_LABELS = 64
MAX_DISPLAY_NAME = 128
# What Vertex AI training takes for TPUs (its "Training with TPU VMs" page): TPU accelerator
# type -> {machine type: the one accelerator_count it takes}. The service's own table, kept
# apart from caliban's catalog so that the two check each other.
TPU_MACHINES = {
    "TPU_V2": {"cloud-tpu": 8},
    "TPU_V3": {"cloud-tpu": 8},
    "TPU_V4_POD": {"ct4p-hightpu-4t": 4},
    "TPU_V5_LITEPOD": {"ct5lp-hightpu-1t": 1, "ct5lp-hightpu-4t": 4, "ct5lp-hightpu-8t": 8},
}
RETIRED_ACCELERATORS = {"NVIDIA_TESLA_K80": "NVIDIA_TESLA_T4"}
# Where Vertex mounts the project's buckets in a training container (Cloud Storage FUSE), and
# what it tells the container about job_spec.base_output_directory (CustomJobSpec's docs).
GCS_MOUNT = "/gcs"
OUTPUT_ENV_SUFFIXES = {
    "AIP_MODEL_DIR": "model/",
    "AIP_CHECKPOINT_DIR": "checkpoints/",
    "AIP_TENSORBOARD_LOG_DIR": "logs/",
}
GCS_URI_RE = re.compile(r"^gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?$")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

AND_RE = re.compile(r"\s+(?:AND|and)\s+")
OR_RE = re.compile(r"\s+(?:OR|or)\s+")
LABEL_TERM_RE = re.compile(r'^labels\.([a-z][a-z0-9_-]*)\s*=\s*(?:"([^"]*)"|([^\s"()]*))$')
STATE_TERM_RE = re.compile(r"^state\s*(!=|=)\s*(JOB_STATE_[A-Z_]+)$")

# google.rpc codes put in CustomJob.error, as Vertex reports them.
CODE_USER_ERROR = 3  # a replica exited non-zero, or its image could not be pulled
CODE_DEADLINE = 4  # scheduling.timeout exceeded
CODE_CANCELLED = 1
CODE_UNAVAILABLE = 14  # infrastructure: the VM was preempted or lost; retriable
REPLICA = "workerpool0-0"
PREEMPTED = (
    f"The replica {REPLICA} was preempted. Termination reason: Spot VM preemption (Compute "
    "Engine reclaimed the VM). Vertex AI did not restart the job; submit it again to retry."
)
LOGS_HINT = (
    "To find out more about why your job exited please check the logs: "
    "https://console.cloud.google.com/logs/viewer?project={project}"
    "&resource=ml_job%2Fjob_id%2F{job_id}&advancedFilter=resource.type%3D%22ml_job%22%0A"
    "resource.labels.job_id%3D%22{job_id}%22"
)


class _Invalid(Exception):
    """A request Vertex would refuse with INVALID_ARGUMENT."""


class _Abort(Exception):
    """Answer the RPC with this status code instead of a response."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Job:
    proto: Any  # CustomJobPb; mutated only under the emulator lock
    seq: int  # create order; page tokens point into it
    key: str | None
    entered: float  # monotonic time of the last state change (paces the simulation)
    container: Any = None
    launching: bool = False  # a worker is creating its container right now


def _state_name(state: int) -> str:
    return JobState(state).name


def _parse_state(name: str) -> JobState:
    try:
        return JobState[name]
    except KeyError:
        raise _Invalid(f"unknown job state {name!r}") from None


# --------------------------------------------------------------------------- validation


def _validate_create(parent: str, job: Any) -> None:
    if not PARENT_RE.match(parent):
        raise _Invalid(f"parent must be projects/P/locations/L, got {parent!r}")
    if not job.display_name:
        raise _Invalid("custom_job.display_name is required")
    if len(job.display_name) > MAX_DISPLAY_NAME:
        raise _Invalid(f"custom_job.display_name is longer than {MAX_DISPLAY_NAME} characters")
    pools = job.job_spec.worker_pool_specs
    if not pools:
        raise _Invalid("custom_job.job_spec.worker_pool_specs needs at least one worker pool")
    for i, pool in enumerate(pools):
        if i > 0 and pool.ByteSize() == 0:
            continue  # Vertex allows empty placeholder pools after the first
        if not pool.machine_spec.machine_type:
            raise _Invalid(f"worker_pool_specs[{i}].machine_spec.machine_type is required")
        if not pool.container_spec.image_uri:
            raise _Invalid(f"worker_pool_specs[{i}].container_spec.image_uri is required")
        _validate_machine(f"worker_pool_specs[{i}].machine_spec", pool.machine_spec)
    base = job.job_spec.base_output_directory.output_uri_prefix
    if job.job_spec.HasField("base_output_directory") and not GCS_URI_RE.match(base):
        raise _Invalid(
            "custom_job.job_spec.base_output_directory.output_uri_prefix must be a Cloud Storage "
            f"URI starting with gs:// (gs://BUCKET/PATH), got {base!r}"
        )
    if len(job.labels) > MAX_LABELS:
        raise _Invalid(f"at most {MAX_LABELS} labels are allowed, got {len(job.labels)}")
    for key, value in job.labels.items():
        if not LABEL_KEY_RE.match(key):
            raise _Invalid(f"invalid label key {key!r}: must match {LABEL_KEY_RE.pattern}")
        if not LABEL_VALUE_RE.match(value):
            raise _Invalid(
                f"invalid value {value!r} for label {key!r}: must match {LABEL_VALUE_RE.pattern}"
            )


def _validate_machine(where: str, spec: Any) -> None:
    """Accelerator rules Vertex applies at create: counts go with a type, K80 is gone, a TPU
    runs on its host machine type with that host's chip count, and a TPU host needs its TPU."""
    machine = spec.machine_type
    kind = aiplatform_v1.AcceleratorType(spec.accelerator_type).name
    count = spec.accelerator_count
    typed = kind != "ACCELERATOR_TYPE_UNSPECIFIED"
    if count < 0 or (count > 0) != typed:
        raise _Invalid(f"{where}: accelerator_count {count} does not go with {kind}")
    if kind in RETIRED_ACCELERATORS:
        raise _Invalid(
            f"{where}: {kind} is no longer supported for training; use"
            f" {RETIRED_ACCELERATORS[kind]} or another GPU"
        )
    hosts = TPU_MACHINES.get(kind)
    if hosts is not None and hosts.get(machine) != count:
        offered = ", ".join(f"{m} with {n}" for m, n in hosts.items())
        raise _Invalid(f"{where}: {kind} runs on {offered}; got {machine} with {count}")
    if hosts is None and any(machine in by_type for by_type in TPU_MACHINES.values()):
        raise _Invalid(f"{where}: machine type {machine} needs its TPU accelerator, got {kind}")


def parse_filter(text: str):
    """A predicate on CustomJobPb for the subset of Vertex's list filter we use. Raises _Invalid."""
    checks = [_parse_term(term.strip()) for term in AND_RE.split(text.strip())] if text else []
    return lambda job: all(check(job) for check in checks)


def _parse_term(term: str):
    if term.startswith("(") and term.endswith(")"):
        options = [_parse_state_term(part.strip()) for part in OR_RE.split(term[1:-1].strip())]
        return lambda job: any(option(job) for option in options)
    if match := LABEL_TERM_RE.match(term):
        key, value = match[1], match[2] if match[2] is not None else match[3]
        return lambda job: key in job.labels and job.labels[key] == value
    return _parse_state_term(term)


def _parse_state_term(term: str):
    match = STATE_TERM_RE.match(term)
    if not match:
        raise _Invalid(f"unsupported filter term {term!r}")
    state = _parse_state(match[2])
    if match[1] == "=":
        return lambda job: job.state == state
    return lambda job: job.state != state


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        kind, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind == "after":
            return int(seq)
    except ValueError:
        pass
    raise _Invalid(f"invalid page_token {token!r}")


# --------------------------------------------------------------------------- the emulator


class VertexEmulator(test_pki.GoogleService):
    """The JobService on 127.0.0.1:`port` (0 = a free port). See the module docstring."""

    project = PROJECT

    def __init__(
        self,
        port: int = 0,
        *,
        run_containers: bool = False,
        workers: int = 4,
        sim_step: float = 0.05,
        latency: float = 0.0,
        error_rate: float = 0.0,
        lost_response_rate: float = 0.5,
        methods_with_errors: set[str] | None = None,
        seed: int = 0,
        key_label: str = KEY_LABEL,
        max_rpc_threads: int = 64,
        quota_submit: float | None = None,
        quota_manage: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        buckets: str | Path | None = None,
    ):
        self.port = port
        # The folder of buckets (BUCKET/object), mounted at /gcs in every container as Vertex
        # mounts buckets; devtools.storage_emulator serves the same folder as Cloud Storage.
        self.buckets = Path(buckets) if buckets is not None else None
        self.run_containers = run_containers
        self.workers = workers
        self.key_label = key_label
        self.max_rpc_threads = max_rpc_threads
        # Fault knobs: plain attributes (assignment is atomic), read once per RPC.
        self.sim_step = sim_step
        self.latency = latency
        self.error_rate = error_rate
        self.lost_response_rate = lost_response_rate
        self.methods_with_errors = set(methods_with_errors) if methods_with_errors else None

        self.clock = clock  # the quota windows' time source; tests may swap it
        self._quotas = vertex_quota.Quotas(submit=quota_submit, manage=quota_manage)

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every job state change
        self._rng = random.Random(seed)
        self._next_id = random.Random(seed + 1).randrange(10**17, 9 * 10**17) * 10
        self._seq = 0
        self._jobs: dict[str, _Job] = {}  # insertion order = create order
        self._creates_by_key: collections.Counter[str] = collections.Counter()
        self._create_times: list[float] = []
        self._calls: collections.Counter[str] = collections.Counter()
        self._outcomes: dict[str, JobState] = {}
        self._held = False
        self._active: set[str] = set()  # simulated jobs not yet terminal

        self._server: grpc.Server | None = None
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._docker = None

        # The process's test CA (see test_pki.shared_tls), so restart() serves what clients
        # trust and one roots file covers every emulator of a process.
        test_pki.GoogleService.__init__(self, AUDIENCES)

    # ----------------------------------------------------------------- lifecycle

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- credentials

    def client_env(self, key_path: str | Path) -> dict[str, str]:
        """What a process needs to reach this emulator as caliban reaches Vertex."""
        return {
            "CALIBAN_VERTEX_ENDPOINT": self.endpoint,
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(self.ca_file),
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_path),
        }

    def start(self) -> VertexEmulator:
        self._stopped.clear()
        if self.run_containers:
            import docker

            self._docker = docker.from_env(timeout=600)
            for i in range(self.workers):
                self._spawn(self._worker, f"vertex-emu-worker-{i}")
        else:
            self._spawn(self._simulate, "vertex-emu-sim")
        self._serve()
        return self

    def stop(self) -> None:
        """Stop serving, stop the job threads, remove every container this port started."""
        self._stopped.set()
        if self._server is not None:
            self._server.stop(0)
            self._server = None
        for _ in self._threads:
            self._queue.put(None)
        self._remove_containers()  # unblocks workers waiting on a container
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self._docker is not None:
            self._docker.close()
            self._docker = None

    def crash(self) -> None:
        """Drop the gRPC server at once (grace 0); jobs and counters survive."""
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    def restart(self) -> None:
        """Serve again on the same port with the same state."""
        if self._server is None:
            self._serve()

    def __enter__(self) -> VertexEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        handlers = {
            "CreateCustomJob": (self._create, _CreatePb.FromString, CustomJobPb.SerializeToString),
            "GetCustomJob": (self._get, _GetPb.FromString, CustomJobPb.SerializeToString),
            "ListCustomJobs": (self._list, _ListPb.FromString, _ListRespPb.SerializeToString),
            "CancelCustomJob": (
                self._cancel,
                _CancelPb.FromString,
                empty_pb2.Empty.SerializeToString,
            ),
            "DeleteCustomJob": (
                self._delete,
                _DeletePb.FromString,
                operations_pb2.Operation.SerializeToString,
            ),
        }
        generic = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                method: grpc.unary_unary_rpc_method_handler(
                    self._with_faults(method, fn),
                    request_deserializer=deserialize,
                    response_serializer=serialize,
                )
                for method, (fn, deserialize, serialize) in handlers.items()
            },
        )
        # so_reuseport off: a second emulator on an explicit port must fail, not share it.
        server = grpc.server(
            ThreadPoolExecutor(max_workers=self.max_rpc_threads, thread_name_prefix="vertex-rpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        server.add_generic_rpc_handlers((generic,))
        tls = grpc.ssl_server_credentials([(self._tls.server_key, self._tls.server_cert)])
        bound = server.add_secure_port(f"127.0.0.1:{self.port}", tls)
        if bound == 0:
            raise RuntimeError(f"vertex emulator: cannot listen on 127.0.0.1:{self.port}")
        self.port = bound
        server.start()
        self._server = server

    # ----------------------------------------------------------------- auth and fault injection

    def _with_faults(self, method: str, fn):
        """Every RPC: counted, delayed, refused without a valid credential (before any work, as
        Google does) or over its quota, then perhaps failed by an injected fault."""
        kind = vertex_quota.SUBMIT if method == "CreateCustomJob" else vertex_quota.MANAGE
        by_parent = method in ("CreateCustomJob", "ListCustomJobs")

        def handler(request, context):
            denied = self._keys.refusal(context.invocation_metadata())
            over = None
            if denied is None:
                resource = request.parent if by_parent else request.name
                try:
                    self._quotas.admit(kind, method, resource, self.clock())
                except vertex_quota.QuotaExceeded as err:
                    over = err
            with self._lock:
                self._calls[method] += 1
                # Refused calls draw no fault, so the seeded fault sequence stays the same.
                refused = denied is not None or over is not None
                fault, lost = (None, False) if refused else self._draw_fault(method)
            if self.latency > 0:
                time.sleep(self.latency)
            if denied is not None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, denied)
            if over is not None:  # with the details Google sends (ErrorInfo, Help)
                details = over.status.SerializeToString()
                context.set_trailing_metadata((("grpc-status-details-bin", details),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, over.message)
            if fault is not None and not lost:
                context.abort(fault, f"injected {fault.name} on {method}")
            try:
                response = fn(request)
            except _Invalid as err:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
            except _Abort as err:
                context.abort(err.code, err.message)
            if fault is not None:  # the work is done, but the caller never hears of it
                context.abort(fault, f"injected {fault.name} on {method} (response lost)")
            return response

        return handler

    def _draw_fault(self, method: str) -> tuple[grpc.StatusCode | None, bool]:
        """(status code or None, whether the request still takes effect). Under the lock."""
        if self.methods_with_errors is not None and method not in self.methods_with_errors:
            return None, False
        if self._rng.random() >= self.error_rate:
            return None, False
        code = self._rng.choice((grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE))
        lost = method == "CreateCustomJob" and self._rng.random() < self.lost_response_rate
        return code, lost

    # ----------------------------------------------------------------- RPCs

    def _create(self, request) -> Any:
        _validate_create(request.parent, request.custom_job)
        job = CustomJobPb()
        job.CopyFrom(request.custom_job)
        for field in ("name", "state", "create_time", "start_time", "end_time", "error"):
            job.ClearField(field)
        key = job.labels.get(self.key_label)
        with self._lock:
            self._next_id += 1
            self._seq += 1
            job.name = f"{request.parent}/customJobs/{self._next_id}"
            record = _Job(proto=job, seq=self._seq, key=key, entered=time.monotonic())
            job.create_time.GetCurrentTime()
            self._jobs[job.name] = record
            self._set_state(record, QUEUED)
            self._create_times.append(time.monotonic())
            if key is not None:
                self._creates_by_key[key] += 1
            if not self.run_containers:
                self._active.add(job.name)
            response = self._copy(record)
        if self.run_containers:
            self._queue.put(job.name)
        return response

    def _get(self, request) -> Any:
        with self._lock:
            return self._copy(self._lookup(request.name))

    def _list(self, request) -> Any:
        if not PARENT_RE.match(request.parent):
            raise _Invalid(f"parent must be projects/P/locations/L, got {request.parent!r}")
        if request.page_size < 0:
            raise _Invalid("page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_token(request.page_token) if request.page_token else 0
        matches = parse_filter(request.filter)
        prefix = request.parent + "/customJobs/"
        response = _ListRespPb()
        with self._lock:
            last_seq = after
            for record in self._jobs.values():
                if record.seq <= after or not record.proto.name.startswith(prefix):
                    continue
                if not matches(record.proto):
                    continue
                if len(response.custom_jobs) == size:
                    # One more match exists, so there is a next page; it starts after this one.
                    response.next_page_token = _encode_token(last_seq)
                    break
                response.custom_jobs.add().CopyFrom(record.proto)
                last_seq = record.seq
        return response

    def _cancel(self, request) -> Any:
        container = None
        with self._lock:
            record = self._lookup(request.name)
            state = record.proto.state
            if state in TERMINAL:
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"job {request.name} is already {_state_name(state)}",
                )
            if state != CANCELLING:
                self._set_state(record, CANCELLING)
            if record.container is not None:
                container = record.container  # its worker records CANCELLED once it exits
            elif self.run_containers and not record.launching:
                self._set_state(record, CANCELLED)  # nothing runs yet: done at once
            # simulated: the simulation thread finishes CANCELLING after one sim_step
        if container is not None:
            _kill(container)
        return empty_pb2.Empty()

    def _delete(self, request) -> Any:
        with self._lock:
            record = self._lookup(request.name)
            if record.proto.state not in TERMINAL:
                raise _Abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"job {request.name} is {_state_name(record.proto.state)}; "
                    "only a finished job can be deleted",
                )
            del self._jobs[request.name]
            self._active.discard(request.name)
        # The client turns this into an Operation future: `.result()` unpacks `response`
        # as google.protobuf.Empty and `.metadata` as DeleteOperationMetadata.
        op = operations_pb2.Operation(name=f"{request.name}/operations/{time.time_ns()}", done=True)
        op.response.Pack(empty_pb2.Empty())
        meta = any_pb2.Any()
        meta.Pack(_DeleteMetaPb())
        op.metadata.CopyFrom(meta)
        return op

    def _lookup(self, name: str) -> _Job:
        """Under the lock."""
        if not NAME_RE.match(name):
            raise _Invalid(f"invalid custom job name {name!r}")
        record = self._jobs.get(name)
        if record is None:
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"custom job {name} not found")
        return record

    @staticmethod
    def _copy(record: _Job) -> Any:
        out = CustomJobPb()
        out.CopyFrom(record.proto)
        return out

    def _set_state(self, record: _Job, state: JobState, code: int = 0, message: str = "") -> None:
        """Under the lock."""
        job = record.proto
        job.state = state
        job.update_time.GetCurrentTime()
        record.entered = time.monotonic()
        if state == RUNNING and not job.HasField("start_time"):
            job.start_time.GetCurrentTime()
        if message:
            job.error.code = code
            job.error.message = message
        if state in TERMINAL:
            job.end_time.GetCurrentTime()
            self._active.discard(job.name)
        self._changed.notify_all()

    # ----------------------------------------------------------------- simulated jobs

    def _simulate(self) -> None:
        while not self._stopped.wait(max(0.002, min(self.sim_step / 4, 0.05))):
            now = time.monotonic()
            with self._lock:
                for name in list(self._active):
                    record = self._jobs[name]
                    if now - record.entered >= self.sim_step:
                        self._advance(record)

    def _advance(self, record: _Job) -> None:
        """One simulated step. Under the lock."""
        state = record.proto.state
        if state == QUEUED:
            self._set_state(record, PENDING)
        elif state == PENDING:
            self._set_state(record, RUNNING)
        elif state == CANCELLING:
            self._set_state(record, CANCELLED, CODE_CANCELLED, "CANCELED")
        elif state == RUNNING and not self._held:
            outcome = self._outcomes.get(record.proto.name) or self._outcomes.get(record.key or "")
            outcome = outcome or SUCCEEDED
            message = "simulated failure" if outcome == FAILED else ""
            self._set_state(record, outcome, CODE_USER_ERROR, message)

    def set_outcome(self, job_name_or_key: str, state: str) -> None:
        """Simulated mode: how a job (by name or by key label value) ends."""
        outcome = JobState[state]
        if outcome not in TERMINAL:
            raise ValueError(f"{state} is not a terminal state")
        with self._lock:
            self._outcomes[job_name_or_key] = outcome

    def hold(self, on: bool = True) -> None:
        """Simulated mode: keep jobs RUNNING until hold(False)."""
        with self._lock:
            self._held = on

    def finish(self, name: str, state: str) -> None:
        """Force a terminal state now (either mode); a running container is killed."""
        target = JobState[state]
        if target not in TERMINAL:
            raise ValueError(f"{state} is not a terminal state")
        with self._lock:
            record = self._jobs[name]
            message = "forced by VertexEmulator.finish" if target == FAILED else ""
            self._set_state(record, target, CODE_USER_ERROR, message)
            container = record.container
        if container is not None:
            _kill(container)

    def preempt(self, job_name_or_key: str, *, timeout: float = 60.0) -> str:
        """End a job as Vertex ends one whose Spot VM is preempted: its container killed, the job
        FAILED with error code 14 (UNAVAILABLE) and a "was preempted" message. See
        fail_infrastructure for which job, the wait and the errors. Returns the job's name."""
        return self.fail_infrastructure(job_name_or_key, PREEMPTED, timeout=timeout)

    def fail_infrastructure(
        self,
        job_name_or_key: str,
        message: str,
        *,
        code: int = CODE_UNAVAILABLE,
        timeout: float = 60.0,
    ) -> str:
        """Fail a RUNNING job for an infrastructure reason (either mode; a container is killed):
        FAILED with error `code` and `message`, followed by Vertex's pointer to the job's logs.

        The job is named by resource name or by key label value (the newest such job). Waits
        until it is RUNNING; raises LookupError if there is no such job, RuntimeError if it ends
        (or is deleted) first and TimeoutError after `timeout` seconds. Returns its name."""
        with self._changed:
            record = self._find(job_name_or_key)
            if record is None:
                raise LookupError(f"no custom job named or keyed {job_name_or_key!r}")
            name = record.proto.name

            def ready() -> bool:
                state = record.proto.state
                return state == RUNNING or state in TERMINAL or name not in self._jobs

            if not self._changed.wait_for(ready, timeout):
                state = _state_name(record.proto.state)
                raise TimeoutError(f"job {name} is still {state} after {timeout:g} s")
            if name not in self._jobs:
                raise RuntimeError(f"job {name} was deleted before it ran")
            if record.proto.state != RUNNING:
                raise RuntimeError(f"job {name} already ended {_state_name(record.proto.state)}")
            self._set_state(record, FAILED, code, f"{message} {_logs_hint(name)}")
            container = record.container
        if container is not None:
            _kill(container)  # its worker sees the job ended and only removes the container
        return name

    def _find(self, job_name_or_key: str) -> _Job | None:
        """By name, else the newest job with that key label value. Under the lock."""
        record = self._jobs.get(job_name_or_key)
        if record is None:
            for candidate in reversed(self._jobs.values()):
                if candidate.key == job_name_or_key:
                    return candidate
        return record

    def set_quota(self, **limits: float | None) -> None:
        """set_quota(submit=..., manage=...): calls per minute per project and region, None =
        unlimited; a limit not passed stays. Calls in the last 60 s count against a new one."""
        self._quotas.set(**limits)

    # ----------------------------------------------------------------- container jobs

    def _worker(self) -> None:
        while True:
            name = self._queue.get()
            if name is None or self._stopped.is_set():
                return
            try:
                self._run_job(name)
            except Exception as err:  # keep the worker alive; the job shows why it failed
                self._fail(name, CODE_USER_ERROR, f"emulator error: {err!r}")

    def _run_job(self, name: str) -> None:
        with self._lock:
            record = self._jobs.get(name)
            if record is None or record.proto.state != QUEUED:
                return  # cancelled, finished or deleted while queued
            self._set_state(record, PENDING)
            spec = record.proto.job_spec
            pool = spec.worker_pool_specs[0].container_spec
            image, command, args = pool.image_uri, list(pool.command), list(pool.args)
            env = {var.name: var.value for var in pool.env}
            timeout = spec.scheduling.timeout.ToTimedelta().total_seconds() or None
            base = spec.base_output_directory.output_uri_prefix
        env.update(_output_env(base))
        volumes = {}
        if self.buckets is not None:
            _make_writable(self.buckets, base)
            volumes[str(self.buckets.resolve())] = {"bind": GCS_MOUNT, "mode": "rw"}

        try:
            self._ensure_image(image)
        except Exception as err:
            self._fail(name, CODE_USER_ERROR, f"image pull failed for {image}: {err}")
            return

        with self._lock:
            if record.proto.state != PENDING:
                return
            record.launching = True
        try:
            container = self._docker.containers.run(
                image,
                command=args or None,  # Vertex `args` replace the image CMD
                entrypoint=command or None,  # Vertex `command` replaces the ENTRYPOINT
                environment=env,
                volumes=volumes,
                labels={CONTAINER_JOB_LABEL: name, CONTAINER_PORT_LABEL: str(self.port)},
                detach=True,
            )
        except Exception as err:
            with self._lock:
                record.launching = False
            self._fail(name, CODE_USER_ERROR, f"container start failed: {err}")
            return
        with self._lock:
            record.container, record.launching = container, False
            if record.proto.state == PENDING:
                self._set_state(record, RUNNING)
            kill_now = record.proto.state != RUNNING or self._stopped.is_set()
        if kill_now:  # cancelled or finished while the container was being created
            _kill(container)

        exit_code, timed_out = _wait(container, timeout)
        logs = ""
        with contextlib.suppress(Exception):
            logs = container.logs(tail=10).decode(errors="replace").strip()
        with contextlib.suppress(Exception):
            container.remove(force=True)  # before the state flips, so watchers see it gone

        with self._lock:
            record.container = None
            state = record.proto.state
            if state in TERMINAL:
                return  # finish() decided already
            if state == CANCELLING:
                self._set_state(record, CANCELLED, CODE_CANCELLED, "CANCELED")
            elif timed_out:
                self._set_state(
                    record, FAILED, CODE_DEADLINE, f"timeout: killed after {timeout:g} s"
                )
            elif exit_code == 0:
                self._set_state(record, SUCCEEDED)
            else:
                # Vertex's wording, so a client can parse the status; "exit code N" leads.
                message = (
                    f"exit code {exit_code}: The replica {REPLICA} exited with a non-zero "
                    f"status of {exit_code}. Termination reason: Error. "
                    f"{_logs_hint(name)}\nLast log lines:\n{logs}"
                )
                self._set_state(record, FAILED, CODE_USER_ERROR, message)

    def _ensure_image(self, image: str) -> None:
        import docker.errors

        try:
            self._docker.images.get(image)
        except docker.errors.ImageNotFound:
            self._docker.images.pull(image)

    def _fail(self, name: str, code: int, message: str) -> None:
        with self._lock:
            record = self._jobs.get(name)
            if record is None or record.proto.state in TERMINAL:
                return
            if record.proto.state == CANCELLING:
                self._set_state(record, CANCELLED, CODE_CANCELLED, "CANCELED")
            else:
                self._set_state(record, FAILED, code, message)

    def _remove_containers(self) -> None:
        if self._docker is None:
            return
        selector = {"label": f"{CONTAINER_PORT_LABEL}={self.port}"}
        for container in self._docker.containers.list(all=True, filters=selector):
            with contextlib.suppress(Exception):
                container.remove(force=True)

    # ----------------------------------------------------------------- inspection

    def creates_by_key(self) -> dict[str, int]:
        with self._lock:
            return dict(self._creates_by_key)

    def duplicates(self) -> int:
        with self._lock:
            return sum(1 for count in self._creates_by_key.values() if count > 1)

    def jobs(self) -> list[aiplatform_v1.CustomJob]:
        with self._lock:
            copies = [self._copy(record) for record in self._jobs.values()]
        return [aiplatform_v1.CustomJob.wrap(copy) for copy in copies]

    def calls(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._calls)

    def create_times(self) -> list[float]:
        """time.monotonic() of every create that took effect (lost responses included)."""
        with self._lock:
            return list(self._create_times)

    def quotas(self) -> dict[str, float | None]:
        """The limits now: {"submit": per minute or None, "manage": ...}."""
        return self._quotas.limits()

    def refused(self) -> collections.Counter[str]:
        """Calls answered RESOURCE_EXHAUSTED for being over quota, by method (injected faults
        are not counted here)."""
        return self._quotas.refused()

    def accepted_times(self, kind: str) -> list[float]:
        """`clock()` times of the calls the "submit" or "manage" quota let through, in order
        (unlimited or not), e.g. for vertex_quota.busiest_window()."""
        return self._quotas.accepted_times(kind)


def _output_env(base: str) -> dict[str, str]:
    """The AIP_* variables Vertex sets for a job with a base output directory."""
    if not base:
        return {}
    root = base.rstrip("/") + "/"
    return {name: root + suffix for name, suffix in OUTPUT_ENV_SUFFIXES.items()}


def _make_writable(buckets: Path, base: str) -> None:
    """The buckets folder, and the bucket and base output directory a job names, exist and take
    writes from the container's user whatever its uid (devtools.bucket_folders)."""
    open_folder(buckets)
    mode = buckets.stat().st_mode
    if mode & 0o005 != 0o005:  # the mount point /gcs: every uid must get in
        buckets.chmod(mode | 0o755)
    match = GCS_URI_RE.match(base)
    if match:
        parts = [p for p in (match[2] or "").split("/") if p and p not in (".", "..")]
        open_bucket(buckets, match[1], *parts)


def _logs_hint(name: str) -> str:
    project = name.split("/")[1]
    return LOGS_HINT.format(project=project, job_id=name.rsplit("/", 1)[1])


def _kill(container) -> None:
    # SIGKILL, not stop(): a shell as PID 1 ignores SIGTERM and would cost the 10 s grace.
    with contextlib.suppress(Exception):
        container.kill()


def _wait(container, timeout: float | None) -> tuple[int | None, bool]:
    """(exit code, timed out). On timeout the container is killed."""
    import requests

    try:
        return container.wait(timeout=timeout)["StatusCode"], False
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        if timeout is None:
            raise  # no deadline was set, so this is a real engine failure
    _kill(container)
    with contextlib.suppress(Exception):
        container.wait(timeout=30)
    return None, True


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.vertex_emulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every RPC")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of RPCs failed")
    parser.add_argument("--simulate", action="store_true", help="no Docker: jobs on a timer")
    parser.add_argument("--sim-step", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--buckets", help="folder of buckets (BUCKET/object) mounted at /gcs")
    for kind, what in (("submit", "CreateCustomJob"), ("manage", "Get/List/Cancel/Delete")):
        parser.add_argument(
            f"--quota-{kind}",
            type=vertex_quota.rate_arg,
            default=None,
            metavar="N/min|N/s",
            help=f"{what} calls allowed per project and region (default: unlimited)",
        )
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    emulator = VertexEmulator(
        args.port,
        run_containers=not args.simulate,
        sim_step=args.sim_step,
        latency=args.latency,
        error_rate=args.error_rate,
        seed=args.seed,
        quota_submit=args.quota_submit,
        quota_manage=args.quota_manage,
        buckets=args.buckets,
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
