"""Vertex AI's per-minute request quotas, for devtools.vertex_emulator.

Vertex meters two request quotas per project and region, each on its own budget:

    submit  "Job or long-running operation submission requests per minute per region"
            (CreateCustomJob; 60 by default on a real project)
    manage  "Resource management (CRUD) requests per minute per region"
            (Get/List/Cancel/DeleteCustomJob; 600 by default)

Each is enforced here over a sliding 60 s window per (project, region). A call over budget
is refused with RESOURCE_EXHAUSTED (HTTP 429) and the message Google's API front end writes,
and a refused call does not consume budget. Limits are calls per minute; None is unlimited.
"""

from __future__ import annotations

import argparse
import collections
import re
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from google.rpc import code_pb2, error_details_pb2, status_pb2

SUBMIT = "submit"
MANAGE = "manage"
KINDS = (SUBMIT, MANAGE)
WINDOW = 60.0  # seconds
SERVICE_NAME = "aiplatform.googleapis.com"
QUOTA_DOCS = "https://cloud.google.com/vertex-ai/docs/quotas"

LOCATION_RE = re.compile(r"^projects/([^/]+)/locations/([^/]+)(?:/|$)")
RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(s|sec|second|m|min|minute)\s*$")


@dataclass(frozen=True)
class Quota:
    metric: str  # the quota metric's id
    title: str  # its display name
    limit_name: str  # the limit's id, as ErrorInfo metadata names it

    def limit_title(self) -> str:
        return f"{self.title} per minute per region"


QUOTAS = {
    SUBMIT: Quota(
        metric=f"{SERVICE_NAME}/job_submission_requests",
        title="Job or long-running operation submission requests",
        limit_name="JobSubmissionRequestsPerMinutePerProjectPerRegion",
    ),
    MANAGE: Quota(
        metric=f"{SERVICE_NAME}/resource_management_requests",
        title="Resource management (CRUD) requests",
        limit_name="ResourceManagementRequestsPerMinutePerProjectPerRegion",
    ),
}


def parse_rate(text: str) -> float:
    """'600/min' or '10/s' as calls per minute."""
    match = RATE_RE.match(text)
    if not match:
        raise ValueError(f"expected a rate like 600/min or 10/s, got {text!r}")
    count = float(match[1])
    return count * 60 if match[2] in ("s", "sec", "second") else count


def location_of(resource: str) -> tuple[str, str] | None:
    """(project, region) of projects/P/locations/L[/...]; None if it is not one."""
    match = LOCATION_RE.match(resource)
    return (match[1], match[2]) if match else None


def project_number(project: str) -> int:
    """A stable 12-digit stand-in for a project id's number (consumers are named by number)."""
    if project.isdigit():
        return int(project)
    return 100_000_000_000 + zlib.crc32(project.encode()) % 900_000_000_000


def busiest_window(times: Iterable[float], window: float = WINDOW) -> int:
    """The most of `times` inside any half-open interval [t, t + window)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


class QuotaExceeded(Exception):
    """What the caller is answered: RESOURCE_EXHAUSTED, `message` and `status` (google.rpc.Status
    with ErrorInfo and Help details, as sent in grpc-status-details-bin)."""

    def __init__(self, message: str, status: status_pb2.Status):
        super().__init__(message)
        self.message, self.status = message, status


def _refusal(kind: str, project: str, region: str, limit: float) -> QuotaExceeded:
    quota = QUOTAS[kind]
    consumer = f"project_number:{project_number(project)}"
    message = (
        f"Quota exceeded for quota metric '{quota.title}' and limit '{quota.limit_title()}' "
        f"of service '{SERVICE_NAME}' for consumer '{consumer}'."
    )
    info = error_details_pb2.ErrorInfo(
        reason="RATE_LIMIT_EXCEEDED",
        domain="googleapis.com",
        metadata={
            "service": SERVICE_NAME,
            "consumer": f"projects/{project_number(project)}",
            "quota_metric": quota.metric,
            "quota_limit": quota.limit_name,
            "quota_limit_value": f"{limit:g}",
            "quota_location": region,
        },
    )
    docs = error_details_pb2.Help(
        links=[
            error_details_pb2.Help.Link(description="Request a higher quota limit.", url=QUOTA_DOCS)
        ]
    )
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    status.details.add().Pack(info)
    status.details.add().Pack(docs)
    return QuotaExceeded(message, status)


class Quotas:
    """Sliding-window request budgets per (kind, project, region). Thread-safe; each check is
    O(1) amortized (a deque of accepted times per key, trimmed from the left)."""

    def __init__(self, submit: float | None = None, manage: float | None = None):
        self._lock = threading.Lock()
        self._limits: dict[str, float | None] = {SUBMIT: submit, MANAGE: manage}
        self._windows: dict[tuple[str, str, str], collections.deque[float]] = {}
        self._accepted: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self._refused: collections.Counter[str] = collections.Counter()

    def set(self, **limits: float | None) -> None:
        """set(submit=..., manage=...): calls per minute, None = unlimited; omitted = unchanged.
        Calls already accepted keep counting against the new limit until they leave the window."""
        unknown = set(limits) - set(KINDS)
        if unknown:
            raise TypeError(f"unknown quota {sorted(unknown)}; expected {KINDS}")
        for value in limits.values():
            if value is not None and value < 0:
                raise ValueError(f"a quota must not be negative, got {value}")
        with self._lock:
            self._limits.update(limits)

    def limits(self) -> dict[str, float | None]:
        with self._lock:
            return dict(self._limits)

    def admit(self, kind: str, method: str, resource: str, now: float) -> None:
        """Count one call made at `now`, or raise QuotaExceeded (and count nothing). A resource
        that names no project and region is not metered (the call is invalid anyway)."""
        where = location_of(resource)
        if where is None:
            return
        project, region = where
        with self._lock:
            window = self._windows.get((kind, project, region))
            if window is None:
                window = self._windows[(kind, project, region)] = collections.deque()
            while window and window[0] <= now - WINDOW:
                window.popleft()
            limit = self._limits[kind]
            if limit is not None and len(window) + 1 > limit:
                self._refused[method] += 1
                raise _refusal(kind, project, region, limit)
            window.append(now)
            self._accepted[kind].append(now)

    def refused(self) -> collections.Counter[str]:
        with self._lock:
            return collections.Counter(self._refused)

    def accepted_times(self, kind: str) -> list[float]:
        if kind not in KINDS:
            raise ValueError(f"unknown quota {kind!r}; expected one of {KINDS}")
        with self._lock:
            return list(self._accepted[kind])


def rate_arg(text: str) -> float:
    """argparse type for --quota-submit / --quota-manage."""
    try:
        return parse_rate(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
