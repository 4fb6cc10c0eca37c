"""The read side: experiment groups and their jobs, from Prefect, reconciled with the platform.

Each submission is a flow run tagged `xgroup:<name>` whose `jobs` parameter lists its jobs;
the platform (one list call per group) says what each job is doing now.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from caliban_flows.platforms.base import JobState, RemoteJob, first_line
from caliban_flows.server.owner import owner_of, starting_again
from caliban_flows.state import prefect_api
from caliban_flows.state.users import belongs, user_of

FLOW_NAME = "caliban-experiment-group"
GROUP_DEPLOYMENT = "caliban-group"  # every group run is made from it (flows.group_runs)
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
    state_name: str = ""  # e.g. "Submitted": a remote run whose jobs are all handed over
    owner: str | None = None  # the process that runs it (server.owner): host:pid:start
    user: str | None = None  # who submitted it (state.users); None: recorded before users
    starting_again: bool = False  # retried, and no process has claimed it yet (server.owner)
    # Submitted by the runner, not the terminal (state/background.py): jobs not on the
    # platform yet are QUEUED, not lost.
    background: bool = False

    def recipe_of(self, job: dict) -> dict:
        return self.recipes[job.get("recipe", 0)]

    @property
    def image(self) -> str | None:
        return self.recipes[0].get("image") if self.recipes else None

    @property
    def command(self) -> list[str]:
        return list(self.recipes[0].get("command") or []) if self.recipes else []


def read_group_runs(
    http,
    xgroup: str | None = None,
    *,
    tags: Iterable[str] = (),
    states: Iterable[str] = (),
    users: Collection[str] | None = None,
) -> list[GroupRun]:
    """Every caliban flow run (of one group, with these tags and states, of these users, if
    given), oldest first, paged, with the jobs each recorded.

    `http` is an httpx.Client on the Prefect API: its REST filter is one request per 200 runs,
    and skipping the `prefect` import saves more than a second per `caliban status`.
    """
    wanted = ["caliban", *([f"xgroup:{xgroup}"] if xgroup else []), *tags]
    runs_filter: dict = {"tags": {"all_": wanted}}
    if states:
        runs_filter["state"] = {"type": {"any_": list(states)}}
    body = {"flows": {"name": {"any_": [FLOW_NAME]}}, "flow_runs": runs_filter}
    runs = [r for r in prefect_api.paged_runs(http, body) if belongs(r.get("tags"), users)]
    ordered = sorted(runs, key=lambda run: run.get("created") or "")
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
        # A local run's engine is asked first; its final record only fills in jobs without a
        # container (Caliban 0.4.2's imported ones, state.history_import), even during a rerun.
        local = not is_remote(run)
        ended = final.get(run.flow_run_id) if local or run.state in SETTLED_RUN_STATES else None
        run_jobs = jobs.get(run.flow_run_id, []) if run.version >= 2 else run.jobs
        out.append(
            replace(
                run,
                jobs=run_jobs,
                final=(_final(ended) if local else _covering(_final(ended), run_jobs))
                if ended is not None
                else run.final,
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
    }
    runs = prefect_api.paged_runs(http, body)
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
        state_name=state.get("name") or "",
        owner=owner_of(run.get("tags")),
        user=user_of(run.get("tags")),
        starting_again=starting_again(run),
        background=BACKGROUND_TAG in (run.get("tags") or ()),
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


BACKGROUND_TAG = "caliban:background"  # on a run the background submitter submits
FINAL_KEY = "caliban_final_jobs"  # where runs settled before records.FINAL_TYPE kept it


def _covering(final: tuple[RemoteJob, ...] | None, jobs: list[dict]):
    """A final record is the run's last word only if it names every attempt the run
    recorded: one written before a retry round added attempts is not (ask the platform)."""
    if final is None:
        return None
    named = {(j.key, j.attempt) for j in final}
    return final if all((j["key"], j["attempt"]) in named for j in jobs) else None


def _final(jobs) -> tuple[RemoteJob, ...] | None:
    if not isinstance(jobs, list):
        return None
    try:
        return tuple(
            RemoteJob(
                **{**j, "state": JobState(j["state"]), "restarts": tuple(j.get("restarts") or ())}
            )
            for j in jobs
        )
    except (TypeError, ValueError, KeyError):
        return None  # not ours, or from another version: ask the platform


def final_rows(jobs: Iterable[RemoteJob]) -> list[dict]:
    """A settled run's jobs, as the platform reported their end (records.final_artifact)."""
    fields = ("key", "attempt", "remote_id", "exit_code", "console_url", "detail", "infra")
    return [
        {**{f: getattr(j, f) for f in fields}, "state": j.state.value, "restarts": list(j.restarts)}
        for j in jobs
    ]


def is_remote(run: GroupRun) -> bool:
    from caliban_flows.platforms import registry

    return registry.get(run.platform).remote


def where(run: GroupRun) -> tuple:
    """What one platform list call covers: the platform, its location, the group."""
    from caliban_flows.platforms import registry

    return (run.platform, *registry.get(run.platform).place(run.placement or {}), run.xgroup)


Remote = dict[tuple, dict[tuple[str, int], RemoteJob]]
POLL_DEADLINE = 10.0  # seconds all places together may take to answer one round


