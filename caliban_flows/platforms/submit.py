"""The paced, idempotent batch submission the remote adapters (Vertex AI, Kubernetes) share.

A batch first lists the jobs its groups already have, then creates only the missing ones,
concurrently but paced: every API call waits for a token from one leaky bucket at `max_qps`,
and at most `max_in_flight` creates run at once. So submitting a batch again, after a crash or
a partial failure, creates exactly the jobs that are still missing.

A platform brings the pieces that differ: how to list a group's jobs and how to create one. Its
`create` retries transient errors itself and must never make a second job for a key and attempt
(a retried create whose first answer got lost looks for that job first). Retrying stays with the
platform because each uses its client library's own retry (google.api_core's, whose deadline
error is what Vertex users see; tenacity for Kubernetes), and the two find a lost job differently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from caliban_flows.platforms.base import JobRequest, RemoteJob, first_line

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

# Every job a group has on the platform; each API call it makes first waits for the limiter
# (a token bucket, or the platform's own pacing).
ListGroup = Callable[[Any, str], Awaitable[list[RemoteJob]]]
# One new job for a request, paced by the limiter, retried on the platform's transient errors.
CreateJob = Callable[[Any, JobRequest], Awaitable[RemoteJob]]
Describe = Callable[[BaseException], str]


class NothingSubmitted(RuntimeError):
    """The group could not even be listed (refused credentials, no such project ...): no
    job was created."""


class SubmitError(RuntimeError):
    """Some jobs could not be submitted; the others were. Submitting again adds only those."""

    def __init__(
        self,
        done: list[RemoteJob],
        failed: list[tuple[JobRequest, BaseException]],
        describe: Describe = first_line,
    ) -> None:
        self.done = done
        self.failed = failed
        request, error = failed[0]
        super().__init__(
            f"{len(failed)} of {len(done) + len(failed)} jobs were not submitted "
            f"(first: {request.name}: {describe(error)}); submit again to add only the missing ones"
        )


def rate_limiter(max_qps: float) -> AsyncLimiter:
    """A token bucket for `max_qps` API calls a second."""
    from aiolimiter import AsyncLimiter  # imported on first use: keeps `caliban status` quick

    # A leaky bucket holding 1/25 s of requests (at least one): any 1 s window sees at
    # most 4% above the rate (above 25 QPS), any 10 s window at most 1% (above 10 QPS).
    period = max(0.04, 1.0 / max_qps)
    return AsyncLimiter(max_qps * period, period)


async def submit_paced(
    requests: Sequence[JobRequest],
    *,
    list_group: ListGroup,
    create: CreateJob,
    max_qps: float,
    max_in_flight: int,
    on_job: Callable[[RemoteJob, bool], None],
    describe: Describe = first_line,
    limiter: Any = None,
) -> list[RemoteJob]:
    """Create what the requests' groups lack; every request's remote job, in order.

    `on_job(job, new)` is called once per request as soon as its job is known (new=False when
    it already existed remotely). When some creates fail the others still finish, and
    SubmitError (its message naming the first failure by `describe`) lists both. `limiter`,
    handed to `list_group` and `create`, is a token bucket at `max_qps` unless the platform
    brings its own pacing.
    """
    limiter = limiter if limiter is not None else rate_limiter(max_qps)
    gate = asyncio.Semaphore(max_in_flight)
    # One listing per group up front instead of a lookup per job: this is what makes a
    # resubmitted batch skip the jobs it made last time.
    existing: dict[tuple[str, int], RemoteJob] = {}
    for xgroup in {r.xgroup for r in requests}:
        try:
            listed = await list_group(limiter, xgroup)
        except Exception as e:
            raise NothingSubmitted(describe(e)) from e
        for job in listed:
            existing.setdefault((job.key, job.attempt), job)

    async def one(request: JobRequest) -> RemoteJob:
        found = existing.get((request.key, request.attempt))
        if found is not None:
            on_job(found, False)
            return found
        async with gate:
            made = await create(limiter, request)
        on_job(made, True)
        return made

    # return_exceptions: one failed create must not abandon the others half way.
    results = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
    done = [j for j in results if isinstance(j, RemoteJob)]
    failed = [(r, e) for r, e in zip(requests, results) if isinstance(e, BaseException)]
    if failed:
        raise SubmitError(done, failed, describe)
    return done
