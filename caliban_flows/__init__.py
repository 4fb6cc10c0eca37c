"""caliban-flows: Caliban's reproducible Docker experiments, rebuilt on Prefect 3."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas

__version__ = "0.1.0"


def results(
    xgroup: str,
    *,
    sort: str | None = None,
    top: int | None = None,
    objective: str | None = None,
    user: str | None = None,
) -> pandas.DataFrame:
    """The results of an experiment group as `caliban results --xgroup XGROUP` shows them:
    one row per job (its latest attempt), its args and its metrics as typed columns, best
    first under the objective the group was submitted with.

    `sort`: `METRIC`, `METRIC:max` (largest first) or `METRIC:min`; `top`: the first N rows;
    `objective`: `METRIC:max|min` in place of the recorded one; `user`: another user's group
    (default: your own).
    """
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.spec.objective import parse_objective
    from caliban_flows.state.reading import group_table
    from caliban_flows.state.results import arranged

    order = parse_objective(sort, "sort") if sort else None
    goal = parse_objective(objective, "objective") if objective else None
    runs, table = group_table(xgroup, users=frozenset({user or current_user()}))
    return arranged(table, runs, order, goal, top, ("sort", "objective"))[0]
