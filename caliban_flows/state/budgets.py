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
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Iterator

from caliban_flows.platforms.base import first_line
from caliban_flows.platforms.pacing import BudgetFactory, SharedBudget, shared_slots
from caliban_flows.state import prefect_api

_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]+")


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

    def ensure(self) -> None:
        """Create the limit, or set it to this submission's quota (the newest word wins)."""
        body = {"limit": shared_slots(self.per_minute), "slot_decay_per_second": self.decay}
        made = self.http.post("/v2/concurrency_limits/", json={"name": self.name, **body})
        if made.status_code == 409:
            self.http.patch(f"/v2/concurrency_limits/{self.name}", json=body).raise_for_status()
        else:
            made.raise_for_status()

    async def take(self, calls: int) -> None:
        calls = min(calls, shared_slots(self.per_minute))
        while True:
            answer = await asyncio.to_thread(
                self.http.post,
                "/v2/concurrency_limits/increment",
                json={"names": [self.name], "slots": calls, "mode": "rate_limit"},
            )
            if answer.status_code != 423:
                answer.raise_for_status()
                return
            self.waits += 1
            hint = float(answer.headers.get("Retry-After") or 1.0)
            await asyncio.sleep(min(hint, calls / self.decay))


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
                try:
                    one.ensure()
                except Exception as e:
                    raise BudgetError(
                        f"cannot set up the API budget {name!r} in Prefect: {first_line(e)}"
                    ) from None
                made[name] = one
            return made[name]

    return budget
