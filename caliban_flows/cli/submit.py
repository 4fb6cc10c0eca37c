"""What every job-submitting command shares: its flags, made into a request, become a plan."""

from __future__ import annotations

import os
from collections.abc import Sequence

from caliban_flows.plan import project as sub


def submit_plan(command: str, module: str, rest: Sequence[str] | None, options, *,
                experiment_config: str | None, xgroup: str | None, name: str | None = None,
                labels: Sequence[str] | None = None, image: str | None = None,
                dry_run: bool = False):  # fmt: skip
    """The command line, checked whole and planned (GroupPlan); SpecError on bad input."""
    from caliban_flows.plan.group import GroupRequest, plan_group
    from caliban_flows.plan.inputs import load_experiment_config
    from caliban_flows.plan.options import platform_of

    args = sub.script_args(command, module, rest)
    config = load_experiment_config(experiment_config) if experiment_config is not None else None
    request = GroupRequest(
        platform=platform_of(options),
        module=module,
        options=options,
        script_args=args,
        experiment_config=config,
        xgroup=xgroup,
        name=name,
        labels=tuple(labels or ()),
        image=image,
        root=os.getcwd(),
    )
    if not dry_run:  # a dry run asks no one; on Prefect Cloud your groups are your handle's
        from caliban_flows.server.cloud_user import identify

        identify()
    checked = None
    if not dry_run and request.platform == "local":
        # Overlap the Prefect server's start with the engine checks and the build, as soon as
        # the command line is known good. (Remote submissions first check a Prefect API.)
        from caliban_flows.server.ready import start_backend_early

        checked = start_backend_early
    return plan_group(request, probe=not dry_run, checked=checked)
