"""A group's results as one table: each job's latest attempt, its args as typed columns and
the metrics it reported (its output folder's metrics files, else its logs' CALIBAN_METRICS
lines), on every platform. What `caliban results`, `caliban_flows.results()` and the run's
Prefect artifact show."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from caliban_flows.platforms import registry
from caliban_flows.platforms.base import JobState
from caliban_flows.spec.errors import CalibanError, SpecError
from caliban_flows.spec.objective import Objective, parse_objective
from caliban_flows.spec.outputs import OutputPlace, arg_columns, job_folder

if TYPE_CHECKING:
    import pandas

    from caliban_flows.platforms.base import Platform
    from caliban_flows.state.groups import GroupRun

LEAD = ("name", "state", "attempt", "metrics")  # first columns, in this order
# Where and how a job ran: left out when tables of one sweep on several platforms are compared.
PLATFORM_COLUMNS = ("platform", "output", "remote_id")
FINAL, LATEST = "final", "latest"  # the `metrics` column: ended, or still running


class Adapters(Protocol):
    """Where a run's platform adapter comes from (state.reconcile.Platforms), for its logs."""

    def get(self, run: GroupRun) -> Platform: ...


def objective_of(run: GroupRun) -> Objective | None:
    """The objective a run was submitted with; None if none, or unreadable (edited by hand)."""
    text = (run.placement or {}).get("objective")
    try:
        return parse_objective(str(text)) if text else None
    except SpecError:
        return None


def recorded_objective(runs: Iterable[GroupRun]) -> Objective | None:
    """The objective the newest run that records a readable one was submitted with."""
    for run in sorted(runs, key=lambda r: r.created, reverse=True):
        goal = objective_of(run)
        if goal is not None:
            return goal
    return None


def _place_of(run: GroupRun) -> OutputPlace | None:
    return OutputPlace.of((run.placement or {}).get("outputs"))


def collect(
    runs: Iterable[GroupRun],
    rows: Sequence[dict],
    platforms: Adapters,
    unread: Callable[[str], None] | None = None,
) -> list[dict]:
    """One record per job row given (latest attempts): its columns, args and metrics.

    Every run's metrics files are read in one go per output root; logs are read only for jobs
    that wrote no metrics file, on platforms whose logs hold the job's output.
    """
    from caliban_flows.platforms.outputs import folder_metrics, log_metrics

    by_run = {run.flow_run_id: run for run in runs}
    records: list[dict] = []
    mine: dict[str, list[tuple[dict, str]]] = {}
    read_now: list[tuple[dict, tuple[str, str, int, str | None]]] = []
    for row in rows:
        run = by_run[row["flow_run_id"]]
        place = _place_of(run)
        folder = job_folder(row["xgroup"], row["name"], row["key"], row["attempt"])
        record = {
            "name": row["name"],
            "state": row["state"],
            "attempt": row["attempt"],
            "metrics": "",
            "args": arg_columns(row["args"]),
            "values": {},
            "platform": row["platform"],
            "output": place.uri(folder) if place else None,
            "remote_id": row["remote_id"],
            "exit_code": row.get("exit_code"),
        }
        records.append(record)
        job = (run.flow_run_id, row["key"], row["attempt"], record["output"])
        if _ended(record) and job in _ENDED_VALUES:
            record["values"] = _ENDED_VALUES[job]
        else:
            mine.setdefault(run.flow_run_id, []).append((record, folder))
            read_now.append((record, job))
    skipped: set[str] = set()  # runs whose metrics could not be read this time
    for run_id, jobs in mine.items():
        run = by_run[run_id]
        place = _place_of(run)
        if place is not None:
            try:
                found = folder_metrics(place, [f for _, f in jobs], run.placement)
            except CalibanError as e:  # with `unread`: the other runs' metrics still show
                if unread is None:
                    raise
                unread(str(e))
                skipped.add(run_id)
                continue
            for record, folder in jobs:
                record["values"] = found.get(folder, {})
        silent = [r for r, _ in jobs if not r["values"] and r["remote_id"]]
        if silent and registry.get(run.platform).logs_hold_output:
            try:
                adapter = platforms.get(run)
            except Exception:  # its platform did not answer: already said, its jobs UNKNOWN
                skipped.add(run_id)
                continue
            said = log_metrics(adapter.logs, [r["remote_id"] for r in silent])
            for record in silent:
                record["values"] = said.get(record["remote_id"], {})
    if len(_ENDED_VALUES) > ENDED_KEPT:  # a long-lived `caliban serve` starts afresh
        _ENDED_VALUES.clear()
    for record, job in read_now:
        if _ended(record) and record["values"] and job[0] not in skipped:
            _ENDED_VALUES[job] = record["values"]
    for record in records:
        if record["values"]:
            record["metrics"] = FINAL if _ended(record) else LATEST
    return records


