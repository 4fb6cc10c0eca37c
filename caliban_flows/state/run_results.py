"""A group run's results as its Prefect artifacts and its `caliban.group.results` event show
them: every job's latest attempt with its args and metrics (state.results), and the best job
under the objective the run was submitted with. Read once per publish, and never fatal to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caliban_flows.platforms.base import first_line
from caliban_flows.spec.objective import Objective

if TYPE_CHECKING:
    from caliban_flows.state.groups import GroupRun
    from caliban_flows.state.results import Adapters

CONSOLE_STORAGE = "https://console.cloud.google.com/storage/browser/"
# The results last read for each run in this process, by its jobs' states then: the reconcile
# service publishes every active run each round, and reads its metrics again only once a job
# changed state (the artifact is refreshed as jobs finish, not every few seconds).
_READ: dict[str, tuple[frozenset, RunResults]] = {}


@dataclass(frozen=True)
class RunResults:
    rows: list[dict]  # one per job, the columns of state.results.frame, cells as JSON takes them
    objective: Objective | None
    best: dict | None = None  # name, args, metric, value, outputs, outputs_url
    error: str | None = None  # why the metrics could not be read: rows is empty then

    @property
    def reported(self) -> int:
        """How many jobs reported any metric."""
        return sum(1 for row in self.rows if row.get("metrics"))


def outputs_url(uri: str | None) -> str | None:
    """Where a browser opens a job's outputs: Cloud Storage's console browser for gs://;
    None for a host folder or a claim (shown as a path)."""
    from urllib.parse import quote

    if not uri or not uri.startswith("gs://"):
        return None
    return CONSOLE_STORAGE + quote(uri[len("gs://") :], safe="/")


def results_as_jobs_end(run: GroupRun, rows: Sequence[dict], platforms: Adapters) -> RunResults:
    """read_results, or what it said last in this process if no job of the run changed state
    since; results that could not be read are read again next time."""
    seen = frozenset(
        (r["key"], r["attempt"], r["state"]) for r in rows if r["flow_run_id"] == run.flow_run_id
    )
    last = _READ.get(run.flow_run_id)
    if last is not None and last[0] == seen:
        return last[1]
    results = read_results(run, rows, platforms)
    if results.error is None:
        _READ[run.flow_run_id] = (seen, results)
    return results


def read_results(run: GroupRun, rows: Sequence[dict], platforms: Adapters) -> RunResults:
    """The results of this run's jobs (`rows`: status rows, any run's); a metrics file or log
    that cannot be read becomes `error`, never an exception."""
    from caliban_flows.state.groups import latest_attempts
    from caliban_flows.state.results import (
        best,
        collect,
        frame,
        metric_column,
        objective_of,
        plain,
    )

    objective = objective_of(run)
    mine = latest_attempts([r for r in rows if r["flow_run_id"] == run.flow_run_id])
    try:
        table = frame(collect([run], mine, platforms))
    except Exception as e:  # a bucket or engine that does not answer: the rest still shows
        return RunResults([], objective, error=first_line(e))
    cells = [{k: plain(v) for k, v in row.items()} for row in table.to_dict("records")]
    top = best(table, objective) if objective is not None else None
    if objective is None or top is None:
        return RunResults(cells, objective)
    args = {r["name"]: list(r["args"]) for r in mine}
    column = metric_column(table, objective.metric, "--objective")
    chosen: dict[str, Any] = {
        "name": top["name"],
        "args": args.get(top["name"], []),
        "metric": objective.metric,
        "value": plain(top[column]),
        "outputs": top["output"],
        "outputs_url": outputs_url(top["output"]),
    }
    return RunResults(cells, objective, chosen)