class Unreached(dict):
    """A place that did not answer (no engine, no credentials, a deleted cluster, offline):
    no job of it is known this round, and `reason` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


def remote_jobs(runs: Iterable[GroupRun], poll: Callable[[GroupRun], list[RemoteJob]],
                deadline: float | None = POLL_DEADLINE,
                connect: Callable[[GroupRun], object] | None = None) -> Remote:  # fmt: skip
    """The platforms' view of the runs' jobs: one `poll(run)` per place and group, all places
    at once. A place that fails, or has not answered after `deadline` seconds, is Unreached.
    `connect(run)`, if given, opens each place's client first, one after another: client
    libraries import then, before the clock starts, and not in several threads at once.

    A place whose runs all settled with their jobs' end recorded is not asked again.
    """
    places: dict[tuple, list[GroupRun]] = {}
    for run in runs:
        places.setdefault(where(run), []).append(run)
    remote: Remote = {}
    asked: dict[tuple, GroupRun] = {}
    for place, mine in places.items():
        # Nothing to ask where every run recorded its jobs' end, or recorded no job at all.
        if all((r.final is not None or not r.jobs) and is_remote(r) for r in mine):
            remote[place] = {(j.key, j.attempt): j for r in mine for j in r.final or ()}
        else:
            asked[place] = mine[0]
    for place, run in list(asked.items()):
        try:
            if connect is not None:
                connect(run)
        except Exception as e:  # e.g. no engine, a kubeconfig without the recorded context
            remote[place] = Unreached(first_line(e))
            del asked[place]
    remote.update(_poll_all(asked, poll, deadline))
    return remote


def _poll_all(asked: dict[tuple, GroupRun], poll, deadline: float | None) -> Remote:
    """Each place's jobs, polled in daemon threads: one that hangs past the deadline is left
    behind (and cannot hold the process open at exit)."""
    import threading
    import time

    answers: Remote = {}
    lock = threading.Lock()

    def ask(place: tuple, run: GroupRun) -> None:
        try:
            found: dict = Found(poll(run))
        except Exception as e:  # any failure of one place is that place's alone
            found = Unreached(first_line(e))
        with lock:
            answers[place] = found

    if len(asked) == 1 and deadline is None:  # nothing to wait for in parallel
        [(place, run)] = asked.items()
        ask(place, run)
        return answers
    threads = [threading.Thread(target=ask, args=item, daemon=True) for item in asked.items()]
    for thread in threads:
        thread.start()
    end = None if deadline is None else time.monotonic() + deadline
    for thread in threads:
        thread.join(None if end is None else max(0.0, end - time.monotonic()))
    with lock:
        out = dict(answers)
    for place, run in asked.items():
        if place not in out:
            out[place] = Unreached(
                f"{run.platform} did not answer within {deadline:g} s for {run.xgroup!r}"
            )
    return out


class Found(dict):
    """A place's jobs by (key, attempt), and the extra remote jobs some of them have: two
    jobs for one key and attempt, made by an older version or by hand."""

    def __init__(self, jobs: Iterable[RemoteJob]) -> None:
        super().__init__()
        self.extra: dict[tuple[str, int], list[RemoteJob]] = {}
        for job in jobs:
            key = (job.key, job.attempt)
            if key in self:  # keep a live one as the job, so its state shows
                kept = self[key]
                if kept.state.terminal and not job.state.terminal:
                    kept, job = job, kept
                self[key] = kept
                self.extra.setdefault(key, []).append(job)
            else:
                self[key] = job


def unreached(remote: Remote) -> list[str]:
    """One line per place that did not answer."""
    return list(dict.fromkeys(v.reason for v in remote.values() if isinstance(v, Unreached)))


def job_rows(runs: Iterable[GroupRun], remote: Remote) -> list[dict]:
    """One row per job attempt, its state taken from the platform.

    A job recorded by several runs (a submission run again after a crash) is one row, the
    newest run's.
    """
    runs = list(runs)
    rows: dict[tuple[str, str, int], dict] = {}
    for run in runs:
        seen = remote[where(run)]
        lost = seen.reason if isinstance(seen, Unreached) else None
        ended = {(j.key, j.attempt): j for j in run.final or ()}
        for job in run.jobs:
            found = seen.get((job["key"], job["attempt"])) or ended.get(
                (job["key"], job["attempt"])
            )
            state = JobState.UNKNOWN if lost else _state(run, found)
            recipe = run.recipe_of(job)
            rows[run.xgroup, job["key"], job["attempt"]] = {
                "xgroup": run.xgroup,
                "user": run.user,
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
                "detail": lost or (found.detail if found else None),
                # why --max_restarts started this attempt; None for a first attempt
                "restart_reason": job.get("restart_reason"),
                # what the platform restarted inside it (a Kubernetes Job's replaced pods)
                "restarts": list(found.restarts) if found else [],
                # Other remote jobs for this key and attempt: listed, and stopped with it.
                "duplicates": [
                    j.remote_id
                    for j in getattr(seen, "extra", {}).get((job["key"], job["attempt"]), [])
                ],
                "image": recipe.get("image"),
                "command": list(recipe.get("command") or []),
                "created": job.get("created") or run.created,
                "flow_run_id": run.flow_run_id,
            }
    return list(rows.values())


def _state(run: GroupRun, found: RemoteJob | None) -> JobState:
    stopped = run.state in ("CANCELLED", "CANCELLING") or run.message == STOPPED_MESSAGE
    if found is None:
        # Not started (or its container was removed): only Prefect knows.
        if stopped:
            return JobState.STOPPED
        if run.state not in ("RUNNING", "PENDING", "SCHEDULED"):
            return JobState.UNKNOWN
        # A capped remote group submits its jobs as slots free; a large one in the background.
        queued = (run.limit or run.background) and is_remote(run)
        return JobState.QUEUED if queued else JobState.SUBMITTED
    if stopped and found.state is JobState.FAILED:
        return JobState.STOPPED
    return found.state


def newest_attempts(jobs: Iterable[dict]) -> list[dict]:
    """The newest recorded attempt of each job key."""
    newest: dict[str, dict] = {}
    for job in jobs:
        if job["key"] not in newest or job["attempt"] > newest[job["key"]]["attempt"]:
            newest[job["key"]] = job
    return list(newest.values())


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
