"""Jobs as Vertex AI CustomJobs, through `aiplatform_v1`'s generated clients.

Never the high-level `aiplatform` SDK: it takes ~3.8 s to import. The clients speak TLS to the
regional endpoint, or to $CALIBAN_VERTEX_ENDPOINT (host:port), with the credentials given
(--cloud_key, a Vertex settings block) or else the user's application-default ones.

Submission is concurrent (one asyncio client), paced by Vertex's two per-minute quotas (job
creates, and get/list/cancel calls: `pacing.py`, shared through Prefect when a budget factory
is given), retried with jittered exponential backoff, and idempotent: every job carries its key
and attempt as labels, the group's jobs are listed once before submitting, and a retried create
first looks for the job it may already have made (a lost response must not become a second job).
The batch loop is shared with Kubernetes (`platforms/submit.py`); listing and creating CustomJobs
are this module's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from caliban_flows.platforms.base import JobRequest, JobState, Platform, RemoteJob
from caliban_flows.platforms.pacing import BudgetFactory, Pace
from caliban_flows.platforms.submit import SubmitError as SubmitError  # importable from here too
from caliban_flows.platforms.submit import submit_paced
from caliban_flows.platforms.vertex import DEFAULT_MAX_QPS, MANAGE_QUOTA, SUBMIT_QUOTA
from caliban_flows.platforms.vertex import client as vertex_client
from caliban_flows.spec import vertex_job as vj

ENDPOINT_ENV = "CALIBAN_VERTEX_ENDPOINT"
T = TypeVar("T")

MAX_IN_FLIGHT = 64  # concurrent requests; the quotas set the pace
# Creates waiting for the pace count against their retry deadline: at most this many seconds'
# worth of them are started at once (and at least a few).
QUEUE_SECONDS, MIN_IN_FLIGHT = 10.0, 4
PAGE_SIZE = 1000
CALL_TIMEOUT = 30.0  # seconds per RPC
RETRY_DEADLINE = 60.0  # seconds of retrying one call before giving up on it

_STATES = {
    "JOB_STATE_QUEUED": JobState.SUBMITTED,
    "JOB_STATE_PENDING": JobState.SUBMITTED,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,
    "JOB_STATE_PAUSED": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.STOPPED,
}


def _exhausted(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(exc, gexc.TooManyRequests | gexc.ResourceExhausted)


def _transient(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    return isinstance(
        exc,
        gexc.TooManyRequests  # 429
        | gexc.ResourceExhausted  # 429 over gRPC
        | gexc.ServiceUnavailable  # 503 / UNAVAILABLE
        | gexc.DeadlineExceeded
        | gexc.InternalServerError,
    )


# google.rpc codes with which Vertex ends a job for its infrastructure, not the job's code:
# RESOURCE_EXHAUSTED (a stockout of the machine or accelerator), ABORTED, INTERNAL and
# UNAVAILABLE (a Spot VM preempted, a VM lost). A job whose code exits non-zero ends otherwise.
INFRA_CODES = frozenset({8, 10, 13, 14})
_EXIT_STATUS = re.compile(r"non-zero status of (\d+)")


def infra_reason(code: int, message: str) -> str | None:
    """Why Vertex's infrastructure ended a failed job, from its error; None: its code did."""
    if code in INFRA_CODES or "preempt" in message.lower():
        first = message.strip().splitlines()[0] if message.strip() else f"error code {code}"
        return first[:200]
    return None


def remote_job(job) -> RemoteJob:
    """Our view of one aiplatform_v1.CustomJob."""
    labels = dict(job.labels)
    state_name = job.state.name if hasattr(job.state, "name") else str(job.state)
    detail = job.error.message if job.error and job.error.message else None
    state = _STATES.get(state_name, JobState.UNKNOWN)
    failed = state is JobState.FAILED and job.error is not None
    exit_status = _EXIT_STATUS.search(detail or "") if failed else None
    return RemoteJob(
        key=labels.get(vj.JOB_KEY_LABEL, ""),
        attempt=int(labels.get(vj.ATTEMPT_LABEL, "0") or 0),
        remote_id=job.name,
        state=state,
        exit_code=int(exit_status.group(1)) if exit_status else None,
        console_url=vj.console_url(job.name) if job.name.count("/") == 5 else None,
        detail=detail,
        infra=infra_reason(job.error.code, detail or "") if failed else None,
    )


