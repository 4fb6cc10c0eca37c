"""A Kubernetes API server emulator (batch/v1 Jobs and their Pods) for tests.

The real `kubernetes` Python client talks to it over plain HTTP, through a kubeconfig it writes:

    with K8sEmulator(run_containers=False) as emu:
        path = emu.write_kubeconfig(tmp_path / "kubeconfig")
        api = kubernetes.config.new_client_from_config(config_file=str(path), context="emulator")
        kubernetes.client.BatchV1Api(api).create_namespaced_job("default", job)

Bodies follow Kubernetes' JSON wire format, errors are `Status` objects, lists page with
`limit`/`continue` and filter with label and field selectors. A Job's pods either run its first
container on the local dockerd (`run_containers=True`) or walk Pending -> Running -> Succeeded
on a timer (`run_containers=False`). A small Job controller honours backoffLimit, completions
(run one pod at a time), activeDeadlineSeconds, ttlSecondsAfterFinished and podFailurePolicy
(devtools.k8s_disruption); `preempt()` and the Eviction API take a running pod away as a cluster
does, with its DisruptionTarget condition. Latency, 429/503
errors, lost create responses and server crashes can be injected while it runs, and every
create is counted per job key (a label) so tests can assert "no duplicates".

Pods mount GKE Cloud Storage FUSE CSI volumes and PersistentVolumeClaims from host folders
(`buckets`, `pvcs`; see devtools.k8s_volumes); other volume kinds are not mounted.

    python -m devtools.k8s_emulator [--port N] [--latency S] [--error-rate F] [--simulate]
        [--buckets DIR] [--pvcs DIR]
"""

from __future__ import annotations

import argparse
import base64
import bisect
import collections
import contextlib
import json
import queue
import random
import re
import shutil
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote

from devtools import k8s_auth, k8s_disruption, k8s_volumes

KEY_LABEL = "caliban.dev/job-key"
# Labels the Job controller puts on a Job's pod template (and so on its pods).
JOB_NAME_LABEL = "job-name"
BATCH_JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
CONTROLLER_UID_LABEL = "controller-uid"
BATCH_CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
# Labels on the docker containers the emulator starts.
CONTAINER_INSTANCE_LABEL = "caliban-k8s-emulator.instance"
CONTAINER_PORT_LABEL = "caliban-k8s-emulator.port"
CONTAINER_POD_LABEL = "caliban-k8s-emulator.pod"  # namespace/name
CONTAINER_POD_UID_LABEL = "caliban-k8s-emulator.pod-uid"
CONTAINER_JOB_LABEL = "caliban-k8s-emulator.job"  # namespace/name

LOCAL_REGISTRIES = ("127.0.0.1:5000/", "localhost:5000/")
NODE_NAME = "emulator-node"
DEFAULT_NAMESPACE = "default"
CONTEXT = "emulator"

VERSION_INFO = {
    "major": "1",
    "minor": "33",
    "emulationMajor": "1",
    "emulationMinor": "33",
    "minCompatibilityMajor": "1",
    "minCompatibilityMinor": "32",
    "gitVersion": "v1.33.0",
    "gitCommit": "60a317eadfcb839692a5551a1d2e6571ff5c9eba",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T13:05:35Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}

ACTIVE = ("Pending", "Running")
TERMINAL = ("Succeeded", "Failed")
RESTART_POLICIES = ("OnFailure", "Never")
PROPAGATION_POLICIES = ("Orphan", "Background", "Foreground")

_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_SUBDOMAIN_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_QUALIFIED_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_SUBDOMAIN_MSG = (
    "prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
    "characters, '-' or '.', and must start and end with an alphanumeric character"
)
_QUALIFIED_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names
_DUMPS = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """Answer the request with a Kubernetes Status body."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.details = details or {}
        self.headers: dict[str, str] = {}

    def body(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def _not_found(resource: str, group: str, name: str) -> ApiError:
    qualified = f"{resource}.{group}" if group else resource
    details = {"name": name, "kind": resource, **({"group": group} if group else {})}
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def _already_exists(resource: str, group: str, name: str) -> ApiError:
    details = {"name": name, "group": group, "kind": resource}
    return ApiError(409, "AlreadyExists", f'{resource}.{group} "{name}" already exists', details)


@dataclass(frozen=True)
class _FieldError:
    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported
    detail: str  # the message without the field

    @classmethod
    def invalid(cls, path: str, value: Any, why: str) -> _FieldError:
        return cls(path, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {why}")

    @classmethod
    def required(cls, path: str, why: str = "") -> _FieldError:
        return cls(path, "FieldValueRequired", "Required value" + (f": {why}" if why else ""))


def _invalid(kind: str, group: str, name: str, errors: list[_FieldError]) -> ApiError:
    parts = [f"{e.field}: {e.detail}" for e in errors]
    joined = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details = {
        "name": name,
        "group": group,
        "kind": kind,
        "causes": [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors],
    }
    return ApiError(422, "Invalid", f'{kind}.{group} "{name}" is invalid: {joined}', details)


# --------------------------------------------------------------------------- validation


def label_key_errors(key: str) -> list[str]:
    """Why `key` is not a valid label (or annotation) key; [] if it is."""
    prefix, slash, name = key.rpartition("/")
    why = []
    if slash and not prefix:
        why.append("prefix part must be non-empty")
    elif prefix:
        if len(prefix) > 253:
            why.append("prefix part must be no more than 253 characters")
        elif not _SUBDOMAIN_RE.match(prefix):
            why.append(_SUBDOMAIN_MSG)
    if not name:
        why.append("name part must be non-empty")
    elif len(name) > 63:
        why.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_RE.match(name):
        why.append(_QUALIFIED_MSG)
    return why


def label_value_errors(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    why = []
    if len(value) > 63:
        why.append("must be no more than 63 characters")
    if not _VALUE_RE.match(value):
        why.append(_VALUE_MSG)
    return why


def name_errors(name: str) -> list[str]:
    """A DNS-1123 label: the Job name doubles as a pod label value, so 63 characters at most."""
    why = []
    if len(name) > 63:
        why.append("must be no more than 63 characters")
    if not _LABEL_RE.match(name):
        why.append(_LABEL_MSG)
    return why


def _as_dict(value: Any, path: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad_request(f"{path}: expected an object, got {type(value).__name__}")
    return value


def _labels_errors(labels: dict, path: str, values: bool = True) -> list[_FieldError]:
    errors = []
    for key, value in labels.items():
        errors += [_FieldError.invalid(path, key, why) for why in label_key_errors(key)]
        if values:
            errors += [_FieldError.invalid(path, value, why) for why in label_value_errors(value)]
        elif not isinstance(value, str):
            errors.append(_FieldError.invalid(f"{path}[{key}]", value, "must be a string"))
    return errors


def _validate_job(obj: dict, name: str) -> list[_FieldError]:
    meta = _as_dict(obj.get("metadata"), "metadata")
    errors = []
    if not name:
        errors.append(_FieldError.required("metadata.name", "name or generateName is required"))
    else:
        errors += [_FieldError.invalid("metadata.name", name, why) for why in name_errors(name)]
    errors += _labels_errors(_as_dict(meta.get("labels"), "metadata.labels"), "metadata.labels")
    annotations = _as_dict(meta.get("annotations"), "metadata.annotations")
    errors += _labels_errors(annotations, "metadata.annotations", values=False)

    spec = _as_dict(obj.get("spec"), "spec")
    for counter, minimum in (
        ("backoffLimit", 0),
        ("completions", 0),
        ("parallelism", 0),
        ("activeDeadlineSeconds", 1),
        ("ttlSecondsAfterFinished", 0),
    ):
        value = spec.get(counter)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            why = "must be greater than or equal to 0" if minimum == 0 else "must be greater than 0"
            errors.append(_FieldError.invalid(f"spec.{counter}", value, why))
    if "template" not in spec:
        errors.append(_FieldError.required("spec.template"))
        return errors
    template = _as_dict(spec.get("template"), "spec.template")
    tmeta = _as_dict(template.get("metadata"), "spec.template.metadata")
    tlabels = _as_dict(tmeta.get("labels"), "spec.template.metadata.labels")
    errors += _labels_errors(tlabels, "spec.template.metadata.labels")
    pod = _as_dict(template.get("spec"), "spec.template.spec")
    containers = pod.get("containers")
    if not containers:
        errors.append(_FieldError.required("spec.template.spec.containers"))
    elif not isinstance(containers, list):
        raise _bad_request("spec.template.spec.containers: expected an array")
    else:
        for i, container in enumerate(containers):
            path = f"spec.template.spec.containers[{i}]"
            container = _as_dict(container, path)
            cname = container.get("name")
            if not cname:
                errors.append(_FieldError.required(f"{path}.name"))
            elif not isinstance(cname, str) or name_errors(cname):
                errors.append(_FieldError.invalid(f"{path}.name", cname, _LABEL_MSG))
            if not container.get("image") or not isinstance(container["image"], str):
                errors.append(_FieldError.required(f"{path}.image"))
    policy = pod.get("restartPolicy") or "Always"  # the Pod default, before Job validation
    if policy not in RESTART_POLICIES:
        errors.append(
            _FieldError(
                "spec.template.spec.restartPolicy",
                "FieldValueNotSupported",
                f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
            )
        )
    errors += [_FieldError(*c) for c in k8s_disruption.policy_errors(spec, label_key_errors)]
    errors += [_FieldError(*c) for c in k8s_volumes.volume_errors(pod)]
    return errors


# --------------------------------------------------------------------------- selectors

_KEY = r"[^\s!=<>(),]+"
_REQ_SET = re.compile(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)\Z")
_REQ_CMP = re.compile(rf"({_KEY})\s*([<>])\s*(-?\d+)\Z")
_REQ_EQ = re.compile(rf"({_KEY})\s*(==|!=|=)\s*([^\s!=<>(),]*)\Z")
_REQ_NOT = re.compile(rf"!\s*({_KEY})\Z")
_REQ_EXISTS = re.compile(rf"({_KEY})\Z")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_label_selector(text: str):
    """A predicate on a labels dict for Kubernetes' label selector syntax. Raises ApiError 400."""
    if not text or not text.strip():
        return lambda labels: True
    checks = [_parse_requirement(part.strip()) for part in _split_top_level(text)]
    if len(checks) == 1:
        return checks[0]
    return lambda labels: all(check(labels) for check in checks)


