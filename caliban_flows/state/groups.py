"""The read side: experiment groups and their jobs, from Prefect, reconciled with the platform.

Each submission is a flow run tagged `xgroup:<name>` whose `jobs` parameter lists its jobs;
the platform (one list call per group) says what each job is doing now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from caliban_flows.platforms.base import JobState, RemoteJob
from caliban_flows.state import prefect_api

FLOW_NAME = "caliban-experiment-group"
ACTIVE_RUN_STATES = ("PENDING", "RUNNING", "CANCELLING")
SETTLED_RUN_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")
STOPPED_MESSAGE = "stopped by caliban stop"


@dataclass(frozen=True)
class GroupRun:
    """One submission of a group: a flow run, its platform and placement, its recipes, its jobs.

    Each job names its recipe (an index into `recipes`): the entry point, the image and how to
    rebuild it. Runs recorded before recipes existed have one recipe made from their parameters.
    """

    xgroup: str
    flow_run_id: str
    platform: str
    created: str
    state: str  # Prefect state type, e.g. RUNNING, COMPLETED, CANCELLED
    message: str
    recipes: list[dict]
    jobs: list[dict]
    # Where the jobs run: Vertex's project, region and machine; the cluster's context,
    # namespace and resources; local Docker's GPU and run args. No credentials.
    placement: dict | None = None
    # The platform's last word on every job, written when a remote run settled with all its
    # jobs ended: they cannot change any more, so status needs no platform call for them.
    final: tuple[RemoteJob, ...] | None = None
    limit: dict | None = None  # --max_running: the Prefect limit's name and the cap
    version: int = 2  # 1: jobs, image, command and build in the run's parameters

    def recipe_of(self, job: dict) -> dict:
        return self.recipes[job.get("recipe", 0)]

    @property
    def image(self) -> str | None:
        return self.recipes[0].get("image") if self.recipes else None

    @property
    def command(self) -> list[str]:
        return list(self.recipes[0].get("command") or []) if self.recipes else []


def read_group_runs(
    http, xgroup: str | None = None, *, tags: Iterable[str] = (), states: Iterable[str] = ()
) -> list[GroupRun]:
    """Every caliban flow run (of one group, with these tags and states, if given), oldest
    first, paged, with the jobs each recorded.

    `http` is an httpx.Client on the Prefect API: its REST filter is one request per 200 runs,
    and skipping the `prefect` import saves more than a second per `caliban status`.
    """
    wanted = ["caliban", *([f"xgroup:{xgroup}"] if xgroup else []), *tags]
    runs_filter: dict = {"tags": {"all_": wanted}}
    if states:
        runs_filter["state"] = {"type": {"any_": list(states)}}
    body = {
        "flows": {"name": {"any_": [FLOW_NAME]}},
        "flow_runs": runs_filter,
        "sort": "EXPECTED_START_TIME_ASC",
    }
    # A run created while paging lands last; one read twice is kept once.
    runs = {run["id"]: run for run in prefect_api.paged(http, "/flow_runs/filter", body)}
    ordered = sorted(runs.values(), key=lambda run: run.get("created") or "")
    return _with_jobs(http, [_group_run(run) for run in ordered])


def _with_jobs(http, runs: list[GroupRun]) -> list[GroupRun]:
    """Attach what the runs recorded in artifacts: their jobs, and a settled run's final word."""
    from dataclasses import replace

    from caliban_flows.state import records

    if not runs:
        return runs
    jobs, final = records.read(http, [r.flow_run_id for r in runs])
    out = []
    for run in runs:
        ended = final.get(run.flow_run_id) if run.state in SETTLED_RUN_STATES else None
        out.append(
            replace(
                run,
                jobs=jobs.get(run.flow_run_id, []) if run.version >= 2 else run.jobs,
                final=_final(ended) if ended is not None else run.final,
            )
        )
    return out


