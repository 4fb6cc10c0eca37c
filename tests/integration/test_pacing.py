"""Quota-true pacing: a pace never sends more than its quota in any 60 s window, slows down on
RESOURCE_EXHAUSTED and recovers; budgets in a real Prefect server are shared by every taker;
the Vertex adapter keeps to the quotas the emulator enforces."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import threading

import pytest

from caliban_flows.platforms.pacing import Pace, burst, even_pace, shared_slots
from caliban_flows.state import prefect_api
from caliban_flows.state.budgets import budget_name, prefect_budgets
from tests.prefect_http import own_server


class FakeTime:
    """A clock that moves only when a pace sleeps: the test runs in no time, the same way
    on any machine."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def busiest(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    return max(
        (bisect.bisect_right(times, t + window - 1e-9) - i for i, t in enumerate(times)),
        default=0,
    )


def starts(pace: Pace, clock: FakeTime, calls: int, on_call=None) -> list[float]:
    async def go() -> list[float]:
        out = []
        for i in range(calls):
            async with pace:
                out.append(clock())
                if on_call is not None:
                    on_call(i, pace)
        return out

    return asyncio.run(go())


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr("caliban_flows.platforms.pacing.asyncio.sleep", fake.sleep)
    return fake


@pytest.mark.parametrize("quota", [60.0, 300.0, 600.0])
def test_a_pace_never_exceeds_its_quota_in_any_minute(clock, quota):
    pace = Pace(quota, clock=clock)
    times = starts(pace, clock, 1000)
    assert busiest(times) <= quota
    # and is not needlessly slow: a burst, then the even pace
    span = times[-1] - times[0]
    expected = (1000 - burst(quota)) / even_pace(quota) * 60.0
    assert span == pytest.approx(expected, rel=0.01)
    assert span <= 1000 / quota * 60.0 * 1.05


def test_resource_exhausted_slows_the_pace_then_it_recovers(clock):
    pace = Pace(600.0, clock=clock)

    def quota_runs_out(i: int, pace: Pace) -> None:
        if 100 <= i < 105:  # a quota refuses every call over it: the 5th refusal cuts the pace
            pace.exhausted()
        else:
            pace.answered()

    times = starts(pace, clock, 400, quota_runs_out)
    assert pace.exhaustions == 5
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # refusals in a row hold the pace back, twice as long each time
    assert gaps[100:104] == pytest.approx([0.102 * 2**k for k in range(4)], rel=0.05)
    # then it goes on slower than before (cut to 70%, then raised a step per 2 s of calm)
    full = 60.0 / even_pace(600.0)
    assert gaps[106] > full * 1.25
    # and it climbs back to the full quota once calm
    assert pace.per_minute == 600.0
    assert gaps[-1] == pytest.approx(60.0 / even_pace(600.0), rel=0.01)


def test_a_429_now_and_then_is_retried_without_slowing_down(clock):
    pace = Pace(600.0, clock=clock)

    def scattered(i: int, pace: Pace) -> None:
        if i % 10 == 0:
            pace.exhausted()
        else:
            pace.answered()

    times = starts(pace, clock, 300, scattered)
    assert pace.exhaustions == 30 and pace.per_minute == 600.0
    assert times[-1] - times[0] < 300 / 600.0 * 60.0 * 1.2


def test_repeated_refusals_converge_below_the_real_quota(clock):
    """Told 600 a minute, the platform allows 300: refusals bring the pace under 300."""
    pace = Pace(600.0, clock=clock)
    accepted: list[float] = []

    def platform(i: int, pace: Pace) -> None:
        now = clock()
        if len(accepted) - bisect.bisect_right(accepted, now - 60.0) >= 300:
            pace.exhausted()
        else:
            accepted.append(now)
            pace.answered()

    starts(pace, clock, 1500, platform)
    refused = 1500 - len(accepted)
    assert refused / 1500 < 0.10
    span = accepted[-1] - accepted[0]
    assert span <= (len(accepted) / 300 * 60) * 1.3


# --------------------------------------------------------------------------- shared budgets


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with own_server(tmp_path_factory.mktemp("budget-home")) as url:
        yield url