def _check_key(key: str, requirement: str) -> None:
    if why := label_key_errors(key):
        raise _bad_request(f"unable to parse requirement: {requirement!r}: key {key!r}: {why[0]}")


def _check_value(value: str, requirement: str) -> None:
    if why := label_value_errors(value):
        raise _bad_request(
            f"unable to parse requirement: {requirement!r}: value {value!r}: {why[0]}"
        )


def _parse_requirement(req: str):
    if match := _REQ_SET.match(req):
        key, op = match[1], match[2]
        values = [v.strip() for v in match[3].split(",")]
        if values == [""]:
            raise _bad_request(
                f"unable to parse requirement: {req!r}: for 'in', 'notin' operators, "
                "values set can't be empty"
            )
        _check_key(key, req)
        for value in values:
            _check_value(value, req)
        allowed = frozenset(values)
        if op == "in":
            return lambda labels: key in labels and labels[key] in allowed
        return lambda labels: key not in labels or labels[key] not in allowed
    if match := _REQ_CMP.match(req):
        key, op, bound = match[1], match[2], int(match[3])
        _check_key(key, req)

        def compare(labels):
            try:
                value = int(labels[key])
            except (KeyError, ValueError):
                return False
            return value > bound if op == ">" else value < bound

        return compare
    if match := _REQ_EQ.match(req):
        key, op, value = match[1], match[2], match[3]
        _check_key(key, req)
        _check_value(value, req)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: key in labels and labels[key] == value
    if match := _REQ_NOT.match(req):
        key = match[1]
        _check_key(key, req)
        return lambda labels: key not in labels
    if match := _REQ_EXISTS.match(req):
        key = match[1]
        _check_key(key, req)
        return lambda labels: key in labels
    raise _bad_request(f"unable to parse requirement: {req!r}: unexpected syntax")


def _meta_field(name: str):
    return lambda body: body["metadata"].get(name, "")


JOB_FIELDS = {
    "metadata.name": _meta_field("name"),
    "metadata.namespace": _meta_field("namespace"),
    "status.successful": lambda body: str(body["status"].get("succeeded", 0)),
}
POD_FIELDS = {
    "metadata.name": _meta_field("name"),
    "metadata.namespace": _meta_field("namespace"),
    "status.phase": lambda body: body["status"].get("phase", ""),
    "spec.nodeName": lambda body: body["spec"].get("nodeName", ""),
    "spec.restartPolicy": lambda body: body["spec"].get("restartPolicy", ""),
}


def parse_field_selector(text: str, fields: dict):
    """A predicate on an object body for `field=value`, `field==value`, `field!=value` terms."""
    if not text or not text.strip():
        return lambda body: True
    checks = []
    for term in text.split(","):
        match = re.fullmatch(r"\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*", term)
        if not match:
            raise _bad_request(f"invalid field selector term {term!r}")
        getter = fields.get(match[1])
        if getter is None:
            raise _bad_request(f'field label not supported: "{match[1]}"')
        value, negate = match[3], match[2] == "!="
        checks.append(lambda body, g=getter, v=value, n=negate: (g(body) == v) != n)
    return lambda body: all(check(body) for check in checks)


def _encode_continue(rv: int, last_key: str) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": rv, "start": last_key + "\x00"}
    return base64.urlsafe_b64encode(json.dumps(token).encode()).decode().rstrip("=")


def _decode_continue(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        start = json.loads(raw)["start"]
        if isinstance(start, str):
            return start
    except (ValueError, KeyError, TypeError):
        pass
    raise _bad_request(f"continue key is not valid: {token!r}")


# --------------------------------------------------------------------------- state


@dataclass(eq=False)
class _Obj:
    key: str  # namespace/name
    # Copy-on-write: a body is never mutated once stored, so lists can encode it outside the lock.
    body: dict
    _cache: tuple[dict, str] | None = field(default=None, repr=False)

    def encoded(self, body: dict | None = None) -> str:
        body = self.body if body is None else body
        cached = self._cache
        if cached is not None and cached[0] is body:
            return cached[1]
        text = _DUMPS(body)
        self._cache = (body, text)
        return text


@dataclass(eq=False)
class _JobRec(_Obj):
    uid: str = ""
    job_key: str | None = None
    pods: list[_PodRec] = field(default_factory=list)
    failures: int = 0  # what backoffLimit counts: failed pods, plus restarts with OnFailure
    succeeded: int = 0
    failed: int = 0
    start_ts: str | None = None
    started: float | None = None  # monotonic
    finished: float | None = None  # monotonic
    completion_ts: str | None = None
    conditions: list[dict] = field(default_factory=list)
    deleting: bool = False
    foreground: bool = False
    gone: bool = False


@dataclass(eq=False)
class _PodRec(_Obj):
    uid: str = ""
    job: _JobRec | None = None
    ip: str = ""
    phase: str = "Pending"
    entered: float = 0.0  # monotonic time of the last step (paces the simulation)
    start_ts: str = ""
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    started_ts: str | None = None
    finished_ts: str | None = None
    exit_code: int | None = None
    term_reason: str = ""
    term_message: str = ""
    container_id: str = ""
    image_id: str = ""
    restarts: int = 0
    last_state: dict | None = None
    container: Any = None  # the current (or last) docker container
    prev_container: Any = None
    containers: list = field(default_factory=list)  # every attempt, for removal
    deleting: bool = False
    disruption: dict | None = None  # the DisruptionTarget condition, once taken away


@dataclass
class _Reply:
    code: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    stream: Any = None  # an iterator of bytes, sent chunked
    drop: bool = False  # close the connection without answering


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    params: dict[str, str]
    headers: Any
    raw: bytes
    _json: Any = None

    def json(self) -> Any:
        if self._json is None:
            try:
                self._json = json.loads(self.raw or b"null")
            except ValueError as err:
                raise _bad_request(f"the request body is not valid JSON: {err}") from None
        return self._json


def _json_reply(code: int, obj: Any) -> _Reply:
    return _Reply(code, _DUMPS(obj).encode())


# --------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else every keep-alive request waits 40 ms for a delayed ACK
    server_version = "k8s-emulator"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self.server.connections.discard(self.connection)

    def log_message(self, format, *args) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        # A client certificate that the client CA signed (else the handshake failed).
        peer = isinstance(self.connection, ssl.SSLSocket) and bool(self.connection.getpeercert())
        reply = self.server.emulator._dispatch(self.command, self.path, self.headers, raw, peer)
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.code)
        self.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.stream is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in reply.stream:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(reply.stream, "close", None)
            if close is not None:
                close()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # restart() binds the same port while old sockets sit in TIME_WAIT

    def __init__(self, address, emulator: K8sEmulator):
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        ca = emulator.client_ca
        self.tls = k8s_auth.server_context(ca) if ca is not None else None
        super().__init__(address, _Handler)

    def get_request(self):
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        # The handshake happens in the request's thread, on its first read.
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # skips HTTPServer's reverse DNS lookup
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a dropped connection is routine here
            super().handle_error(request, client_address)


