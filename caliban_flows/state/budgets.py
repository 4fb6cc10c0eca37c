"""Per-minute API budgets shared by every caliban process on one Prefect server.

A budget is a Prefect global concurrency limit with slot decay (what Prefect's `rate_limit`
uses): it holds two seconds' worth of calls (pacing.shared_slots) and frees slots at the
quota's rate, so over any minute at most the quota and those are granted, however many
processes ask. Each process keeps itself under the quota (pacing.even_pace), a little
slower than the budget frees slots, so one submission alone seldom waits for it. The Prefect
UI's Concurrency page shows each budget, named after the project and region.

Slots are taken with Prefect's REST API (POST /v2/concurrency_limits/increment in
"rate_limit" mode), through httpx in a thread: no `prefect` import. A full budget answers
423 with a Retry-After; we wait no longer than our request's worth of decay, since the
server's hint grows with everybody's refused requests, not only ours, and no less: a refused
request restarts the limit's decay clock without applying what had decayed.

A budget only paces; it records nothing. So when the server cannot answer (a SQLite-backed
server busy past the client's retries, a restart), the submission goes on at its own pace,
which alone keeps this process under the quota, says so once, and asks the budget again
after OUTAGE_SECONDS: failing the whole submission would be worse than a 429 Vertex may
send if another process submits at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import sys
import threading
import time
from collections.abc import Iterator

from caliban_flows.lean_httpx import httpx
from caliban_flows.platforms.base import first_line
from caliban_flows.platforms.pacing import BudgetFactory, SharedBudget, shared_slots
from caliban_flows.state import prefect_api

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")
OUTAGE_SECONDS = 30.0  # how long a budget the server could not grant is left alone


class BudgetError(RuntimeError):
    """The budget could not be made or read in Prefect: one line."""


def budget_name(kind: str, scope: str) -> str:
    """e.g. caliban-vertex-submit:my-project:us-central1 (Prefect refuses '/', '%', '&' ...)."""
    return f"caliban-{kind}:{_UNSAFE.sub('-', scope)}"


class PrefectBudget:
    """One shared budget; `take` is called from the submitting event loop."""

    def __init__(self, http, name: str, per_minute: float) -> None:
        self.http = http
        self.name = name
        self.per_minute = per_minute
        self.decay = per_minute / 60.0
        self.waits = 0  # 423 answers: how often the budget was spent by the time we asked
        self.outages = 0  # takes the server could not answer (the pace alone held then)
        self._down_until = 0.0
        self._ready = False  # the limit made or set to our quota in Prefect

    def ensure(self) -> None:
        """Create the limit, or set it to this submission's quota (the newest word wins)."""
        body = {"limit": shared_slots(self.per_minute), "slot_decay_per_second": self.decay}
        made = self.http.post("/v2/concurrency_limits/", json={"name": self.name, **body})
        if made.status_code != 409:
            made.raise_for_status()
            return
        path = f"/v2/concurrency_limits/{self.name}"
        old = self.http.get(path).raise_for_status().json()
        if old.get("limit") and old["limit"] != body["limit"]:
            # The slots taken under the old quota, scaled to the new one: a lower quota's slow
            # decay would otherwise take minutes to free what a higher one had granted.
            used = old.get("active_slots", 0) / old["limit"]
            body["active_slots"] = min(body["limit"], math.ceil(used * body["limit"]))
        self.http.patch(path, json=body).raise_for_status()
        self._ready = True

    def ensure_or_pace(self) -> None:
        """ensure(); if the server cannot answer now, the pace alone holds for a while (a
        BudgetError only for an answer that says the request itself is wrong)."""
        try:
            self.ensure()
        except httpx.TransportError as e:
            self._outage(first_line(e))
        except httpx.HTTPStatusError as e:
            if e.response.status_code not in prefect_api.REFUSED + prefect_api.LOST:
                raise BudgetError(f"cannot set up the API budget {self.name!r} in Prefect: "
                                  f"{first_line(e)}") from None  # fmt: skip
            self._outage(f"HTTP {e.response.status_code}")

    async def take(self, calls: int) -> None:
        calls = min(calls, shared_slots(self.per_minute))
        while time.monotonic() >= self._down_until:
            if not self._ready:  # its setup met an outage: set it up now
                await asyncio.to_thread(self.ensure_or_pace)
                continue
            try:
                answer = await asyncio.to_thread(
                    self.http.post,
                    "/v2/concurrency_limits/increment",
                    json={"names": [self.name], "slots": calls, "mode": "rate_limit"},
                )
            except httpx.TransportError as e:  # after the transport's own retries
                self._outage(first_line(e))
                return
            if answer.status_code in prefect_api.REFUSED + prefect_api.LOST:
                self._outage(f"HTTP {answer.status_code}")
                return
            if answer.status_code == 422:
                # More slots than the limit holds: another submission set the budget to a
                # lower quota since (the newest word wins). Ask within it.
                limit = await asyncio.to_thread(self._limit)
                if limit is None or limit >= calls:
                    self._outage("HTTP 422")
                    return
                calls = max(1, limit)
                continue
            if answer.status_code != 423:
                answer.raise_for_status()
                return
            self.waits += 1
            hint = float(answer.headers.get("Retry-After") or 1.0)
            await asyncio.sleep(min(hint, calls / self.decay))

    def _limit(self) -> int | None:
        """The budget's limit in slots now; None if the server cannot say."""
        try:
            got = self.http.get(f"/v2/concurrency_limits/{self.name}")
            return int(got.raise_for_status().json()["limit"])
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            return None

    def _outage(self, why: str) -> None:
        self._down_until = time.monotonic() + OUTAGE_SECONDS
        self.outages += 1
        if self.outages == 1:
            print(f"warning: Prefect did not answer for the shared API budget {self.name!r} "
                  f"({why}); submitting at this process's own pace", file=sys.stderr)  # fmt: skip


@contextlib.contextmanager
def prefect_budgets(api_url: str | None = None) -> Iterator[BudgetFactory]:
    """Budgets on the Prefect server at `api_url` (default: PREFECT_API_URL), one per
    platform call kind and scope, made on first use."""
    with prefect_api.client(api_url) as http:
        yield _factory(http)


def _factory(http) -> BudgetFactory:
    made: dict[str, PrefectBudget] = {}
    lock = threading.Lock()

    def budget(kind: str, scope: str, per_minute: float) -> SharedBudget | None:
        name = budget_name(kind, scope)
        with lock:
            if name not in made:
                one = PrefectBudget(http, name, per_minute)
                one.ensure_or_pace()
                made[name] = one
            return made[name]

    return budget
