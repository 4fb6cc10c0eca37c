"""`caliban resubmit`: each chosen job's run is run again in place, as Retry in the UI does.

A group may hold jobs of several entry points, images and platforms (Caliban's experiment
groups did), in several runs. Each run with chosen jobs is run again here (flows.group_runs),
and reruns them as attempt N+1, each by its own recipe on its run's platform and placement,
its image rebuilt from the project folder's current code (flows.retry). Runs on remote
platforms go first; local ones then run in the terminal.
"""

from __future__ import annotations

from caliban_flows.spec.errors import CalibanError, SpecError


def resubmit(runs, rows: list[dict], *, credentials_file: str | None = None) -> int:
    """Rerun `rows` (status rows, each its job's latest attempt); 0 when all went well.
    `credentials_file` (--cloud_key): the key the reruns go with, recorded on their runs."""
    from caliban_flows.flows.engine import check_external_api, rerun_group
    from caliban_flows.platforms import registry

    check_external_api()
    by_id = {run.flow_run_id: run for run in runs}
    chosen: dict[str, list[tuple[str, int]]] = {}
    for row in rows:
        run = by_id.get(row["flow_run_id"])
        if run is None or run.version < 2:
            raise CalibanError(
                f"job {row['name']} was recorded by an older caliban: submit it again instead"
            )
        chosen.setdefault(run.flow_run_id, []).append((row["key"], row["attempt"]))
    busy = [i for i in chosen if _at_work(by_id[i])]
    if busy:  # before anything starts: nothing is rerun by halves
        raise CalibanError(
            f"{len(busy)} run(s) of xgroup {by_id[busy[0]].xgroup!r} are still at work "
            f"(e.g. {busy[0]}): resubmit once they have ended, or stop them first"
        )
    if credentials_file:
        _record_key(credentials_file, [by_id[i] for i in chosen])
    order = sorted(chosen, key=lambda i: not registry.get(by_id[i].platform).remote)
    code = 0
    for flow_run_id in order:
        run = by_id[flow_run_id]
        code = max(code, rerun_group(run.xgroup, run.platform, flow_run_id, chosen[flow_run_id]))
    return code


def _at_work(run) -> bool:
    """A run a process is still running: not ended, and not handed over to its platform."""
    from caliban_flows.state.groups import SETTLED_RUN_STATES

    return run.state not in SETTLED_RUN_STATES and run.state_name != "Submitted"


def _record_key(path: str, runs: list) -> None:
    """The key in each run's placement (its path, never its content), so the rerun, and the
    status and stop calls after it, go with it. A run whose platform takes no key refuses it."""
    from prefect.settings import PREFECT_API_URL

    from caliban_flows.state import prefect_api

    other = [run for run in runs if "credentials_file" not in (run.placement or {})]
    if other:
        raise SpecError(
            f"--cloud_key applies to jobs that run with a service-account key (Vertex AI); "
            f"{len(other)} of the chosen runs are on {other[0].platform}: resubmit without it"
        )
    with prefect_api.client(PREFECT_API_URL.value()) as http:
        for run in runs:
            got = http.get(f"/flow_runs/{run.flow_run_id}")
            got.raise_for_status()
            parameters = got.json()["parameters"]
            parameters["placement"] = {**parameters["placement"], "credentials_file": path}
            http.patch(
                f"/flow_runs/{run.flow_run_id}", json={"parameters": parameters}
            ).raise_for_status()