_NS = r"/namespaces/(?P<ns>[^/]+)"
_ROUTES = [
    (method, re.compile(pattern + r"\Z"), verb, resource, handler)
    for method, pattern, verb, resource, handler in [
        ("GET", r"/version", "get", "version", "_get_version"),
        ("GET", r"/(?:healthz|livez|readyz)", "get", "healthz", "_get_healthz"),
        ("GET", r"/api", "get", "discovery", "_get_core_versions"),
        ("GET", r"/api/v1", "get", "discovery", "_get_core_resources"),
        ("GET", r"/apis", "get", "discovery", "_get_groups"),
        ("GET", r"/apis/batch", "get", "discovery", "_get_batch_group"),
        ("GET", r"/apis/batch/v1", "get", "discovery", "_get_batch_resources"),
        ("GET", r"/apis/batch/v1/jobs", "list", "jobs", "_list_jobs"),
        ("GET", rf"/apis/batch/v1{_NS}/jobs", "list", "jobs", "_list_jobs"),
        ("POST", rf"/apis/batch/v1{_NS}/jobs", "create", "jobs", "_create_job"),
        ("DELETE", rf"/apis/batch/v1{_NS}/jobs", "deletecollection", "jobs", "_delete_jobs"),
        ("GET", rf"/apis/batch/v1{_NS}/jobs/(?P<name>[^/]+)", "get", "jobs", "_get_job"),
        ("DELETE", rf"/apis/batch/v1{_NS}/jobs/(?P<name>[^/]+)", "delete", "jobs", "_delete_job"),
        ("PATCH", rf"/apis/batch/v1{_NS}/jobs/(?P<name>[^/]+)", "patch", "jobs", "_patch_job"),
        (
            "GET",
            rf"/apis/batch/v1{_NS}/jobs/(?P<name>[^/]+)/status",
            "get",
            "jobs/status",
            "_get_job",
        ),
        ("GET", r"/api/v1/pods", "list", "pods", "_list_pods"),
        ("GET", rf"/api/v1{_NS}/pods", "list", "pods", "_list_pods"),
        ("DELETE", rf"/api/v1{_NS}/pods", "deletecollection", "pods", "_delete_pods"),
        ("GET", rf"/api/v1{_NS}/pods/(?P<name>[^/]+)", "get", "pods", "_get_pod"),
        ("DELETE", rf"/api/v1{_NS}/pods/(?P<name>[^/]+)", "delete", "pods", "_delete_pod"),
        ("GET", rf"/api/v1{_NS}/pods/(?P<name>[^/]+)/status", "get", "pods/status", "_get_pod"),
        ("GET", rf"/api/v1{_NS}/pods/(?P<name>[^/]+)/log", "get", "pods/log", "_read_log"),
        (
            "POST",
            rf"/api/v1{_NS}/pods/(?P<name>[^/]+)/eviction",
            "create",
            "pods/eviction",
            "_evict_pod",
        ),
    ]
]


# apps/v1 lives in its own module, which uses the helpers above: imported once they exist.
from devtools import k8s_apps  # noqa: E402

_ROUTES += [
    (method, re.compile(pattern + r"\Z"), verb, resource, handler)
    for method, pattern, verb, resource, handler in k8s_apps.ROUTES
]


# --------------------------------------------------------------------------- the emulator


