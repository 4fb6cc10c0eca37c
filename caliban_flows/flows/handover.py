"""Whether a group flow may end its part at RUNNING ("Submitted"): only when the loop that runs
it stops there (flows.group_runs.run_here). Its own module: the flow and that loop both need it,
and neither may import the other at load time."""

from __future__ import annotations

from contextvars import ContextVar

from caliban_flows.state.background import QUEUED  # a run left for the background submitter

SUBMITTED = "Submitted"  # a remote run whose jobs are all with their platform
HANDS_OVER: ContextVar[bool] = ContextVar("caliban_hands_over", default=False)


def hands_over() -> bool:
    """Under `run_here`; elsewhere (a runner carrying out the UI's Retry) the flow waits for
    its jobs."""
    return HANDS_OVER.get()


def handed_over(state) -> bool:
    """The terminal's part is done: every job with its platform, or with the runner."""
    if state is None:
        return False
    return (state.is_running() and state.name == SUBMITTED) or (
        state.is_scheduled() and state.name == QUEUED
    )