def active_xgroups(http) -> list[str]:
    """Groups with a run that is not over yet: what the reconcile service looks at."""
    body = {
        "flows": {"name": {"any_": [FLOW_NAME]}},
        "flow_runs": {
            "tags": {"all_": ["caliban"]},
            "state": {"type": {"any_": list(ACTIVE_RUN_STATES)}},
        },
        "sort": "EXPECTED_START_TIME_ASC",
    }
    runs = prefect_api.paged(http, "/flow_runs/filter", body)
    return list(dict.fromkeys((r.get("parameters") or {}).get("xgroup", "") for r in runs))


def _group_run(run: dict) -> GroupRun:
    params = run.get("parameters") or {}
    state = run.get("state") or {}
    created = (run.get("created") or "").replace("T", " ")[:19]
    platform = params.get("platform", "local")
    common = dict(
        xgroup=params.get("xgroup", ""),
        flow_run_id=run["id"],
        platform=platform,
        created=created,
        state=state.get("type", "UNKNOWN"),
        message=state.get("message") or "",
        limit=params.get("limit"),
    )
    if "recipes" in params:
        return GroupRun(
            **common,
            recipes=list(params.get("recipes") or []),
            jobs=[],
            placement=params.get("placement"),
        )
    # Recorded before recipes: one recipe for the whole run, the jobs in the parameters.
    jobs = [{**job, "experiment": job["key"], "recipe": 0} for job in params.get("jobs") or []]
    placement = params.get("cluster") if platform == "kubernetes" else params.get("vertex")
    if platform == "local":
        first = jobs[0] if jobs else {}
        placement = {"gpu": first.get("gpu", False), "run_args": first.get("run_args", [])}
    recipe = {"command": list(params.get("command") or []), "image": params.get("image"),
              "build": params.get("build")}  # fmt: skip
    return GroupRun(
        **common,
        recipes=[recipe],
        jobs=jobs,
        placement=placement,
        final=_final((state.get("data") or {}).get(FINAL_KEY)
                     if isinstance(state.get("data"), dict) else None),
        version=1,
    )  # fmt: skip


FINAL_KEY = "caliban_final_jobs"  # where runs settled before records.FINAL_TYPE kept it


def _final(jobs) -> tuple[RemoteJob, ...] | None:
    if not isinstance(jobs, list):
        return None
    try:
        return tuple(RemoteJob(**{**j, "state": JobState(j["state"])}) for j in jobs)
    except (TypeError, ValueError, KeyError):
        return None  # not ours, or from another version: ask the platform


def final_rows(jobs: Iterable[RemoteJob]) -> list[dict]:
    """A settled run's jobs, as the platform reported their end (records.final_artifact)."""
    fields = ("key", "attempt", "remote_id", "exit_code", "console_url", "detail")
    return [{**{f: getattr(j, f) for f in fields}, "state": j.state.value} for j in jobs]


def _remote(run: GroupRun) -> bool:
    from caliban_flows.platforms import registry

    return registry.get(run.platform).remote


def where(run: GroupRun) -> tuple:
    """What one platform list call covers: the platform, its location, the group."""
    from caliban_flows.platforms import registry

    return (run.platform, *registry.get(run.platform).place(run.placement or {}), run.xgroup)


Remote = dict[tuple, dict[tuple[str, int], RemoteJob]]


def remote_jobs(runs: Iterable[GroupRun], poll: Callable[[GroupRun], list[RemoteJob]]) -> Remote:
    """The platforms' view of the runs' jobs: one `poll(run)` per place and group.

    A place whose runs all settled with their jobs' end recorded is not asked again.
    """
    places: dict[tuple, list[GroupRun]] = {}
    for run in runs:
        places.setdefault(where(run), []).append(run)
    remote: Remote = {}
    for place, mine in places.items():
        if all(r.final is not None and _remote(r) for r in mine):
            remote[place] = {(j.key, j.attempt): j for r in mine for j in r.final}
        else:
            remote[place] = {(j.key, j.attempt): j for j in poll(mine[0])}
    return remote


