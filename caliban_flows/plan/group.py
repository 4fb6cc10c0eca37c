"""The one planner: what a submission asks for (a CLI command's flags, or a deployment's
parameters) becomes a GroupPlan, the group engine's whole input.

It is the only code that expands the sweep, names the jobs, computes their keys, labels and
attempts, resolves defaults (gcloud, blocks, the environment) and validates the placement. It
builds and submits nothing, so bad input never half-submits.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SkipValidation

from caliban_flows.plan import placement as places
from caliban_flows.plan import project as sub
from caliban_flows.plan.options import SubmitOptions, options_for
from caliban_flows.spec.entrypoint import Entrypoint
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.experiment import ExperimentConfig


@dataclass(frozen=True)
class GroupRequest:
    """A submission as asked for, before any default is resolved."""

    platform: str
    module: str
    options: SubmitOptions | dict = field(default_factory=dict)
    script_args: Sequence[str] = ()
    experiment_config: ExperimentConfig | None = None
    xgroup: str | None = None  # None: a fresh name, as Caliban made one
    name: str | None = None  # the job name; None: caliban_<user>
    labels: Sequence[str] = ()  # KEY=VALUE
    image: str | None = None  # a prebuilt image: nothing is built
    # The project folder. None only for a deployment given a prebuilt image and no folder:
    # then the module is taken as the image has it, unchecked.
    root: str | None = None


ENGINE_ARGS = ("xgroup", "platform", "placement", "recipes", "jobs", "parallel", "wait", "limit")


class GroupPlan(BaseModel):
    """One submission of a group: every job with its recipe and where it runs."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    xgroup: str
    platform: str
    placement: dict
    recipes: list[dict]  # each job names one by index; an image of None is built first
    # experiment, key, attempt, name, args, recipe: made by planned_jobs, so not validated
    # again (a copy of each of 100,000 dicts would cost time and memory).
    jobs: SkipValidation[list[dict]]
    parallel: int = 1
    wait: bool = False
    limit: dict | None = None
    # What dry runs show and the engine uses, never recorded as such.
    specs: list[Any] = Field(default_factory=list, exclude=True)
    entrypoint: Any = Field(default=None, exclude=True)
    placed: Any = Field(default=None, exclude=True)
    # The values of secret script args (`--api_key X`), which the jobs' args name by
    # reference: the engine keeps them in Prefect Secret blocks before the run starts.
    secrets: dict[str, SecretStr] = Field(default_factory=dict, exclude=True)

    def group_args(self) -> dict:
        """The group engine's arguments (run_group)."""
        return {name: getattr(self, name) for name in ENGINE_ARGS}  # no copy of 100k jobs

    def with_image(self, image: str, index: int = 0) -> GroupPlan:
        recipes = [dict(r) for r in self.recipes]
        recipes[index]["image"] = image
        return self.model_copy(update={"recipes": recipes})