def test_two_takers_share_one_budget(api):
    """Two submissions (each in its own thread and event loop, as two processes would be)
    pace themselves at the full quota each; the Prefect budget keeps them to it together."""
    quota, calls, window = 1200.0, 150, 5.0
    granted: list[float] = []
    lock = threading.Lock()

    def submission() -> None:
        import time

        with prefect_budgets(api) as budgets:
            pace = Pace(quota, budgets("vertex-submit", "p:r", quota))

            async def go() -> None:
                for _ in range(calls):
                    async with pace:
                        with lock:
                            granted.append(time.monotonic())

            asyncio.run(go())

    threads = [threading.Thread(target=submission) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 2 * calls
    # what the budget lets through in any `window` seconds: a burst, then its decay
    bound = shared_slots(quota) + window * quota / 60.0
    # each pace alone would allow about twice that
    assert busiest(granted, window) <= bound + 1
    with prefect_api.client(api) as http:
        limit = http.get(f"/v2/concurrency_limits/{budget_name('vertex-submit', 'p:r')}")
        body = limit.raise_for_status().json()
    assert body["limit"] == shared_slots(quota)
    assert body["slot_decay_per_second"] == pytest.approx(quota / 60.0)


def test_a_new_quota_replaces_the_budgets_old_one(api):
    with prefect_budgets(api) as budgets:
        budgets("vertex-submit", "q:r", 60.0)
    with prefect_budgets(api) as budgets:
        budgets("vertex-submit", "q:r", 600.0)
    with prefect_api.client(api) as http:
        body = http.get(f"/v2/concurrency_limits/{budget_name('vertex-submit', 'q:r')}").json()
    assert body["limit"] == shared_slots(600.0)


def test_a_lower_quota_does_not_inherit_the_higher_ones_taken_slots(api):
    """A budget spent at 6,000 a minute, then asked at 60: its 200 taken slots would free at
    one a second; scaled to the new limit, the next take waits at most the new budget's worth."""
    name = budget_name("vertex-submit", "low:r")
    with prefect_budgets(api) as budgets:
        asyncio.run(budgets("vertex-submit", "low:r", 6000.0).take(shared_slots(6000.0)))
    with prefect_budgets(api) as budgets:
        lower = budgets("vertex-submit", "low:r", 60.0)
        with prefect_api.client(api) as http:
            body = http.get(f"/v2/concurrency_limits/{name}").raise_for_status().json()
        assert body["limit"] == shared_slots(60.0)
        assert body["active_slots"] <= shared_slots(60.0)
        asyncio.run(lower.take(1))
    assert lower.waits <= shared_slots(60.0)


def test_a_budget_prefect_cannot_grant_leaves_the_submission_at_its_own_pace(
    tmp_path_factory, capsys
):
    """The server gone mid-submission: the calls go on at the pace, one warning is printed,
    and the budget is not asked again at once (each ask would cost the client's retries)."""
    server = contextlib.ExitStack()
    url = server.enter_context(own_server(tmp_path_factory.mktemp("gone-home")))
    with prefect_budgets(url) as budgets:
        budget = budgets("vertex-submit", "gone:r", 600.0)
        pace = Pace(600.0, budget)

        async def go(calls: int) -> int:
            done = 0
            for _ in range(calls):
                async with pace:
                    done += 1
            return done

        assert asyncio.run(go(5)) == 5
        assert budget.outages == 0
        server.close()  # stops the server
        assert asyncio.run(go(40)) == 40
    assert budget.outages == 1
    err = capsys.readouterr().err
    assert err.count("did not answer for the shared API budget") == 1, err
    assert "submitting at this process's own pace" in err


def test_a_budget_lowered_by_another_submission_meanwhile_is_asked_within_its_new_limit(api):
    """Seen in a full run: two submissions to one project with different quotas. The second
    set the budget to 2 slots while the first still asked for a second's worth at 6,000 a
    minute, and Prefect's 422 ('Slots requested is greater than the limit') failed it."""
    with prefect_budgets(api) as first, prefect_budgets(api) as second:
        high = first("vertex-submit", "both:r", 6000.0)
        second("vertex-submit", "both:r", 60.0)  # the newest word wins: 2 slots
        asyncio.run(high.take(shared_slots(6000.0)))  # raised HTTPStatusError 422 before
    assert high.outages == 0  # it was granted, within the lower limit, not left alone


def test_a_budget_that_cannot_be_set_up_leaves_the_submission_at_its_own_pace(
    tmp_path_factory, capsys
):
    """Seen in a full run: Prefect answered 503 when a deployment's submission first set up
    its budget, and 'BudgetError: cannot set up the API budget' failed the whole group."""
    with contextlib.ExitStack() as server:
        url = server.enter_context(own_server(tmp_path_factory.mktemp("setup-home")))
    with prefect_budgets(url) as budgets:  # the server is gone before the budget is made
        budget = budgets("vertex-manage", "setup:r", 600.0)
        asyncio.run(budget.take(1))
    assert budget.outages == 1
    err = capsys.readouterr().err
    assert err.count("did not answer for the shared API budget") == 1, err
