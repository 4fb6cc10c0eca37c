"""One way to talk to Prefect's REST API with httpx (no `prefect` import): status, reconcile,
limits and artifacts all use it.

A SQLite-backed server answers 503 while another writer holds the database, and Prefect Cloud
answers 429 when it rate-limits; both mean "not done, try again", so requests are retried with
jittered exponential backoff (tenacity). A gateway's 502/504 may follow work already done, so
only repeatable requests are retried on those. Prefect Cloud's key, when set, goes as a bearer
token.
"""

from __future__ import annotations

import os
import sys

from caliban_flows.lean_httpx import httpx
from caliban_flows.server.health import auth_headers

# Answers that mean the request was not carried out: retried for every request.
REFUSED = (429, 503)
# A gateway's answers: the server may have done the work before the answer was lost, so only
# a request that can be repeated safely is retried (a read, or a write of the same value).
LOST = (502, 504)
RETRY_SECONDS = 30.0  # then the last answer stands, and the caller says so in one line
# A SQLite-backed server waits up to 60 s for the write lock (Prefect's PRAGMA busy_timeout)
# before it answers 503; a client that gave up sooner would turn that wait into an error.
READ_SECONDS = 90.0
_READS = ("/filter", "/count", "/paginate", "/history")


def repeatable(request: httpx.Request) -> bool:
    """Reads, and writes that leave the same result when repeated. Not: creating an
    artifact, taking a concurrency lease, proposing a state (each would happen twice)."""
    if request.method in ("GET", "HEAD", "PUT", "PATCH", "DELETE"):
        return True
    return request.method == "POST" and request.url.path.rstrip("/").endswith(_READS)


def _unanswered(request: httpx.Request) -> tuple[type[Exception], ...]:
    """Failures after which sending again is safe: never sent, or a repeatable request."""
    if repeatable(request):
        return (httpx.TimeoutException, httpx.RemoteProtocolError)
    return (httpx.ConnectTimeout, httpx.PoolTimeout)


class _RetryingTransport(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            retry_if_result,
            stop_after_delay,
            wait_random_exponential,
        )

        retry_on = REFUSED + LOST if repeatable(request) else REFUSED
        retrying = Retrying(
            retry=retry_if_result(lambda response: response.status_code in retry_on)
            | retry_if_exception_type(_unanswered(request)),
            wait=wait_random_exponential(multiplier=0.1, max=3.0),
            stop=stop_after_delay(RETRY_SECONDS),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        return retrying(self._send, request)

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if response.status_code in REFUSED + LOST:
            response.read()  # frees the connection for the next try
        return response


def _api_key() -> str | None:
    if os.environ.get("PREFECT_API_KEY"):
        return os.environ["PREFECT_API_KEY"]
    if "prefect.settings" not in sys.modules:  # never import Prefect just for this
        return None
    from prefect.settings import PREFECT_API_KEY

    value = PREFECT_API_KEY.value()
    return value.get_secret_value() if value else None


def _api_url() -> str:
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


PAGE = 200  # the most Prefect returns per filter request


def paged(http: httpx.Client, path: str, body: dict) -> list[dict]:
    """Every record a POST .../filter finds, a page of PAGE at a time (offset paging: sort
    `body` so that records created meanwhile land after what was already read)."""
    out: list[dict] = []
    offset = 0
    while True:
        response = http.post(path, json={**body, "limit": PAGE, "offset": offset})
        response.raise_for_status()
        page = response.json()
        out.extend(page)
        if len(page) < PAGE:
            return out
        offset += PAGE


def paged_runs(http: httpx.Client, body: dict) -> list[dict]:
    """Every flow run `body` filters, by keyset on the expected start time (oldest first):
    a run that leaves the filter while we page (a group settling) cannot shift the rest
    past us, as it would with offsets; one that joins lands after what was read."""
    found: dict[str, dict] = {}
    cursor, offset = None, 0
    while True:
        runs_filter = dict(body.get("flow_runs") or {})
        if cursor is not None:
            runs_filter["expected_start_time"] = {"after_": cursor}  # inclusive: ties reread
        page_body = {**body, "flow_runs": runs_filter, "sort": "EXPECTED_START_TIME_ASC"}
        response = http.post(
            "/flow_runs/filter", json={**page_body, "limit": PAGE, "offset": offset}
        )
        response.raise_for_status()
        page = response.json()
        found.update((run["id"], run) for run in page)
        if len(page) < PAGE:
            return list(found.values())
        last = page[-1].get("expected_start_time")
        if last is None:  # not orderable by time: all of it again by offset, as before
            rest = paged(http, "/flow_runs/filter", {**body, "sort": "EXPECTED_START_TIME_ASC"})
            found.update((run["id"], run) for run in rest)
            return list(found.values())
        if last == cursor:  # a page of runs all expected at the same instant: step through
            offset += PAGE
        else:
            cursor, offset = last, 0


def set_state(http: httpx.Client, flow_run_id: str, state: dict) -> None:
    """Force a flow run's state (`type`, `message`, `data` ...): what caliban saw happen."""
    body = {"state": state, "force": True}
    http.post(f"/flow_runs/{flow_run_id}/set_state", json=body).raise_for_status()


def client(url: str | None = None, *, timeout: float = READ_SECONDS) -> httpx.Client:
    """An httpx client on the Prefect API at `url` (default: PREFECT_API_URL)."""
    url = url or _api_url()
    local = url.startswith(("http://127.0.0.1", "http://localhost"))
    return httpx.Client(
        base_url=url,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        headers=auth_headers(_api_key()),
        transport=_RetryingTransport(verify=not local),  # plain http: no CA bundle to load
        trust_env=not local,  # no proxy for loopback
    )