class K8sEmulator(k8s_apps.DaemonSets):
    """A Kubernetes API server on 127.0.0.1:`port` (0 = a free port). See the module docstring."""

    def __init__(
        self,
        port: int = 0,
        *,
        run_containers: bool = False,
        workers: int = 8,
        sim_step: float = 0.05,
        latency: float = 0.0,
        error_rate: float = 0.0,
        lost_response_rate: float = 0.0,
        lost_response_mode: str = "status",
        retry_after: int = 1,
        error_calls: set[str] | None = None,
        seed: int = 0,
        key_label: str = KEY_LABEL,
        token: str = "emulator-token",
        require_auth: bool = False,
        tls: bool = False,
        authenticate: Callable[[str], bool] | None = None,
        buckets: str | Path | None = None,
        pvcs: str | Path | None = None,
    ):
        self.port = port
        # Host folders behind pod volumes (devtools.k8s_volumes): BUCKET/... for GKE's Cloud
        # Storage FUSE CSI volumes, CLAIM/... for PersistentVolumeClaims. None: folders in the
        # emulator's scratch directory, made at start().
        self.buckets = Path(buckets) if buckets is not None else None
        self.pvcs = Path(pvcs) if pvcs is not None else None
        self.run_containers = run_containers
        self.workers = workers
        self.key_label = key_label
        self.token = token
        self.require_auth = require_auth
        # Another accepted Authorization header, as GKE accepts Google's tokens: given the
        # header, True if it names a known caller (GkeEmulator.authenticates).
        self.authenticate = authenticate
        # TLS with the test CA; callers known by token or by a certificate client_ca signed.
        self.tls = tls
        self.client_ca = k8s_auth.ClientCA.new() if tls else None
        # Fault knobs: plain attributes (assignment is atomic), read once per request.
        self.sim_step = sim_step
        self.latency = latency
        self.error_rate = error_rate
        self.lost_response_rate = lost_response_rate
        self.lost_response_mode = lost_response_mode  # "status" (a 503) or "drop" (no answer)
        # The client's urllib3 sleeps this long and retries GETs answered 429/503 by itself.
        self.retry_after = retry_after
        self.error_calls = set(error_calls) if error_calls else None  # e.g. {"create jobs"}
        self.instance = uuid.uuid4().hex[:12]

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified on every pod or Job change
        self._rng = random.Random(seed)
        self._ids = random.Random(seed + 1)
        self._rv = 1000
        self._pod_count = 0
        self._jobs: dict[str, _JobRec] = {}
        self._job_keys: list[str] = []  # sorted, like etcd's key order
        self._pods: dict[str, _PodRec] = {}
        self._pod_keys: list[str] = []
        self._daemonsets: dict[str, _Obj] = {}
        self._daemonset_keys: list[str] = []
        self._creates_by_key: collections.Counter[str] = collections.Counter()
        self._attempts_by_key: collections.Counter[str] = collections.Counter()
        self._calls: collections.Counter[str] = collections.Counter()
        self._durations: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=10_000)
        )
        self._outcomes: dict[str, tuple[str, int]] = {}
        self._held = False
        self._sim_pods: set[_PodRec] = set()
        self._deadline_jobs: set[_JobRec] = set()
        self._ttl_jobs: set[_JobRec] = set()

        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[_PodRec | None] = queue.Queue()
        self._reaper: ThreadPoolExecutor | None = None
        self._docker = None
        self._tmpdir: Path | None = None
        self.kubeconfig: Path | None = None

    # ----------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    url = host

    def start(self) -> K8sEmulator:
        self._stopped.clear()
        if self.buckets is None:
            self.buckets = self._scratch() / "buckets"
        if self.pvcs is None:
            self.pvcs = self._scratch() / "pvcs"
        self._reaper = ThreadPoolExecutor(max_workers=4, thread_name_prefix="k8s-emu-reaper")
        if self.run_containers:
            import docker

            self._docker = docker.from_env(timeout=120)
            for i in range(self.workers):
                self._spawn(self._worker, f"k8s-emu-worker-{i}")
        self._spawn(self._tick, "k8s-emu-controller")
        self._serve()
        return self

    def stop(self) -> None:
        """Stop serving and the job threads; remove every container this emulator started."""
        self._stopped.set()
        self.crash()
        for _ in range(self.workers):
            self._queue.put(None)
        self._remove_containers()  # unblocks workers waiting on a container
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads.clear()
        if self._reaper is not None:
            self._reaper.shutdown(wait=True, cancel_futures=True)
        self._remove_containers()  # anything a worker or reaper created meanwhile
        if self._docker is not None:
            self._docker.close()
            self._docker = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def crash(self) -> None:
        """Stop answering at once: close the listening socket and every open connection.
        Jobs keep running and all state survives; restart() serves it again."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in list(server.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=10)
            self._serve_thread = None

    def restart(self) -> None:
        """Listen again on the same port with the same state."""
        if self._server is None and not self._stopped.is_set():
            self._serve()

    def __enter__(self) -> K8sEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _scratch(self) -> Path:
        if self._tmpdir is None:
            self._tmpdir = Path(tempfile.mkdtemp(prefix="k8s-emulator-"))
        return self._tmpdir

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _serve(self) -> None:
        try:
            server = _Server(("127.0.0.1", self.port), self)
        except OSError as err:
            raise RuntimeError(
                f"k8s emulator: cannot listen on 127.0.0.1:{self.port}: {err}"
            ) from err
        self.port = server.server_address[1]
        self._server = server
        self._serve_thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"k8s-emu-http-{self.port}",
            daemon=True,
        )
        self._serve_thread.start()

    def write_kubeconfig(
        self,
        path: str | Path | None = None,
        *,
        context: str = CONTEXT,
        namespace: str = DEFAULT_NAMESPACE,
        user: dict | None = None,
    ) -> Path:
        """A kubeconfig for this server; a temp file when `path` is None. `user`: the user
        entry (devtools.k8s_auth makes them), by default a bearer token."""
        import yaml

        if path is None:
            path = self._scratch() / "kubeconfig"
        path = Path(path)
        cluster: dict[str, Any] = {"server": self.host}
        if self.tls:
            cluster["certificate-authority-data"] = k8s_auth.ca_data()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": cluster}],
            "users": [{"name": f"{context}-user", "user": user or {"token": self.token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {
                        "cluster": context,
                        "user": f"{context}-user",
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": context,
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig = path
        return path

    def api_client(self):
        """A `kubernetes.client.ApiClient` for this server, without a kubeconfig."""
        from kubernetes import client

        configuration = client.Configuration(host=self.host)
        # Client 36 reads "BearerToken"; older clients read "authorization".
        bearer = f"Bearer {self.token}"
        configuration.api_key = {"BearerToken": bearer, "authorization": bearer}
        return client.ApiClient(configuration)

    # ----------------------------------------------------------------- request handling

    def _dispatch(
        self, method: str, target: str, headers, raw: bytes, peer_verified: bool = False
    ) -> _Reply:
        started = time.perf_counter()
        path, _, qs = target.partition("?")
        path = unquote(path).rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(qs, keep_blank_values=True).items()}
        route, params, allowed = None, {}, False
        for r_method, pattern, verb, resource, handler in _ROUTES:
            match = pattern.match(path)
            if match:
                allowed = True
                if r_method == method:
                    route, params = (verb, resource, handler), match.groupdict()
                    break
        if route is not None and route[0] == "list" and _bool_param(query, "watch"):
            route = ("watch", route[1], "_watch")
        call = f"{route[0]} {route[1]}" if route else f"{method.lower()} unknown"
        request = _Request(method, path, query, params, headers, raw)

        job_key = None
        if call == "create jobs":
            with contextlib.suppress(Exception):
                job_key = request.json()["metadata"]["labels"].get(self.key_label)
        with self._lock:
            self._calls[call] += 1
            if job_key is not None:
                self._attempts_by_key[job_key] += 1
            fault = self._draw_fault(call)
            lost = call == "create jobs" and self._rng.random() < self.lost_response_rate
        if self.latency > 0:
            time.sleep(self.latency)

        if self.require_auth and not (
            peer_verified
            or headers.get("Authorization") == f"Bearer {self.token}"
            or (self.authenticate is not None and self.authenticate(headers.get("Authorization")))
        ):
            reply = self._error_reply(ApiError(401, "Unauthorized", "Unauthorized"))
        elif fault is not None:
            reply = self._error_reply(fault)
        elif route is None:
            code, reason = (405, "MethodNotAllowed") if allowed else (404, "NotFound")
            message = "the server could not find the requested resource"
            if allowed:
                message = "the server does not allow this method on the requested resource"
            reply = self._error_reply(ApiError(code, reason, message))
        else:
            try:
                reply = getattr(self, route[2])(request)
            except ApiError as err:
                reply = self._error_reply(err)
            except Exception as err:  # answer like an apiserver would, keep serving
                reply = self._error_reply(ApiError(500, "InternalError", f"emulator: {err!r}"))
            if lost and 200 <= reply.code < 300:  # the work is done, but the caller never hears
                if self.lost_response_mode == "drop":
                    reply = _Reply(drop=True)
                else:
                    lost_error = _unavailable("the response was lost", self.retry_after)
                    reply = self._error_reply(lost_error)
        with self._lock:
            self._durations[call].append(time.perf_counter() - started)
        return reply

    def _draw_fault(self, call: str) -> ApiError | None:
        """Under the lock."""
        if self.error_calls is not None and call not in self.error_calls:
            return None
        if self.error_rate <= 0 or self._rng.random() >= self.error_rate:
            return None
        if self._rng.random() < 0.5:
            message = "Too many requests, please try again later."
            return _retry_later(429, "TooManyRequests", message, self.retry_after)
        return _unavailable("injected fault", self.retry_after)

    @staticmethod
    def _error_reply(err: ApiError) -> _Reply:
        reply = _json_reply(err.code, err.body())
        reply.headers.update(err.headers)
        return reply

    # ----------------------------------------------------------------- discovery

    def _get_version(self, request) -> _Reply:
        return _json_reply(200, VERSION_INFO)

    def _get_healthz(self, request) -> _Reply:
        return _Reply(200, b"ok", "text/plain; charset=utf-8")

    def _get_core_versions(self, request) -> _Reply:
        return _json_reply(
            200,
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            },
        )

    def _get_core_resources(self, request) -> _Reply:
        return _json_reply(
            200,
            _resource_list(
                "v1",
                [
                    ("pods", "pod", "Pod", ["delete", "deletecollection", "get", "list"]),
                    ("pods/eviction", "", "Eviction", ["create"]),
                    ("pods/log", "", "Pod", ["get"]),
                    ("pods/status", "", "Pod", ["get"]),
                ],
            ),
        )

    _BATCH_GROUP: ClassVar[dict] = {
        "name": "batch",
        "versions": [{"groupVersion": "batch/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "batch/v1", "version": "v1"},
    }

    def _get_groups(self, request) -> _Reply:
        return _json_reply(
            200,
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._BATCH_GROUP, k8s_apps.APPS_GROUP],
            },
        )

    def _get_batch_group(self, request) -> _Reply:
        return _json_reply(200, {"kind": "APIGroup", "apiVersion": "v1", **self._BATCH_GROUP})

    def _get_batch_resources(self, request) -> _Reply:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch"]
        return _json_reply(
            200,
            _resource_list(
                "batch/v1",
                [("jobs", "job", "Job", verbs), ("jobs/status", "", "Job", ["get"])],
            ),
        )

    def _watch(self, request) -> _Reply:
        raise _bad_request("the k8s emulator does not implement watch; poll with list instead")

    # ----------------------------------------------------------------- jobs

    def _create_job(self, request) -> _Reply:
        ns = request.params["ns"]
        dry_run = _dry_run(request.query)
        obj = request.json()
        if not isinstance(obj, dict):
            raise _bad_request("the request body must be a Job object")
        if obj.get("kind", "Job") != "Job" or obj.get("apiVersion", "batch/v1") != "batch/v1":
            raise _bad_request(
                f"expected batch/v1 Job, got {obj.get('apiVersion')} {obj.get('kind')}"
            )
        meta = _as_dict(obj.get("metadata"), "metadata")
        if meta.get("namespace") not in (None, "", ns):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        name = meta.get("name") or ""
        generate = meta.get("generateName") or ""
        if not name and generate:
            with self._lock:
                name = self._generate_name(generate[:58], self._jobs, ns)
        errors = _validate_job(obj, name)
        if errors:
            raise _invalid("Job", "batch", name or generate, errors)

        with self._lock:
            key = f"{ns}/{name}"
            if key in self._jobs:
                raise _already_exists("jobs", "batch", name)
            body = self._new_job_body(obj, ns, name)
            if dry_run:
                return _json_reply(201, body)
            job_key = (body["metadata"].get("labels") or {}).get(self.key_label)
            job = _JobRec(key, body, uid=body["metadata"]["uid"], job_key=job_key)
            self._insert(self._jobs, self._job_keys, job)
            if job_key is not None:
                self._creates_by_key[job_key] += 1
            if body["spec"].get("activeDeadlineSeconds"):
                self._deadline_jobs.add(job)
            self._sync(job)  # the controller's first pass: startTime and the first pod
        return _Reply(201, job.encoded(body).encode())

    def _new_job_body(self, obj: dict, ns: str, name: str) -> dict:
        """The stored Job: the request with what the apiserver and the controller default.
        Under the lock."""
        uid = self._uid()
        meta = obj.get("metadata") or {}
        selector_labels = {
            BATCH_CONTROLLER_UID_LABEL: uid,
            BATCH_JOB_NAME_LABEL: name,
            CONTROLLER_UID_LABEL: uid,
            JOB_NAME_LABEL: name,
        }
        spec = dict(obj["spec"])
        failure_policy = spec.get("podFailurePolicy")
        template = dict(spec["template"])
        tmeta = dict(template.get("metadata") or {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **selector_labels}
        tspec = dict(template["spec"])
        tspec["containers"] = [_default_container(c) for c in tspec["containers"]]
        for key, value in (
            ("dnsPolicy", "ClusterFirst"),
            ("schedulerName", "default-scheduler"),
            ("securityContext", {}),
            ("terminationGracePeriodSeconds", 30),
        ):
            tspec.setdefault(key, value)
        template["metadata"], template["spec"] = tmeta, tspec
        spec["template"] = template
        for key, value in (
            ("parallelism", 1),
            ("completions", 1),
            ("backoffLimit", 6),
            ("completionMode", "NonIndexed"),
            ("suspend", False),
            # With a podFailurePolicy a pod is replaced once it has failed, not while it stops.
            ("podReplacementPolicy", "TerminatingOrFailed" if failure_policy is None else "Failed"),
        ):
            if spec.get(key) is None:
                spec[key] = value
        if failure_policy is not None:
            spec["podFailurePolicy"] = k8s_disruption.defaulted(failure_policy)
        spec["selector"] = {"matchLabels": {BATCH_CONTROLLER_UID_LABEL: uid}}
        if not spec.get("manualSelector"):
            spec.pop("manualSelector", None)

        labels = dict(meta.get("labels") or tmeta["labels"])
        labels.setdefault(CONTROLLER_UID_LABEL, uid)
        labels.setdefault(BATCH_CONTROLLER_UID_LABEL, uid)
        self._rv += 1
        stored_meta = {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "resourceVersion": str(self._rv),
            "generation": 1,
            "creationTimestamp": _now(),
            "labels": labels,
        }
        for key in ("generateName", "annotations", "ownerReferences"):
            if meta.get(key):
                stored_meta[key] = meta[key]
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": stored_meta,
            "spec": spec,
            "status": {},
        }

    def _get_job(self, request) -> _Reply:
        with self._lock:
            job = self._job(request.params["ns"], request.params["name"])
            body = job.body
        return _Reply(200, job.encoded(body).encode())

    def _list_jobs(self, request) -> _Reply:
        return self._list(request, self._jobs, self._job_keys, JOB_FIELDS, "JobList", "batch/v1")

    def _delete_job(self, request) -> _Reply:
        policy = _propagation(request, default="Orphan")  # batch/v1's legacy default
        dry_run = _dry_run(request.query) or _body_dry_run(request)
        with self._lock:
            job = self._job(request.params["ns"], request.params["name"])
            if dry_run:
                return _json_reply(200, job.body)
            response = self._delete_job_locked(job, policy)
        return _json_reply(200, response)

    def _delete_jobs(self, request) -> _Reply:
        policy = _propagation(request, default="Orphan")
        dry_run = _dry_run(request.query) or _body_dry_run(request)
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""), JOB_FIELDS)
        prefix = request.params["ns"] + "/"
        deleted = []
        with self._lock:
            for job in [self._jobs[k] for k in self._job_keys if k.startswith(prefix)]:
                body = job.body
                if not (labels(body["metadata"].get("labels") or {}) and fields(body)):
                    continue
                if not dry_run:
                    response = self._delete_job_locked(job, policy)
                    body = response if response.get("kind") == "Job" else body
                deleted.append(body)
            rv = str(self._rv)
        return _json_reply(
            200,
            {
                "kind": "JobList",
                "apiVersion": "batch/v1",
                "metadata": {"resourceVersion": rv},
                "items": deleted,
            },
        )

    def _patch_job(self, request) -> _Reply:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the emulator supports merge patches only, not {content_type!r}",
            )
        patch = request.json()
        if not isinstance(patch, dict):
            raise _bad_request("a merge patch must be a JSON object")
        extra = set(patch) - {"metadata", "apiVersion", "kind"}
        meta_patch = _as_dict(patch.get("metadata"), "metadata")
        extra |= {f"metadata.{k}" for k in set(meta_patch) - {"labels", "annotations"}}
        with self._lock:
            job = self._job(request.params["ns"], request.params["name"])
            name = job.body["metadata"]["name"]
            if extra:
                errors = [
                    _FieldError(
                        f,
                        "FieldValueForbidden",
                        "Forbidden: the emulator patches only "
                        "metadata.labels and metadata.annotations",
                    )
                    for f in sorted(extra)
                ]
                raise _invalid("Job", "batch", name, errors)
            meta = dict(job.body["metadata"])
            for part in ("labels", "annotations"):
                if part in meta_patch:
                    merged = dict(meta.get(part) or {})
                    for key, value in _as_dict(meta_patch[part], f"metadata.{part}").items():
                        if value is None:
                            merged.pop(key, None)
                        else:
                            merged[key] = value
                    errors = _labels_errors(merged, f"metadata.{part}", values=part == "labels")
                    if errors:
                        raise _invalid("Job", "batch", name, errors)
                    meta[part] = merged
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            job.body = {**job.body, "metadata": meta}
            if job.job_key is None and meta.get("labels", {}).get(self.key_label):
                job.job_key = meta["labels"][self.key_label]
            body = job.body
        return _Reply(200, job.encoded(body).encode())

    def _job(self, ns: str, name: str) -> _JobRec:
        """Under the lock."""
        job = self._jobs.get(f"{ns}/{name}")
        if job is None:
            raise _not_found("jobs", "batch", name)
        return job

    # ----------------------------------------------------------------- pods

    def _get_pod(self, request) -> _Reply:
        with self._lock:
            pod = self._pod(request.params["ns"], request.params["name"])
            body = pod.body
        return _Reply(200, pod.encoded(body).encode())

    def _list_pods(self, request) -> _Reply:
        return self._list(request, self._pods, self._pod_keys, POD_FIELDS, "PodList", "v1")

    def _delete_pod(self, request) -> _Reply:
        dry_run = _dry_run(request.query) or _body_dry_run(request)
        with self._lock:
            pod = self._pod(request.params["ns"], request.params["name"])
            if not dry_run:
                self._delete_pod_locked(pod, count_failure=True)
            body = pod.body
        return _json_reply(200, body)

    def _delete_pods(self, request) -> _Reply:
        dry_run = _dry_run(request.query) or _body_dry_run(request)
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""), POD_FIELDS)
        prefix = request.params["ns"] + "/"
        deleted = []
        with self._lock:
            for pod in [self._pods[k] for k in self._pod_keys if k.startswith(prefix)]:
                if labels(pod.body["metadata"].get("labels") or {}) and fields(pod.body):
                    if not dry_run:
                        self._delete_pod_locked(pod, count_failure=True)
                    deleted.append(pod.body)
            rv = str(self._rv)
        return _json_reply(
            200,
            {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": deleted,
            },
        )

    def _evict_pod(self, request) -> _Reply:
        """policy/v1 Eviction (no PodDisruptionBudgets here): the pod gets its DisruptionTarget
        condition, is killed and deleted, as the real subresource has it."""
        name = request.params["name"]
        body = request.json()
        if not isinstance(body, dict) or body.get("kind", "Eviction") != "Eviction":
            raise _bad_request("the request body must be a policy/v1 Eviction")
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise _bad_request("name in URL does not match name in Eviction object")
        dry_run = _dry_run(request.query) or "All" in (
            (body.get("deleteOptions") or {}).get("dryRun") or []
        )
        container = None
        with self._lock:
            pod = self._pod(request.params["ns"], name)
            if not dry_run:
                if _is_active(pod):
                    container = self._disrupt_locked(pod, "EvictionByEvictionAPI")
                self._delete_pod_locked(pod, count_failure=False)
        if container is not None:
            self._submit(_kill, container)
        status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return _json_reply(201, {**status, "code": 201})

    def _pod(self, ns: str, name: str) -> _PodRec:
        """Under the lock."""
        pod = self._pods.get(f"{ns}/{name}")
        if pod is None:
            raise _not_found("pods", "", name)
        return pod

    def _read_log(self, request) -> _Reply:
        query = request.query
        follow = _bool_param(query, "follow")
        previous = _bool_param(query, "previous")
        tail = _int_param(query, "tailLines")
        since = _int_param(query, "sinceSeconds")
        limit = _int_param(query, "limitBytes")
        timestamps = _bool_param(query, "timestamps")
        with self._lock:
            pod = self._pod(request.params["ns"], request.params["name"])
            pod_name = pod.body["metadata"]["name"]
            names = [c["name"] for c in pod.body["spec"]["containers"]]
            wanted = query.get("container") or names[0]
            if wanted not in names:
                raise _bad_request(f"container {wanted} is not valid for pod {pod_name}")
            if wanted != names[0]:
                raise _bad_request(
                    f'container "{wanted}" in pod "{pod_name}" is waiting to start: the '
                    "emulator runs only a pod's first container"
                )
            container = pod.prev_container if previous else pod.container
            waiting = pod.waiting[0] if pod.waiting else "ContainerCreating"
            started = pod.started_ts is not None
            sim_text = f"[k8s-emulator] simulated pod {pod.key}\n"
            if pod.exit_code is not None:
                sim_text += f"[k8s-emulator] exit code {pod.exit_code}\n"

        if previous and container is None:
            raise _bad_request(
                f'previous terminated container "{wanted}" in pod "{pod_name}" not found'
            )
        if not self.run_containers:
            if not started:
                raise _bad_request(
                    f'container "{wanted}" in pod "{pod_name}" is waiting to start: {waiting}'
                )
            data = sim_text.encode()
            return _Reply(200, data[:limit] if limit else data, "text/plain")
        if container is None:
            raise _bad_request(
                f'container "{wanted}" in pod "{pod_name}" is waiting to start: {waiting}'
            )

        import docker.errors

        options = {"stdout": True, "stderr": True, "timestamps": timestamps}
        options["tail"] = tail if tail is not None else "all"
        if since:
            options["since"] = int(time.time()) - since
        try:
            if follow:
                stream = container.logs(stream=True, follow=True, **options)
                return _Reply(200, content_type="text/plain", stream=_limited(stream, limit))
            data = container.logs(**options)
        except docker.errors.NotFound:
            raise _not_found("pods", "", pod_name) from None
        return _Reply(200, data[:limit] if limit else data, "text/plain")

    # ----------------------------------------------------------------- lists

    def _list(self, request, store, keys, fields_map, kind, api_version) -> _Reply:
        query = request.query
        ns = request.params.get("ns")
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), fields_map)
        limit = _int_param(query, "limit") or 0
        token = query.get("continue")
        start = _decode_continue(token) if token else (f"{ns}/" if ns else "")
        prefix = f"{ns}/" if ns else ""
        filtered = bool(query.get("labelSelector") or query.get("fieldSelector"))
        picked: list[tuple[_Obj, dict]] = []
        meta: dict[str, Any] = {}
        with self._lock:
            meta["resourceVersion"] = str(self._rv)
            index = bisect.bisect_left(keys, start)
            for i in range(index, len(keys)):
                key = keys[i]
                if prefix and not key.startswith(prefix):
                    break
                obj = store[key]
                body = obj.body
                if not (labels(body["metadata"].get("labels") or {}) and fields(body)):
                    continue
                if limit and len(picked) == limit:
                    # One more match exists, so there is a next page; it starts after the last.
                    meta["continue"] = _encode_continue(self._rv, picked[-1][0].key)
                    if not filtered and not prefix:
                        meta["remainingItemCount"] = len(keys) - i
                    break
                picked.append((obj, body))
        items = ",".join(obj.encoded(body) for obj, body in picked)
        head = f'{{"kind":"{kind}","apiVersion":"{api_version}","metadata":{_DUMPS(meta)},'
        return _Reply(200, f'{head}"items":[{items}]}}'.encode())

    # ----------------------------------------------------------------- the Job controller
    # Everything below named *_locked, _sync, _finish, _new_pod, _pod_exit runs under the lock.

    def _uid(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _generate_name(self, prefix: str, store: dict, ns: str) -> str:
        while True:
            name = prefix + "".join(self._ids.choice(_NAME_CHARS) for _ in range(5))
            if f"{ns}/{name}" not in store:
                return name

    @staticmethod
    def _insert(store: dict, keys: list[str], obj: _Obj) -> None:
        store[obj.key] = obj
        bisect.insort(keys, obj.key)

    @staticmethod
    def _remove(store: dict, keys: list[str], obj: _Obj) -> bool:
        if store.get(obj.key) is not obj:
            return False
        del store[obj.key]
        index = bisect.bisect_left(keys, obj.key)
        if index < len(keys) and keys[index] == obj.key:
            del keys[index]
        return True

    def _sync(self, job: _JobRec) -> None:
        if job.gone:
            return
        if not job.conditions and not job.deleting:
            spec = job.body["spec"]
            if job.start_ts is None:
                job.start_ts, job.started = _now(), time.monotonic()
            if job.failures > spec["backoffLimit"]:
                self._finish(
                    job,
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            elif job.succeeded >= spec["completions"]:
                self._finish(
                    job,
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
            elif not spec.get("suspend") and not any(_is_active(p) for p in job.pods):
                self._new_pod(job)
        self._refresh_job(job)

    def _finish(self, job: _JobRec, kind: str, reason: str, message: str) -> None:
        ts = _now()
        target = "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet"
        job.conditions = [
            {
                "type": t,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastProbeTime": ts,
                "lastTransitionTime": ts,
            }
            for t in (target, kind)
        ]
        if kind == "Complete":
            job.completion_ts = ts
        job.finished = time.monotonic()
        self._deadline_jobs.discard(job)
        if job.body["spec"].get("ttlSecondsAfterFinished") is not None:
            self._ttl_jobs.add(job)
        for pod in job.pods:  # a finished Job stops whatever still runs
            if _is_active(pod):
                job.failed += 1
                pod.phase, pod.waiting = "Failed", None
                pod.exit_code = 137
                pod.term_reason, pod.term_message = reason, message
                pod.finished_ts = ts
                self._sim_pods.discard(pod)
                self._refresh_pod(pod)
                if pod.container is not None:
                    self._submit(_kill, pod.container)

    def _refresh_job(self, job: _JobRec) -> None:
        if job.gone:
            return
        live = [p for p in job.pods if not p.deleting]
        status: dict[str, Any] = {}
        if job.start_ts:
            status["startTime"] = job.start_ts
        active = sum(1 for p in live if p.phase in ACTIVE)
        if active:
            status["active"] = active
        if job.succeeded:
            status["succeeded"] = job.succeeded
        if job.failed:
            status["failed"] = job.failed
        status["ready"] = sum(1 for p in live if p.phase == "Running" and not p.waiting)
        status["terminating"] = sum(1 for p in job.pods if p.deleting and p.phase in ACTIVE)
        status["uncountedTerminatedPods"] = {}
        if job.conditions:
            status["conditions"] = job.conditions
        if job.completion_ts:
            status["completionTime"] = job.completion_ts
        if status == job.body.get("status"):
            return
        self._rv += 1
        self._changed.notify_all()
        job.body = {
            **job.body,
            "metadata": {**job.body["metadata"], "resourceVersion": str(self._rv)},
            "status": status,
        }

    def _new_pod(self, job: _JobRec) -> _PodRec:
        ns, job_name = job.body["metadata"]["namespace"], job.body["metadata"]["name"]
        name = self._generate_name(f"{job_name}-", self._pods, ns)
        uid = self._uid()
        template = job.body["spec"]["template"]
        tmeta = template["metadata"]
        self._rv += 1
        meta = {
            "name": name,
            "generateName": f"{job_name}-",
            "namespace": ns,
            "uid": uid,
            "resourceVersion": str(self._rv),
            "creationTimestamp": _now(),
            "labels": tmeta["labels"],
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job_name,
                    "uid": job.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if tmeta.get("annotations"):
            meta["annotations"] = tmeta["annotations"]
        spec = {**template["spec"], "nodeName": NODE_NAME}
        self._pod_count += 1
        n = self._pod_count
        pod = _PodRec(
            f"{ns}/{name}",
            {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {}},
            uid=uid,
            job=job,
            ip=f"10.244.{(n // 250) % 250}.{n % 250 + 2}",
            entered=time.monotonic(),
            start_ts=meta["creationTimestamp"],
        )
        self._insert(self._pods, self._pod_keys, pod)
        job.pods.append(pod)
        self._refresh_pod(pod)
        if self.run_containers:
            self._queue.put(pod)
        else:
            self._sim_pods.add(pod)
        return pod

    def _refresh_pod(self, pod: _PodRec) -> None:
        first = pod.body["spec"]["containers"][0]
        running = pod.phase == "Running" and not pod.waiting
        if pod.phase in TERMINAL:
            terminated = {
                "exitCode": pod.exit_code if pod.exit_code is not None else 0,
                "reason": pod.term_reason or ("Completed" if pod.exit_code == 0 else "Error"),
                "startedAt": pod.started_ts or pod.finished_ts,
                "finishedAt": pod.finished_ts,
            }
            if pod.term_message:
                terminated["message"] = pod.term_message
            if pod.container_id:
                terminated["containerID"] = pod.container_id
            state = {"terminated": terminated}
        elif running:
            state = {"running": {"startedAt": pod.started_ts}}
        else:
            reason, message = pod.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        container_status = {
            "name": first["name"],
            "image": first["image"],
            "imageID": pod.image_id,
            "ready": running,
            "restartCount": pod.restarts,
            "started": running,
            "state": state,
            "lastState": {"terminated": pod.last_state} if pod.last_state else {},
        }
        if pod.container_id:
            container_status["containerID"] = pod.container_id
        ts = pod.start_ts

        def condition(kind: str, ok: bool, reason: str = "") -> dict:
            cond = {
                "type": kind,
                "status": "True" if ok else "False",
                "lastProbeTime": None,
                "lastTransitionTime": ts,
            }
            if reason and not ok:
                cond["reason"] = reason
            return cond

        done_reason = "PodCompleted" if pod.phase in TERMINAL else "ContainersNotReady"
        status = {
            "phase": pod.phase,
            "conditions": [
                condition("PodReadyToStartContainers", pod.phase != "Pending" or not pod.waiting),
                condition("Initialized", True),
                condition("Ready", running, done_reason),
                condition("ContainersReady", running, done_reason),
                condition("PodScheduled", True),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "qosClass": "BestEffort",
            "startTime": pod.start_ts,
            "containerStatuses": [container_status],
        }
        if pod.disruption is not None:
            status["conditions"].append(pod.disruption)
            status.update(k8s_disruption.POD_STATUS.get(pod.disruption["reason"], {}))
        self._rv += 1
        self._changed.notify_all()
        meta = {**pod.body["metadata"], "resourceVersion": str(self._rv)}
        if pod.deleting:
            meta.setdefault("deletionTimestamp", _now())
            meta.setdefault("deletionGracePeriodSeconds", 30)
        pod.body = {**pod.body, "metadata": meta, "status": status}

    def _pod_started(self, pod: _PodRec, container_id: str, image_id: str = "") -> None:
        if pod.phase in TERMINAL or pod.deleting:
            return
        pod.phase, pod.waiting = "Running", None
        pod.started_ts, pod.entered = _now(), time.monotonic()
        pod.container_id, pod.image_id = container_id, image_id or pod.image_id
        self._refresh_pod(pod)
        if pod.job is not None:
            self._refresh_job(pod.job)

    def _pod_exit(self, pod: _PodRec, exit_code: int, reason: str, message: str = "") -> None:
        if pod.phase in TERMINAL or pod.deleting:
            return
        job = pod.job if pod.job is not None and not pod.job.gone else None
        alive = job is not None and not job.conditions and not job.deleting
        ts = _now()
        restart = (
            alive
            and pod.disruption is None  # a pod taken away is not restarted in place
            and pod.body["spec"].get("restartPolicy") == "OnFailure"
        )
        if exit_code != 0 and restart and job.failures < job.body["spec"]["backoffLimit"]:
            job.failures += 1  # the kubelet restarts the container in the same pod
            pod.last_state = {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": pod.started_ts or ts,
                "finishedAt": ts,
                **({"containerID": pod.container_id} if pod.container_id else {}),
            }
            pod.restarts += 1
            pod.waiting = ("CrashLoopBackOff", "back-off restarting failed container")
            pod.entered = time.monotonic()
            self._refresh_pod(pod)
            if self.run_containers:
                self._queue.put(pod)
            self._refresh_job(job)
            return
        pod.phase = "Succeeded" if exit_code == 0 else "Failed"
        pod.waiting = None
        pod.exit_code, pod.term_reason, pod.term_message = exit_code, reason, message
        pod.finished_ts = ts
        self._sim_pods.discard(pod)
        self._refresh_pod(pod)
        if alive:
            if exit_code == 0:
                job.succeeded += 1
            else:
                self._count_failure(job, pod)
        if job is not None:
            self._sync(job)

    def _count_failure(self, job: _JobRec, pod: _PodRec) -> None:
        """A failed pod, as the Job controller takes it: the podFailurePolicy's first matching
        rule decides (Ignore: replaced, not counted; FailJob: the Job fails now)."""
        action, message = k8s_disruption.match(job.body["spec"].get("podFailurePolicy"), pod.body)
        if action == "Ignore":
            return
        job.failures += 1
        job.failed += 1
        if action == "FailJob":
            self._finish(job, "Failed", "PodFailurePolicy", message)

    def _delete_pod_locked(self, pod: _PodRec, count_failure: bool) -> None:
        if pod.deleting:
            return
        job = pod.job
        policy = job is not None and not job.gone and job.body["spec"].get("podFailurePolicy")
        if count_failure and policy and _is_active(pod):
            # The kubelet kills it and reports it Failed before it goes: the policy decides.
            self._pod_exit(pod, k8s_disruption.KILLED_EXIT_CODE, k8s_disruption.KILLED_REASON)
        was_active = _is_active(pod)
        pod.deleting = True
        self._sim_pods.discard(pod)
        self._refresh_pod(pod)
        job = pod.job
        self._submit(self._reap_pod, pod)
        if job is None or job.gone:
            return
        if count_failure and was_active and not job.conditions and not job.deleting:
            job.failures += 1  # a deleted running pod counts as failed and is replaced
            job.failed += 1
        self._sync(job)

    def _delete_job_locked(self, job: _JobRec, policy: str) -> dict:
        """Returns the response body: the Job being deleted, or a Status once it is gone."""
        job.deleting = True
        self._deadline_jobs.discard(job)
        self._ttl_jobs.discard(job)
        ts = _now()
        if policy == "Orphan":
            for pod in job.pods:
                pod.job = None
                meta = {k: v for k, v in pod.body["metadata"].items() if k != "ownerReferences"}
                pod.body = {**pod.body, "metadata": meta}
                self._refresh_pod(pod)
            job.pods = []
            self._remove_job(job)
            return _deleting(job.body, ts, "orphan")
        for pod in list(job.pods):
            self._delete_pod_locked(pod, count_failure=False)
        if policy == "Background":
            self._remove_job(job)
            uid = job.uid
            name = job.body["metadata"]["name"]
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": name, "group": "batch", "kind": "jobs", "uid": uid},
            }
        job.foreground = True  # the Job stays (with a deletionTimestamp) until its pods are gone
        self._rv += 1
        body = _deleting(job.body, ts, "foregroundDeletion")
        body["metadata"]["resourceVersion"] = str(self._rv)
        job.body = body
        if not job.pods:
            self._remove_job(job)
        return body

    def _remove_job(self, job: _JobRec) -> None:
        self._remove(self._jobs, self._job_keys, job)
        job.gone = True

    def _reap_pod(self, pod: _PodRec) -> None:
        """Reaper thread: remove a deleted pod's containers, then the pod."""
        with self._lock:
            containers = list(pod.containers)
        for container in containers:
            _remove_container(container)
        with self._lock:
            self._remove(self._pods, self._pod_keys, pod)
            job = pod.job
            if job is None:
                return
            if pod in job.pods:
                job.pods.remove(pod)
            if job.foreground and not job.pods:
                self._remove_job(job)
            else:
                self._refresh_job(job)

    def _submit(self, fn, *args) -> None:
        if self._reaper is None:
            return
        with contextlib.suppress(RuntimeError):  # shut down: stop() removes containers itself
            self._reaper.submit(fn, *args)

    # ----------------------------------------------------------------- timers

    def _tick(self) -> None:
        """Simulated pods, activeDeadlineSeconds and ttlSecondsAfterFinished."""
        while not self._stopped.wait(max(0.002, min(self.sim_step / 4, 0.05))):
            now = time.monotonic()
            with self._lock:
                if not self.run_containers:
                    for pod in list(self._sim_pods):
                        if now - pod.entered >= self.sim_step:
                            self._advance(pod)
                for job in list(self._deadline_jobs):
                    if job.gone or job.conditions:
                        self._deadline_jobs.discard(job)
                    elif now - job.started >= job.body["spec"]["activeDeadlineSeconds"]:
                        self._finish(
                            job,
                            "Failed",
                            "DeadlineExceeded",
                            "Job was active longer than specified deadline",
                        )
                        self._refresh_job(job)
                for job in list(self._ttl_jobs):
                    ttl = job.body["spec"]["ttlSecondsAfterFinished"]
                    if job.gone:
                        self._ttl_jobs.discard(job)
                    elif now - job.finished >= ttl:
                        self._delete_job_locked(job, "Background")

    def _advance(self, pod: _PodRec) -> None:
        """One simulated step. Under the lock."""
        if pod.phase == "Pending" or pod.waiting:
            self._pod_started(pod, f"emulator://{pod.uid}", "emulator://simulated")
        elif pod.phase == "Running" and not self._held:
            job = pod.job
            outcome = None
            if job is not None:
                outcome = (
                    self._outcomes.get(job.key)
                    or self._outcomes.get(job.body["metadata"]["name"])
                    or self._outcomes.get(job.job_key or "")
                )
            state, code = outcome or ("Succeeded", 0)
            if state == "Failed":
                self._pod_exit(pod, code, "Error", "simulated failure")
            else:
                self._pod_exit(pod, 0, "Completed")

    def set_outcome(self, job_name_or_key: str, outcome: str, exit_code: int | None = None) -> None:
        """Simulated mode: how a job's pods end ("Succeeded" or "Failed"). Matches a Job by
        namespace/name, name, or the value of its key label."""
        if outcome not in TERMINAL:
            raise ValueError(f"outcome must be one of {TERMINAL}, got {outcome!r}")
        code = exit_code if exit_code is not None else (1 if outcome == "Failed" else 0)
        with self._lock:
            self._outcomes[job_name_or_key] = (outcome, code)

    def hold(self, on: bool = True) -> None:
        """Simulated mode: keep running pods Running until hold(False)."""
        with self._lock:
            self._held = on

    # ----------------------------------------------------------------- disruptions

    def preempt(
        self,
        job_name_or_key: str,
        reason: str = "PreemptionByScheduler",
        *,
        delete: bool = False,
        timeout: float = 30.0,
    ) -> dict:
        """Take a Job's pod away as the cluster does, once it runs: the pod gets the
        DisruptionTarget condition `reason` writes (k8s_disruption.DISRUPTIONS), its container
        is SIGKILLed and the pod ends Failed (exit code 137, reason Error), so the Job
        controller applies the podFailurePolicy. `delete`: the pod is then deleted too, as the
        scheduler, the Eviction API and the taint manager do (the kubelet, for a node shutdown,
        does not). Matches a Job as set_outcome does; returns the pod's body."""
        k8s_disruption.disruption_condition(reason)  # an unknown reason fails here, not later
        with self._changed:
            pod = self._changed.wait_for(lambda: self._running_pod(job_name_or_key), timeout)
            if pod is None:
                raise TimeoutError(f"no pod of job {job_name_or_key!r} ran within {timeout} s")
            container = self._disrupt_locked(pod, reason)
            if delete:
                self._delete_pod_locked(pod, count_failure=False)
            body = pod.body
        if container is not None:
            _kill(container)
        return json.loads(pod.encoded(body))

    def _running_pod(self, job_name_or_key: str) -> _PodRec | None:
        """The running pod of the unfinished Job so named; None while there is none yet.
        Under the lock."""
        jobs = [
            job
            for job in self._jobs.values()
            if job_name_or_key in (job.key, job.body["metadata"]["name"], job.job_key)
        ]
        if jobs and all(job.conditions or job.deleting for job in jobs):
            raise RuntimeError(f"job {job_name_or_key!r} has already finished")
        for job in jobs:
            for pod in reversed(job.pods):
                if pod.phase == "Running" and not pod.waiting and not pod.deleting:
                    return pod
        return None

    def _disrupt_locked(self, pod: _PodRec, reason: str):
        """The condition, then the kill as the kubelet reports it; the container to SIGKILL."""
        pod.disruption = k8s_disruption.disruption_condition(reason)
        container = pod.container
        self._pod_exit(pod, k8s_disruption.KILLED_EXIT_CODE, k8s_disruption.KILLED_REASON)
        return container

    # ----------------------------------------------------------------- container pods

    def _worker(self) -> None:
        while True:
            pod = self._queue.get()
            if pod is None or self._stopped.is_set():
                return
            try:
                self._run_pod(pod)
            except Exception as err:  # keep the worker alive; the pod shows why it failed
                with self._lock:
                    self._pod_exit(pod, 128, "StartError", f"emulator error: {err!r}")

    def _alive(self, pod: _PodRec) -> bool:
        """Under the lock."""
        return (
            not self._stopped.is_set()
            and not pod.deleting
            and pod.phase in ACTIVE
            and self._pods.get(pod.key) is pod
        )

    def _run_pod(self, pod: _PodRec) -> None:
        import docker.errors

        with self._lock:
            if not self._alive(pod):
                return
            spec = pod.body["spec"]
            first = spec["containers"][0]
            attempt = pod.restarts
            ns, name = pod.key.split("/", 1)
            job_key = pod.job.key if pod.job is not None else ""
        image = first["image"]
        try:
            self._ensure_image(image, first.get("imagePullPolicy", "IfNotPresent"))
        except Exception as err:
            with self._lock:
                if self._alive(pod):
                    pod.waiting = ("ErrImagePull", f"emulator: cannot get image {image}: {err}")
                    self._refresh_pod(pod)
            return

        env = {
            var["name"]: str(var.get("value", ""))
            for var in first.get("env") or []
            if isinstance(var, dict) and var.get("name")
        }
        assert self.buckets is not None and self.pvcs is not None
        try:
            volumes = k8s_volumes.binds(pod.body, buckets=self.buckets, pvcs=self.pvcs)
        except k8s_volumes.MountError as err:  # as kubelet: the pod waits, its event says why
            with self._lock:
                if self._alive(pod):
                    pod.waiting = ("ContainerCreating", str(err))
                    self._refresh_pod(pod)
            return
        try:
            container = self._docker.containers.create(
                image,
                command=first.get("args") or None,  # k8s args replace the image CMD
                entrypoint=first.get("command") or None,  # k8s command replaces the ENTRYPOINT
                environment=env,
                volumes=volumes,
                working_dir=first.get("workingDir") or None,
                hostname=name[:63],
                name=f"k8s_{first['name']}_{name}_{ns}_{pod.uid[:8]}_{attempt}",
                labels={
                    CONTAINER_INSTANCE_LABEL: self.instance,
                    CONTAINER_PORT_LABEL: str(self.port),
                    CONTAINER_POD_LABEL: pod.key,
                    CONTAINER_POD_UID_LABEL: pod.uid,
                    CONTAINER_JOB_LABEL: job_key,
                },
            )
        except docker.errors.APIError as err:
            with self._lock:
                self._pod_exit(pod, 128, "StartError", str(err.explanation or err))
            return
        with self._lock:
            pod.containers.append(container)
            alive = self._alive(pod)
        if not alive:  # deleted, finished or stopping while the container was being created
            _remove_container(container)
            return
        try:
            container.start()
        except docker.errors.APIError as err:
            with self._lock:
                pod.prev_container, pod.container = pod.container, container
                self._pod_exit(pod, 128, "StartError", str(err.explanation or err))
            return
        with self._lock:
            alive = self._alive(pod)
            if alive:
                pod.prev_container, pod.container = pod.container, container
                image_id = container.attrs.get("Image", "")
                self._pod_started(pod, f"docker://{container.id}", f"docker-pullable://{image_id}")
        if not alive:
            _remove_container(container)
            return

        exit_code = self._wait(container)
        if exit_code is None:
            return  # stopping
        reason = "Completed" if exit_code == 0 else "Error"
        with contextlib.suppress(Exception):
            container.reload()
            if container.attrs["State"].get("OOMKilled"):
                reason = "OOMKilled"
        with self._lock:
            self._pod_exit(pod, exit_code, reason)

    def _wait(self, container) -> int | None:
        """The container's exit code; None when the emulator stops first."""
        import docker.errors
        import requests

        while True:
            try:
                return container.wait(timeout=30)["StatusCode"]
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                if self._stopped.is_set():
                    return None
            except docker.errors.NotFound:
                return 137  # removed out from under us: like a node killing it

    def _ensure_image(self, image: str, policy: str) -> None:
        import docker.errors

        local = image.startswith(LOCAL_REGISTRIES)
        if local and policy == "Always":
            self._docker.images.pull(image)
            return
        try:
            self._docker.images.get(image)
            return
        except docker.errors.ImageNotFound:
            if policy == "Never":
                raise RuntimeError(
                    "the image is not present and imagePullPolicy is Never"
                ) from None
            if not local:
                raise RuntimeError(
                    "the image is not present locally and the emulator pulls only from "
                    + " or ".join(r.rstrip("/") for r in LOCAL_REGISTRIES)
                ) from None
        self._docker.images.pull(image)

    def _remove_containers(self) -> None:
        if self._docker is None:
            return
        selector = {"label": f"{CONTAINER_INSTANCE_LABEL}={self.instance}"}
        with contextlib.suppress(Exception):
            for container in self._docker.containers.list(all=True, filters=selector):
                _remove_container(container)

    # ----------------------------------------------------------------- inspection

    def creates_by_key(self) -> dict[str, int]:
        """How many Jobs were created per key label value (lost responses included)."""
        with self._lock:
            return dict(self._creates_by_key)

    def attempts_by_key(self) -> dict[str, int]:
        """Every create request seen per key label value, refused or faulted ones included."""
        with self._lock:
            return dict(self._attempts_by_key)

    def duplicates(self) -> int:
        """How many keys have more than one Job created."""
        with self._lock:
            return sum(1 for count in self._creates_by_key.values() if count > 1)

    def calls(self) -> collections.Counter[str]:
        """Requests by "verb resource", e.g. "create jobs", "list pods", "get pods/log"."""
        with self._lock:
            return collections.Counter(self._calls)

    def durations(self, call: str) -> list[float]:
        """Server-side seconds of the last 10,000 requests of one call (latency included)."""
        with self._lock:
            return list(self._durations.get(call, ()))

    def jobs(self) -> list[dict]:
        """The stored V1Job bodies (copies), in namespace/name order."""
        with self._lock:
            picked = [(job, job.body) for job in (self._jobs[k] for k in self._job_keys)]
        return [json.loads(job.encoded(body)) for job, body in picked]

    def pods(self) -> list[dict]:
        with self._lock:
            picked = [(pod, pod.body) for pod in (self._pods[k] for k in self._pod_keys)]
        return [json.loads(pod.encoded(body)) for pod, body in picked]