def group_filter(xgroup: str, *more: str) -> str:
    return " AND ".join([f'labels.{vj.XGROUP_ID_LABEL}="{vj.xgroup_id(xgroup)}"', *more])


class Vertex:
    """Vertex AI as a platform, for one project and region."""

    name = "vertex"

    def __init__(
        self,
        project: str,
        region: str,
        *,
        placement: vj.Placement | None = None,
        endpoint: str | None = None,
        credentials=None,
        submit_quota: float = SUBMIT_QUOTA,
        manage_quota: float = MANAGE_QUOTA,
    ) -> None:
        self.project = project
        self.submit_quota = submit_quota  # job creates a minute, per project and region
        self.manage_quota = manage_quota  # get, list and cancel calls a minute
        self.credentials = credentials  # google.auth credentials; None: application default
        self.region = region
        self.placement = placement
        self.endpoint = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV) or None
        self._sync = None

    @classmethod
    def from_placement(cls, vertex: dict, credentials=None) -> Vertex:
        """From a group's recorded placement (plan/placement.py wrote it)."""
        placement = vj.Placement(**vertex["placement"]) if vertex.get("placement") else None
        project, region = vertex["project"], vertex["region"]
        return cls(
            project,
            region,
            placement=placement,
            credentials=credentials,
            submit_quota=vertex.get("submit_quota") or SUBMIT_QUOTA,
            manage_quota=vertex.get("manage_quota") or MANAGE_QUOTA,
        )

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    # -- clients ---------------------------------------------------------------------------

    def _options(self) -> dict:
        # One path for Google and for anything else that speaks the API (an emulator, a
        # private endpoint): TLS, with the system's CA roots or $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH,
        # and the credentials, as the user's own (application default) unless given.
        return {"api_endpoint": self.endpoint or f"{self.region}-aiplatform.googleapis.com"}

    def client(self):
        if self._sync is None:
            service = vertex_client.job_service()
            self._sync = service.JobServiceClient(
                credentials=self.credentials, client_options=self._options()
            )
        return self._sync

    def async_client(self):
        """A new async client; create it inside the event loop that will use it."""
        service = vertex_client.job_service()
        return service.JobServiceAsyncClient(
            credentials=self.credentials, client_options=self._options()
        )

    # -- the platform protocol -------------------------------------------------------------

    def poll(self, xgroup: str) -> list[RemoteJob]:
        """Every job of the group: one paged list call, retried on transient errors."""
        from google.api_core.retry import Retry

        request = {"parent": self.parent, "filter": group_filter(xgroup), "page_size": PAGE_SIZE}
        retry = Retry(predicate=_transient, initial=0.2, maximum=5.0, timeout=60.0)
        pager = self.client().list_custom_jobs(request=request, retry=retry, timeout=CALL_TIMEOUT)
        return [remote_job(job) for job in pager]

    def cancel(self, remote_ids: Sequence[str]) -> None:
        from google.api_core import exceptions as gexc
        from google.api_core.retry import Retry

        retry = Retry(predicate=_transient, initial=0.2, maximum=5.0, timeout=60.0)
        for name in remote_ids:
            # Already ended, or deleted: nothing to stop.
            with contextlib.suppress(gexc.FailedPrecondition, gexc.NotFound):
                self.client().cancel_custom_job(name=name, retry=retry, timeout=CALL_TIMEOUT)

    def logs(self, remote_id: str, *, follow: bool = False) -> Iterator[bytes]:
        # Vertex writes job output to Cloud Logging, not to this API.
        yield f"logs: {vj.console_url(remote_id)}\n".encode()

    def submit(self, request: JobRequest) -> RemoteJob:
        return asyncio.run(self.submit_all([request]))[0]

    # -- batched submission ----------------------------------------------------------------

    async def submit_all(
        self,
        requests: Sequence[JobRequest],
        *,
        max_qps: float = DEFAULT_MAX_QPS,
        on_job: Callable[[RemoteJob, bool], None] = lambda job, new: None,
        budgets: BudgetFactory | None = None,
    ) -> list[RemoteJob]:
        """Submit what the group lacks; return every request's remote job, in order.

        `on_job(job, new)` is called once per request as soon as its job is known (new=False
        when it already existed remotely). Creates keep to the submit quota and every other
        call to the manage quota, both also to `max_qps`; `budgets` shares them with every
        other submission to this project and region.
        """
        if self.placement is None:
            raise ValueError("submitting needs a placement (machine, accelerators ...)")
        paces = self.paces(max_qps, budgets)
        client = self.async_client()
        try:
            return await submit_paced(
                requests,
                list_group=partial(self._group_jobs, client),
                create=partial(self._create, client, self.placement),
                max_qps=max_qps,
                max_in_flight=paces.in_flight(),
                on_job=on_job,
                limiter=paces,
            )
        finally:
            await client.transport.close()

    def paces(self, max_qps: float, budgets: BudgetFactory | None = None) -> Paces:
        scope = f"{self.project}:{self.region}"
        submit = min(self.submit_quota, max_qps * 60.0)
        manage = min(self.manage_quota, max_qps * 60.0)
        return Paces(
            submit=Pace(submit, budgets("vertex-submit", scope, submit) if budgets else None),
            manage=Pace(manage, budgets("vertex-manage", scope, manage) if budgets else None),
        )

    async def _group_jobs(self, client, paces: Paces, xgroup: str) -> list[RemoteJob]:
        return await self._list(client, paces, group_filter(xgroup))

    async def _list(self, client, paces: Paces, text: str) -> list[RemoteJob]:
        from google.api_core.retry_async import AsyncRetry

        async def listing() -> list[RemoteJob]:
            out: list[RemoteJob] = []
            token = ""
            while True:  # paged by hand so that every page keeps to the quota
                async with paces.manage:
                    page = await paces.call(
                        paces.manage,
                        client.list_custom_jobs(
                            request={
                                "parent": self.parent,
                                "filter": text,
                                "page_size": PAGE_SIZE,
                                "page_token": token,
                            },
                            timeout=CALL_TIMEOUT,
                        ),
                    )
                out.extend(remote_job(j) for j in page.custom_jobs)
                token = page.next_page_token
                if not token:
                    return out

        retry = AsyncRetry(predicate=_transient, initial=0.2, maximum=10.0, timeout=RETRY_DEADLINE)
        return await retry(listing)()

    async def _create(
        self, client, placement: vj.Placement, paces: Paces, request: JobRequest
    ) -> RemoteJob:
        from google.api_core.retry_async import AsyncRetry

        labels = vj.job_labels(
            request.labels,
            xgroup=request.xgroup,
            key=request.key,
            attempt=request.attempt,
            image=request.image,
        )
        spec = vj.custom_job(
            display_name=request.name,
            image=request.image,
            args=request.command_args(),
            labels=labels,
            placement=placement,
            outputs=request.output_place(),
            folder=request.output_folder(),
        )
        job = vertex_client.job_service().CustomJob(spec)
        mine = group_filter(
            request.xgroup,
            f'labels.{vj.JOB_KEY_LABEL}="{request.key}"',
            f'labels.{vj.ATTEMPT_LABEL}="{request.attempt}"',
        )
        tries = 0

        async def create_unless_there() -> RemoteJob:
            nonlocal tries
            tries += 1
            if tries > 1:  # the last create may have worked and only its answer got lost
                there = await self._list(client, paces, mine)
                if there:
                    return there[0]
            async with paces.submit:
                made = await paces.call(
                    paces.submit,
                    client.create_custom_job(
                        parent=self.parent, custom_job=job, timeout=CALL_TIMEOUT
                    ),
                )
            return remote_job(made)

        retry = AsyncRetry(predicate=_transient, initial=0.2, maximum=10.0, timeout=RETRY_DEADLINE)
        return await retry(create_unless_there)()


@dataclass(frozen=True)
class Paces:
    """Vertex's two per-minute quotas, as this submission keeps to them."""

    submit: Pace
    manage: Pace

    def in_flight(self) -> int:
        worth = math.ceil(self.submit.per_minute / 60.0 * QUEUE_SECONDS)
        return max(MIN_IN_FLIGHT, min(MAX_IN_FLIGHT, worth))

    @staticmethod
    async def call(pace: Pace, answer: Awaitable[T]) -> T:
        """The call's answer; a refusal for quota slows `pace` down before it is retried."""
        try:
            got = await answer
        except Exception as e:
            if _exhausted(e):
                pace.exhausted()
            raise
        pace.answered()
        return got


# The registry entry's `open` hands Vertex out as a Platform: this line has mypy check the
# class against that protocol, so a missing or mistyped method fails `make lint`.
_CHECKED_AS_PLATFORM: type[Platform] = Vertex