# What jobs that had ended reported, read once per process: the first `caliban results` after
# a remote group settles reads its metrics to publish the run's artifacts, then for the table;
# and `caliban serve` reads again, each round, the runs whose jobs changed state. A job that
# showed none (its log not readable yet, say) is read again next time.
ENDED_KEPT = 50_000
_ENDED_VALUES: dict[tuple[str, str, int, str | None], dict] = {}  # by run, job, attempt, folder


def _ended(record: dict) -> bool:
    """Its metrics are final: UNKNOWN (its platform did not answer) may still be running."""
    return JobState(record["state"]).terminal and record["state"] != JobState.UNKNOWN


def frame(records: Sequence[dict]) -> pandas.DataFrame:
    """The table: LEAD columns, then each arg, then each metric (renamed `NAME (metric)` if an
    arg or a lead column has its name), then the platform columns."""
    import pandas as pd

    arg_names = list(dict.fromkeys(k for r in records for k in r["args"]))
    metric_names = list(dict.fromkeys(k for r in records for k in r["values"]))
    taken = {*LEAD, *PLATFORM_COLUMNS, *arg_names}
    shown = {m: f"{m} (metric)" if m in taken else m for m in metric_names}
    flags = {a for a in arg_names if all(r["args"].get(a, True) is True for r in records)}
    table = []
    for r in records:
        row: dict[str, Any] = {c: r[c] for c in LEAD}
        for a in arg_names:  # a bare --flag left out of some jobs is False there, not missing
            row[a] = r["args"].get(a, False if a in flags else None)
        for m in metric_names:
            row[shown[m]] = r["values"].get(m)
        row.update({c: r[c] for c in PLATFORM_COLUMNS})
        table.append(row)
    columns = [*LEAD, *arg_names, *shown.values(), *PLATFORM_COLUMNS]
    return pd.DataFrame(table, columns=columns).convert_dtypes(dtype_backend="numpy_nullable")


def metric_column(df: pandas.DataFrame, metric: str, flag: str) -> str:
    for name in (metric, f"{metric} (metric)"):
        if name in df.columns and name not in LEAD and name not in PLATFORM_COLUMNS:
            return name
    known = [c for c in df.columns if c not in (*LEAD, *PLATFORM_COLUMNS)]
    raise SpecError(
        f"{flag}: no column {metric!r} in this group's results; "
        f"columns: {', '.join(known) or 'none (no job reported a metric yet)'}"
    )


def ordered(
    df: pandas.DataFrame, sort: Objective | None, top: int | None, flag: str = "--sort"
) -> pandas.DataFrame:
    """Sorted by a column (largest first for max; jobs without a value last), first `top`."""
    if sort is not None:
        column = metric_column(df, sort.metric, flag)
        df = df.sort_values(column, ascending=not sort.maximize, na_position="last",
                            kind="stable")  # fmt: skip
    if top is not None:
        df = df.head(top)
    return df.reset_index(drop=True)


def arranged(
    df: pandas.DataFrame,
    runs: Iterable[GroupRun],
    sort: Objective | None = None,
    objective: Objective | None = None,
    top: int | None = None,
    flags: tuple[str, str] = ("--sort", "--objective"),
) -> tuple[pandas.DataFrame, Objective | None]:
    """The table in the order `caliban results` shows it, and the objective in force: by
    `sort`, else by `objective`, else by the one the group was submitted with (left unsorted
    while no job has reported that metric yet); then the first `top` rows."""
    recorded = recorded_objective(runs) if objective is None else None
    goal = objective or recorded
    try:
        return ordered(df, sort or goal, top, flags[0] if sort else flags[1]), goal
    except SpecError:
        if sort is not None or recorded is None:
            raise
        return ordered(df, None, top), goal


def best(df: pandas.DataFrame, objective: Objective) -> Mapping[str, Any] | None:
    """The row of the best job under the objective; None when no job has that metric."""
    try:
        column = metric_column(df, objective.metric, "--objective")
    except SpecError:
        return None
    values = df[column].dropna()
    if values.empty:
        return None
    try:
        index = values.idxmax() if objective.maximize else values.idxmin()
    except TypeError:  # a column of words: no best
        return None
    return df.loc[index].to_dict()


def plain(value: Any) -> Any:
    """A cell as JSON and the Prefect UI take it: NA as None, numpy scalars as Python ones."""
    try:
        import pandas as pd

        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # a list or the like
        pass
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