# --------------------------------------------------------------------------- helpers


def _retry_later(code: int, reason: str, message: str, seconds: int) -> ApiError:
    err = ApiError(code, reason, message, {"retryAfterSeconds": seconds})
    err.headers["Retry-After"] = str(seconds)
    return err


def _unavailable(why: str, seconds: int) -> ApiError:
    message = f"the server is currently unable to handle the request ({why})"
    return _retry_later(503, "ServiceUnavailable", message, seconds)


def _resource_list(group_version: str, resources) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {
                "name": name,
                "singularName": singular,
                "namespaced": True,
                "kind": kind,
                "verbs": verbs,
                **({"categories": ["all"]} if singular else {}),
            }
            for name, singular, kind, verbs in resources
        ],
    }


def _default_container(container: dict) -> dict:
    image = container["image"]
    tag = image.rsplit("/", 1)[-1]
    pull = (
        "IfNotPresent" if "@" in image or (":" in tag and not tag.endswith(":latest")) else "Always"
    )
    return {
        **container,
        "imagePullPolicy": container.get("imagePullPolicy") or pull,
        "terminationMessagePath": container.get("terminationMessagePath") or "/dev/termination-log",
        "terminationMessagePolicy": container.get("terminationMessagePolicy") or "File",
        "resources": container.get("resources") or {},
    }


