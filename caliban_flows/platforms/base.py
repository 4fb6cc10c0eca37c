"""The small protocol every execution platform (local Docker, Vertex AI, Kubernetes) speaks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from caliban_flows.spec.outputs import OutputPlace, job_folder

if TYPE_CHECKING:
    from caliban_flows.platforms.pacing import BudgetFactory

# Labels we put on every remote job, so one list call by xgroup finds them all again.
XGROUP_LABEL = "caliban.xgroup"
JOB_KEY_LABEL = "caliban.job_key"
ATTEMPT_LABEL = "caliban.attempt"


class JobState(str, Enum):
    """Caliban's job states; what `caliban status` prints."""

    QUEUED = "QUEUED"  # recorded, waiting for a --max_running slot; not submitted yet
    SUBMITTED = "SUBMITTED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        return self not in (JobState.QUEUED, JobState.SUBMITTED, JobState.RUNNING)


@dataclass(frozen=True)
class JobRequest:
    """Everything a platform needs to start one attempt of one experiment."""

    xgroup: str
    key: str
    attempt: int
    name: str
    image: str
    args: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu: bool = False
    run_args: tuple[str, ...] = ()  # platform-specific extras, e.g. --docker_run_args
    # The values of secret script args, by the name `args` refers to them with: put back only
    # in the command the platform runs (command_args), never in what is printed or labelled.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # The root of the group's output folders, as its run recorded it (an OutputPlace record);
    # empty: the job gets no output folder.
    outputs: Mapping[str, str] = field(default_factory=dict)

    def output_place(self) -> OutputPlace | None:
        return OutputPlace.of(self.outputs)

    def output_folder(self) -> str:
        """This attempt's folder under the output root: `<xgroup>/<name>-<key8>/<attempt>`."""
        return job_folder(self.xgroup, self.name, self.key, self.attempt)

    def command_args(self) -> tuple[str, ...]:
        """The args the job runs with: every secret reference replaced by its value. A request
        made without values (what a dry run prints) keeps the references."""
        from caliban_flows.spec.secret_args import references, reveal

        if not self.secrets or not references(self.args):
            return self.args
        return tuple(reveal(self.args, self.secrets.__getitem__))

    @classmethod
    def of(
        cls,
        xgroup: str,
        recipe: Mapping,
        job: Mapping,
        placement: Mapping | None = None,
        secrets: Mapping[str, str] | None = None,
    ):
        """One recorded job of a group, run by its recipe on the run's placement.

        Caliban's labels are made here from the recipe and the job's args; jobs recorded
        before recipes existed carry their own labels, GPU mode and docker run args.
        """
        from caliban_flows.spec.labels import job_labels

        placement = placement or {}
        image = recipe.get("image") or ""
        labels = job.get("labels")
        if labels is None:
            labels = job_labels(
                job_name=recipe.get("job_name") or "caliban",
                image=image,
                gpu_enabled=bool(recipe.get("gpu")),
                tpu_enabled=bool(recipe.get("tpu")),
                user_labels=list((recipe.get("labels") or {}).items()),
                args=tuple(job["args"]),
            )
        return cls(
            xgroup=xgroup,
            key=job["key"],
            attempt=job["attempt"],
            name=job["name"],
            image=image,
            args=tuple(job["args"]),
            labels=labels,
            gpu=bool(job.get("gpu", placement.get("gpu", False))),
            run_args=tuple(job.get("run_args", placement.get("run_args", ()))),
            secrets=secrets or {},
            outputs=placement.get("outputs") or {},
        )


@dataclass(frozen=True)
class RemoteJob:
    """A platform's view of one job: the truth about its state."""

    key: str
    attempt: int
    remote_id: str
    state: JobState
    exit_code: int | None = None
    console_url: str | None = None
    detail: str | None = None  # the platform's word on a failure, e.g. Vertex's error message
    # Why the infrastructure, not the job's code, ended it (Spot preemption, stockout, a lost
    # VM or node); None when it ended on its own. Such a job may be restarted (--max_restarts).
    infra: str | None = None
    # What the platform itself already restarted inside this job, oldest first, one reason
    # each (a Kubernetes Job replaces a disrupted pod on its own).
    restarts: tuple[str, ...] = ()


class Platform(Protocol):
    """What the engine, reconcile rounds and `caliban status` call on every platform."""

    name: str

    async def submit_all(
        self,
        requests: Sequence[JobRequest],
        *,
        max_qps: float,
        on_job: Callable[[RemoteJob, bool], None] = ...,
        budgets: BudgetFactory | None = None,
    ) -> list[RemoteJob]:
        """Start every job the platform lacks (never a second one for a key and attempt);
        every request's remote job, in order. `on_job(job, new)` as each becomes known.
        A platform with per-minute quotas shares them through `budgets` (pacing.py)."""
        ...

    def poll(self, xgroup: str) -> list[RemoteJob]:
        """Every job of the group, in one (paged) list call."""
        ...

    def cancel(self, remote_ids: Sequence[str]) -> None:
        """Stop these jobs; already finished ones are left alone."""
        ...

    def logs(self, remote_id: str, *, follow: bool = False) -> Iterator[bytes]:
        """The job's output, optionally following it until the job ends."""
        ...


def first_line(error: BaseException) -> str:
    """The first line of an error's message; its type's name when it has none."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
