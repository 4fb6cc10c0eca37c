"""The pace of one kind of API call (Vertex's job creates, or its get/list/cancel calls).

A platform's quotas are per minute and per project and region, and every caliban process
using that project and region draws on the same ones. So a call waits twice:

- for this process's own pace, which starts at the configured quota and adapts: answers of
  RESOURCE_EXHAUSTED (429) for a quarter or more of the recent calls cut it by a factor, each
  quiet interval raises it by a step, up to the configured quota again (AIMD). A project
  whose real quota is lower than the configured one converges to it instead of hammering it;
- for a shared budget, when one is given: the same quota held by the Prefect server as a
  global concurrency limit with slot decay (state/budgets.py), so two sweeps at once get the
  quota between them, not twice it. Slots are taken a few at a time, so the server is asked
  at most a few times a second whatever the pace.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from typing import Protocol

DECREASE = 0.7  # a 429 keeps this much of the pace
INCREASE_EVERY = 2.0  # seconds without a 429 before the pace is raised a step
# Refusals this close together count as one: the calls in flight when the quota ran out.
SAME_REFUSAL = 1.0
# A quota refuses every call over it; a 429 now and then (a busy front end) is only retried.
# So the pace is cut when at least REFUSALS of the last ANSWERS answers were refusals.
ANSWERS, REFUSALS = 20, 5
# Refusals in a row also hold the pace back, twice as long each time up to MAX_PAUSE: a quota
# spent for this minute refuses everything until its window moves on.
MAX_PAUSE = 10.0
INCREASE_STEP = 0.05  # of the configured quota
FLOOR = 0.1  # of the configured quota: the pace never drops below it
# Shared slots are taken a second's worth at a time, and a shared budget holds two: Prefect
# applies a limit's decay in whole slots at each change, so takes of a few slots lose a
# fraction of a slot each, and a budget just as big as one take would keep refusing.
CHUNK_SECONDS = 1.0
SHARED_BURSTS = 2
# A pace lets a second's worth of calls go at once (at least one call), and a shared budget
# holds as many; the even pace after it is lowered by as much, and by a margin for the calls'
# uneven travel time, so no 60 s window sees more than the quota.
BURST_SECONDS = 1.0
MARGIN = 0.005


def burst(per_minute: float) -> int:
    """Calls that may go at once under this quota."""
    return max(1, math.ceil(per_minute / 60.0 * BURST_SECONDS))


def shared_slots(per_minute: float) -> int:
    """What a shared budget holds: all its takers together get at most the quota and this
    in any minute."""
    return SHARED_BURSTS * burst(per_minute)


def even_pace(per_minute: float) -> float:
    """Calls a minute after a burst, so that burst plus pace keep to the quota."""
    return max(per_minute * FLOOR, per_minute * (1 - MARGIN) - (burst(per_minute) - 1))


class SharedBudget(Protocol):
    """A per-minute budget shared by every process; `take` waits until `calls` are granted."""

    async def take(self, calls: int) -> None: ...


# (kind, project-and-region scope, calls per minute) -> the shared budget, or None for none.
BudgetFactory = Callable[[str, str, float], "SharedBudget | None"]


class Pace:
    """One kind of call, at most `per_minute` a minute: `async with pace:` before each call,
    `pace.exhausted()` when the platform answers RESOURCE_EXHAUSTED."""

    def __init__(
        self,
        per_minute: float,
        shared: SharedBudget | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_minute <= 0:
            raise ValueError(f"a pace of {per_minute:g} calls a minute")
        self.configured = per_minute
        self.per_minute = per_minute
        self.shared = shared
        self.exhaustions = 0
        self._clock = clock
        self._next = 0.0  # when the next call may start
        self._calm_since = clock()
        self._cut_at = -SAME_REFUSAL
        self._answers: collections.deque[bool] = collections.deque(maxlen=ANSWERS)
        self._streak = 0  # refusals since the last answer
        self._granted = 0  # shared slots taken and not used yet
        self._sharing = asyncio.Lock()

    @property
    def interval(self) -> float:
        return 60.0 / even_pace(self.per_minute)

    async def __aenter__(self) -> Pace:
        self._raise_if_calm()
        # GCRA: `_next` is when the calls granted so far would have ended at an even pace;
        # a call may start up to a burst's worth of intervals before it.
        now = self._clock()
        tolerance = (burst(self.per_minute) - 1) * self.interval
        start = max(now, self._next - tolerance)
        wait = start - now
        self._next = max(self._next, start) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)
        if self.shared is not None:
            await self._take_shared()
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    def answered(self) -> None:
        """The platform answered a call (anything but a refusal for quota)."""
        self._answers.append(True)
        self._streak = 0

    def exhausted(self) -> None:
        """The platform refused a call for quota: slow down if that is what it keeps doing,
        and wait one interval more."""
        self.exhaustions += 1
        self._answers.append(False)
        now = self._clock()
        if self._answers.count(False) >= REFUSALS and now - self._cut_at >= SAME_REFUSAL:
            self.per_minute = max(self.configured * FLOOR, self.per_minute * DECREASE)
            self._cut_at = now
        self._calm_since = now
        pause = min(MAX_PAUSE, self.interval * 2**self._streak)
        self._streak = min(self._streak + 1, 30)
        # and no burst after it: the next calls go one interval apart
        tolerance = (burst(self.per_minute) - 1) * self.interval
        self._next = max(self._next, now + pause + tolerance)

    def _raise_if_calm(self) -> None:
        now = self._clock()
        steps = math.floor((now - self._calm_since) / INCREASE_EVERY)
        if steps > 0 and self.per_minute < self.configured:
            raised = self.per_minute + steps * INCREASE_STEP * self.configured
            self.per_minute = min(self.configured, raised)
            self._calm_since += steps * INCREASE_EVERY
        elif steps > 0:
            self._calm_since = now

    async def _take_shared(self) -> None:
        assert self.shared is not None
        async with self._sharing:
            if self._granted == 0:
                chunk = max(1, math.ceil(self.per_minute / 60.0 * CHUNK_SECONDS))
                await self.shared.take(chunk)
                self._granted = chunk
            self._granted -= 1
