"""JobSpec: one experiment of a sweep, ready for a platform to run."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from caliban_flows.spec.experiment import Experiment, ExperimentConfig, to_argv
from caliban_flows.spec.labels import job_labels


@dataclass(frozen=True)
class JobSpec:
    index: int  # 1-based, as Caliban numbered jobs
    name: str  # "<job name>_<index>", e.g. caliban_totoro_3
    args: tuple[str, ...]  # script args after `--`, then the experiment's flags
    experiment: Mapping[str, object] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


def job_key(xgroup: str, args: Sequence[str], occurrence: int = 0) -> str:
    """A deterministic key for one experiment of a group, the same on every resubmission.

    `occurrence` tells identical experiments of one submission apart (Caliban ran each).
    """
    text = "\0".join([xgroup, str(occurrence), *args])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def job_keys(xgroup: str, jobs: Sequence[JobSpec]) -> list[str]:
    seen: dict[tuple[str, ...], int] = {}
    keys = []
    for job in jobs:
        n = seen.get(job.args, 0)
        seen[job.args] = n + 1
        keys.append(job_key(xgroup, job.args, n))
    return keys


def experiment_key(
    xgroup: str, recipe: str, args: Sequence[str], occurrence: int = 0, user: str = ""
) -> str:
    """An experiment of a group: what it runs (`recipe`: the project folder or image, and the
    entry point) with these args. The same on every platform and every resubmission; another
    `user`'s group of the same name is another experiment (their jobs never merge)."""
    owner = ["user", user] if user else []
    text = "\0".join(["experiment", *owner, xgroup, recipe, str(occurrence), *args])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def runs_what(command: Sequence[str]) -> str:
    """What a submission's experiments run: the entry point's command. The image is not part
    of it: a rebuild after a code fix, a prebuilt tag of the same folder, or the same module
    on another platform are all the same experiment, as in Caliban's groups."""
    return " ".join(command)


def recipe(
    *,
    command: Sequence[str],
    image: str | None,
    build: Mapping | None,
    job_name: str,
    labels: Mapping[str, str],
    gpu: bool,
    tpu: bool,
) -> dict:
    """How a submission's jobs run, as the group records it: the entry point's command, the
    image (and how to rebuild it), and what Caliban's labels are made of."""
    return {
        "command": list(command),
        "image": image,
        "build": dict(build) if build is not None else None,
        "job_name": job_name,
        "labels": dict(labels),
        "gpu": bool(gpu),
        "tpu": bool(tpu),
    }


def platform_key(experiment: str, platform: str) -> str:
    """A job: one experiment on one platform (its attempts share this key)."""
    return hashlib.sha256(f"{experiment}\0{platform}".encode()).hexdigest()[:20]


def planned_jobs(
    xgroup: str,
    specs: Sequence[JobSpec],
    *,
    recipe: str,
    platform: str,
    attempts: Mapping[str, int] | None = None,
    recipe_index: int = 0,
    user: str = "",
) -> list[dict]:
    """The group's record of each job: experiment, key, attempt, name, args and its recipe.

    `recipe` identifies what runs (see experiment_key); `attempts` maps a key to the attempt
    this submission makes (default 1).
    """
    attempts = attempts or {}
    seen: dict[tuple[str, ...], int] = {}
    out = []
    for spec in specs:
        n = seen.get(spec.args, 0)
        seen[spec.args] = n + 1
        experiment = experiment_key(xgroup, recipe, spec.args, n, user)
        key = platform_key(experiment, platform)
        out.append(
            {
                "experiment": experiment,
                "key": key,
                "attempt": attempts.get(key, 1),
                "name": spec.name,
                "args": list(spec.args),
                "recipe": recipe_index,
            }
        )
    return out


def default_job_name(user: str) -> str:
    return f"caliban_{user}"


def default_xgroup(user: str, now: datetime) -> str:
    return f"{user}-xgroup-{now:%Y-%m-%d-%H-%M-%S}"


def experiments_of(config: ExperimentConfig | None) -> Iterator[Experiment]:
    """Without a config there is exactly one experiment, with no flags."""
    if config is None:
        yield {}
    else:
        yield from config.experiments()


def job_specs(
    *,
    config: ExperimentConfig | None,
    script_args: Sequence[str],
    job_name: str,
    image: str,
    gpu_enabled: bool,
    tpu_enabled: bool,
    user_labels: Sequence[tuple[str, str]] = (),
) -> list[JobSpec]:
    """Every job of a submission; raises SpecError (e.g. too many labels) before any runs.

    Experiment flags are sorted by key, as Caliban 0.4.2 rendered them for jobs.
    """
    specs = []
    for index, exp in enumerate(experiments_of(config), 1):
        args = (*script_args, *to_argv(exp, sort_keys=True))
        labels = job_labels(
            job_name=job_name,
            image=image,
            gpu_enabled=gpu_enabled,
            tpu_enabled=tpu_enabled,
            user_labels=user_labels,
            args=args,
        )
        specs.append(JobSpec(index, f"{job_name}_{index}", args, exp, labels))
    return specs