def plan_group(
    request: GroupRequest, *, probe: bool = True, checked: Callable[[], object] | None = None
) -> GroupPlan:
    """Check the whole request and plan every job; SpecError (one line) on any bad input.

    `probe`: consult the Docker engine and the cluster as a real submission must; a dry run
    passes False and touches nothing. `checked` runs once the command line itself is known
    good, before the probes (the CLI starts the Prefect server there, to overlap them).
    """
    from caliban_flows.plan.inputs import current_user
    from caliban_flows.spec.jobspec import (
        default_job_name,
        default_xgroup,
        job_specs,
        planned_jobs,
        recipe,
        runs_what,
    )
    from caliban_flows.spec.labels import parse_label
    from caliban_flows.spec.limits import limit_for
    from caliban_flows.spec.objective import parse_objective

    try:
        options = options_for(request.platform, request.options)
    except ValueError as e:
        raise SpecError(str(e)) from None
    user = current_user()
    job_name = request.name or default_job_name(user)
    if not job_name.strip():
        raise SpecError("--name must not be empty")
    xgroup = request.xgroup if request.xgroup is not None else default_xgroup(user, datetime.now())
    if not xgroup.strip():
        raise SpecError("--xgroup must not be empty")
    labels = tuple(parse_label(label) for label in request.labels)
    limit = limit_for(request.platform, xgroup, options.max_running, options.pool, user)
    objective = parse_objective(options.objective) if options.objective else None
    with sub.inside(request.root):
        entrypoint = _entrypoint(request.module, request.root)
        dirs = sub.check_dirs(options.dirs) if request.root is not None else ()
        if checked is not None:
            checked()
        placed = _place(request.platform, options, xgroup=xgroup, probe=probe)
        if objective is not None:  # what the run's results summary and `caliban results` use
            placed.placement["objective"] = str(objective)
        gpu, tpu = placed.gpu is not None, placed.tpu is not None
        specs = job_specs(
            config=request.experiment_config,
            script_args=[str(a) for a in request.script_args],
            job_name=job_name,
            image=request.image or sub.PLACEHOLDER_IMAGE,
            gpu_enabled=gpu,
            tpu_enabled=tpu,
            user_labels=list(labels),
        )
        build = None
        if request.image is None:  # rendered now: a bad input fails before anything starts
            if request.root is None:
                raise SpecError("give a prebuilt image or the project folder to build")
            build = {
                "dockerfile": sub.dockerfile(
                    gpu=gpu, extras=options.extras, dirs=dirs, entrypoint=entrypoint
                ),
                "root": str(Path(request.root).resolve()),
                "module": entrypoint.target,
                "gpu": gpu,
                "extras": list(options.extras),
                "dirs": list(dirs),
                "no_cache": options.no_cache,
                "registry": placed.registry,
                "registry_block": getattr(options, "registry_block", None),
                # The key file --cloud_key names: never sent to Docker (platforms.images).
                "credentials": _named_key(getattr(options, "cloud_key", None)),
            }
    made = recipe(command=entrypoint.command(), image=request.image, build=build,
                  job_name=job_name, labels=dict(labels), gpu=gpu, tpu=tpu)  # fmt: skip
    next_attempts = {key: n + 1 for key, n in placed.attempts.items()}
    jobs = planned_jobs(xgroup, specs, recipe=runs_what(entrypoint.command()),
                        platform=request.platform, attempts=next_attempts,
                        user=user)  # fmt: skip
    secrets = _hide_secret_args(xgroup, jobs)
    if secrets:  # what dry runs print is what the group records: references, not values
        specs = [replace(spec, args=tuple(job["args"])) for spec, job in zip(specs, jobs)]
    return GroupPlan(
        xgroup=xgroup,
        platform=request.platform,
        placement=placed.placement,
        recipes=[made],
        jobs=jobs,
        parallel=getattr(options, "parallel", 1),
        wait=getattr(options, "wait", False),
        limit=limit,
        specs=specs,
        entrypoint=entrypoint,
        placed=placed,
        secrets=secrets,
    )


def _hide_secret_args(xgroup: str, jobs: list[dict]) -> dict[str, SecretStr]:
    """Each job's secret arg values swapped for references, in place (its key was made from
    the values, so a rerun is the same job); the values, by reference name."""
    from caliban_flows.spec.secret_args import block_namer, hide

    name_for = block_namer(xgroup)
    kept: dict[str, SecretStr] = {}
    for job in jobs:
        job["args"], found = hide(job["args"], name_for)
        kept.update((name, SecretStr(value)) for name, value in found.items())
    return kept


def _place(platform: str, options, *, xgroup: str, probe: bool) -> places.Placed:
    if platform == "local":
        return places.local(options, xgroup=xgroup, probe=probe)
    if platform == "vertex":
        return places.vertex(options, probe=probe)
    if platform == "kubernetes":
        return places.kubernetes(options, probe=probe)
    from caliban_flows.platforms import registry

    return places.Placed(registry.get(platform).placement(options, probe))


def _entrypoint(module: str, root: str | None) -> Entrypoint:
    """How `module` runs: by Caliban's rules in the project, else as the image has it.

    Without a project folder a dotted name is a module and a path is a file, unchecked.
    """
    from caliban_flows.spec.entrypoint import resolve_entrypoint

    if root is not None:
        return sub.resolve_module(module)
    given = posixpath.normpath(module) if module else module

    def assumed(path: str) -> bool:
        if path == given:
            return path.endswith(".py") or not all(p.isidentifier() for p in path.split("."))
        return True

    return resolve_entrypoint(module, is_file=assumed, cwd="<image>")


def _named_key(cloud_key: str | None) -> list[str]:
    return [str(Path(cloud_key).expanduser().resolve())] if cloud_key else []