def _deleting(body: dict, ts: str, finalizer: str) -> dict:
    meta = {
        **body["metadata"],
        "deletionTimestamp": ts,
        "deletionGracePeriodSeconds": 0,
        "finalizers": [finalizer],
    }
    return {**body, "metadata": meta}


def _is_active(pod: _PodRec) -> bool:
    return pod.phase in ACTIVE and not pod.deleting


def _dry_run(query: dict) -> bool:
    value = query.get("dryRun")
    if value in (None, ""):
        return False
    if value != "All":
        raise _bad_request(f"Invalid dry run value: {value!r}: only 'All' is supported")
    return True


def _body_dry_run(request: _Request) -> bool:
    body = request.json() if request.raw else None
    return isinstance(body, dict) and "All" in (body.get("dryRun") or [])


def _propagation(request: _Request, default: str) -> str:
    body = request.json() if request.raw else None
    body = body if isinstance(body, dict) else {}
    policy = body.get("propagationPolicy") or request.query.get("propagationPolicy")
    orphan = body.get("orphanDependents")
    if orphan is None and "orphanDependents" in request.query:
        orphan = _bool_param(request.query, "orphanDependents")
    if policy is None and orphan is not None:
        policy = "Orphan" if orphan else "Background"
    policy = policy or default
    if policy not in PROPAGATION_POLICIES:
        raise _bad_request(
            f'propagationPolicy: Unsupported value: "{policy}": supported values: '
            '"Orphan", "Background", "Foreground"'
        )
    return policy