def job_rows(runs: Iterable[GroupRun], remote: Remote) -> list[dict]:
    """One row per job attempt, its state taken from the platform.

    A job recorded by several runs (a submission run again after a crash) is one row, the
    newest run's.
    """
    runs = list(runs)
    rows: dict[tuple[str, str, int], dict] = {}
    for run in runs:
        seen = remote[where(run)]
        for job in run.jobs:
            found = seen.get((job["key"], job["attempt"]))
            state = _state(run, found)
            recipe = run.recipe_of(job)
            rows[run.xgroup, job["key"], job["attempt"]] = {
                "xgroup": run.xgroup,
                "experiment": job.get("experiment", job["key"]),
                "name": job["name"],
                "key": job["key"],
                "attempt": job["attempt"],
                "args": list(job["args"]),
                "platform": run.platform,
                "state": state.value,
                "exit_code": found.exit_code if found else None,
                "remote_id": found.remote_id if found else None,
                "console_url": found.console_url if found else None,
                "detail": found.detail if found else None,
                "image": recipe.get("image"),
                "command": list(recipe.get("command") or []),
                "created": run.created,
                "flow_run_id": run.flow_run_id,
            }
    return list(rows.values())


@dataclass(frozen=True)
class Settlement:
    """What a remote group's flow run needs so that Prefect tells the truth."""

    run: GroupRun
    state: str  # the Prefect state type to set: COMPLETED, FAILED or CANCELLED
    message: str
    cancel: tuple[str, ...] = ()  # remote jobs to cancel first
    final: tuple[RemoteJob, ...] | None = None  # every job ended: what to record for good


def settlements(runs: Iterable[GroupRun], remote: Remote) -> list[Settlement]:
    """Remote groups whose jobs all ended, or whose run was cancelled (e.g. in the UI)."""
    out = []
    for run in runs:
        if not _remote(run):  # a local run is its jobs' process: it settles itself
            continue
        seen = remote.get(where(run), {})
        found = [seen.get((j["key"], j["attempt"])) for j in run.jobs]
        ended = all(j is None or j.state.terminal for j in found)
        final = tuple(j for j in found if j is not None) if ended else None
        if run.state in ("CANCELLING", "CANCELLED"):
            live = tuple(j.remote_id for j in found if j is not None and not j.state.terminal)
            if live or run.state == "CANCELLING" or run.final is None:
                message = run.message or STOPPED_MESSAGE
                out.append(Settlement(run, "CANCELLED", message, live, final))
        elif run.state == "RUNNING" and found and all(j and j.state.terminal for j in found):
            failed = sum(1 for j in found if j.state is not JobState.SUCCEEDED)
            if failed:
                settled = "FAILED", f"{failed} of {len(found)} jobs failed"
            else:
                settled = "COMPLETED", f"{len(found)} jobs succeeded"
            out.append(Settlement(run, *settled, final=final))
    return out


def _state(run: GroupRun, found: RemoteJob | None) -> JobState:
    stopped = run.state in ("CANCELLED", "CANCELLING") or run.message == STOPPED_MESSAGE
    if found is None:
        # Not started (or its container was removed): only Prefect knows.
        if stopped:
            return JobState.STOPPED
        if run.state not in ("RUNNING", "PENDING", "SCHEDULED"):
            return JobState.UNKNOWN
        # A capped remote group submits its jobs as slots free.
        return JobState.QUEUED if run.limit and _remote(run) else JobState.SUBMITTED
    if stopped and found.state is JobState.FAILED:
        return JobState.STOPPED
    return found.state


def latest_attempts(rows: list[dict]) -> list[dict]:
    """The newest attempt of each experiment, with how many attempts it has had."""
    latest: dict[tuple[str, str], dict] = {}
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        k = (row["xgroup"], row["key"])
        counts[k] = counts.get(k, 0) + 1
        if k not in latest or row["attempt"] >= latest[k]["attempt"]:
            latest[k] = row
    return [{**row, "attempts": counts[k]} for k, row in latest.items()]
