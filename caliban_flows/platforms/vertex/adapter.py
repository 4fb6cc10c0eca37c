"""Jobs as Vertex AI CustomJobs, through `aiplatform_v1`'s generated clients.

Never the high-level `aiplatform` SDK: it takes ~3.8 s to import. The clients speak TLS to the
regional endpoint, or to $CALIBAN_VERTEX_ENDPOINT (host:port), with the credentials given
(--cloud_key, a Vertex settings block) or else the user's application-default ones.

Submission is concurrent (one asyncio client), paced by a token bucket, retried with jittered
exponential backoff, and idempotent: every job carries its key and attempt as labels, the group's
jobs are listed once before submitting, and a retried create first looks for the job it may
already have made (a lost response must not become a second job). The batch loop is shared with
Kubernetes (`platforms/submit.py`); listing and creating CustomJobs are this module's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from functools import partial

from caliban_flows.platforms.base import JobRequest, JobState, Platform, RemoteJob
from caliban_flows.platforms.submit import SubmitError as SubmitError  # importable from here too
from caliban_flows.platforms.submit import submit_paced
from caliban_flows.platforms.vertex import DEFAULT_MAX_QPS
from caliban_flows.platforms.vertex import client as vertex_client
from caliban_flows.spec import vertex_job as vj

ENDPOINT_ENV = "CALIBAN_VERTEX_ENDPOINT"

MAX_IN_FLIGHT = 64  # concurrent requests; the token bucket sets the pace
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


def remote_job(job) -> RemoteJob:
    """Our view of one aiplatform_v1.CustomJob."""
    labels = dict(job.labels)
    state_name = job.state.name if hasattr(job.state, "name") else str(job.state)
    detail = job.error.message if job.error and job.error.message else None
    return RemoteJob(
        key=labels.get(vj.JOB_KEY_LABEL, ""),
        attempt=int(labels.get(vj.ATTEMPT_LABEL, "0") or 0),
        remote_id=job.name,
        state=_STATES.get(state_name, JobState.UNKNOWN),
        console_url=vj.console_url(job.name) if job.name.count("/") == 5 else None,
        detail=detail,
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
    ) -> None:
        self.project = project
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
        return cls(project, region, placement=placement, credentials=credentials)

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
    ) -> list[RemoteJob]:
        """Submit what the group lacks; return every request's remote job, in order.

        `on_job(job, new)` is called once per request as soon as its job is known (new=False
        when it already existed remotely).
        """
        if self.placement is None:
            raise ValueError("submitting needs a placement (machine, accelerators ...)")
        client = self.async_client()
        try:
            return await submit_paced(
                requests,
                list_group=partial(self._group_jobs, client),
                create=partial(self._create, client, self.placement),
                max_qps=max_qps,
                max_in_flight=MAX_IN_FLIGHT,
                on_job=on_job,
            )
        finally:
            await client.transport.close()

    async def _group_jobs(self, client, limiter, xgroup: str) -> list[RemoteJob]:
        return await self._list(client, limiter, group_filter(xgroup))

    async def _list(self, client, limiter, text: str) -> list[RemoteJob]:
        from google.api_core.retry_async import AsyncRetry

        async def listing() -> list[RemoteJob]:
            out: list[RemoteJob] = []
            token = ""
            while True:  # paged by hand so that every page waits for a token
                async with limiter:
                    page = await client.list_custom_jobs(
                        request={
                            "parent": self.parent,
                            "filter": text,
                            "page_size": PAGE_SIZE,
                            "page_token": token,
                        },
                        timeout=CALL_TIMEOUT,
                    )
                out.extend(remote_job(j) for j in page.custom_jobs)
                token = page.next_page_token
                if not token:
                    return out

        retry = AsyncRetry(predicate=_transient, initial=0.2, maximum=10.0, timeout=RETRY_DEADLINE)
        return await retry(listing)()

    async def _create(
        self, client, placement: vj.Placement, limiter, request: JobRequest
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
                there = await self._list(client, limiter, mine)
                if there:
                    return there[0]
            async with limiter:
                made = await client.create_custom_job(
                    parent=self.parent, custom_job=job, timeout=CALL_TIMEOUT
                )
            return remote_job(made)

        retry = AsyncRetry(predicate=_transient, initial=0.2, maximum=10.0, timeout=RETRY_DEADLINE)
        return await retry(create_unless_there)()


# The registry entry's `open` hands Vertex out as a Platform: this line has mypy check the
# class against that protocol, so a missing or mistyped method fails `make lint`.
_CHECKED_AS_PLATFORM: type[Platform] = Vertex