def _bool_param(query: dict, name: str) -> bool:
    # Go's strconv.ParseBool, as the apiserver uses; the Python client sends "True".
    return query.get(name) in ("1", "t", "T", "true", "TRUE", "True")


def _int_param(query: dict, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise _bad_request(f"{name}: invalid integer {value!r}") from None
    if number < 0:
        raise _bad_request(f"{name}: must be non-negative")
    return number


def _limited(stream, limit: int | None):
    sent = 0
    try:
        for chunk in stream:
            if limit:
                chunk = chunk[: limit - sent]
            sent += len(chunk)
            yield chunk
            if limit and sent >= limit:
                return
    finally:
        with contextlib.suppress(Exception):
            stream.close()


def _kill(container) -> None:
    # SIGKILL, not stop(): a shell as PID 1 ignores SIGTERM and would cost the 10 s grace.
    with contextlib.suppress(Exception):
        container.kill()


def _remove_container(container) -> None:
    with contextlib.suppress(Exception):
        container.remove(force=True)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.k8s_emulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction answered 429/503")
    parser.add_argument("--simulate", action="store_true", help="no Docker: pods on a timer")
    parser.add_argument("--sim-step", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kubeconfig", help="where to write the kubeconfig (default: a temp file)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("--buckets", help="folder behind gcsfuse CSI volumes (BUCKET/...)")
    parser.add_argument("--pvcs", help="folder behind PersistentVolumeClaims (CLAIM/...)")
    args = parser.parse_args(argv)

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    emulator = K8sEmulator(
        args.port,
        run_containers=not args.simulate,
        sim_step=args.sim_step,
        latency=args.latency,
        error_rate=args.error_rate,
        seed=args.seed,
        buckets=args.buckets,
        pvcs=args.pvcs,
    )
    with emulator:
        path = emulator.write_kubeconfig(args.kubeconfig, namespace=args.namespace)
        print(f"K8S_EMULATOR_URL={emulator.url}", flush=True)
        print(f"KUBECONFIG={path}", flush=True)
        while not done.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
