"""What every job-submitting command shares: its flags, made into a request, become a plan."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from caliban_flows.plan import project as sub


def _own_flags() -> dict[str, bool]:
    """The running command's option names -> whether each takes a value."""
    try:  # typer carries its own click, and offers no public way to the current context
        from typer._click.globals import get_current_context
    except ImportError:
        return {}
    context = get_current_context(silent=True)
    if context is None:
        return {}
    return {
        name: not (getattr(param, "is_flag", False) or getattr(param, "count", False))
        for param in context.command.params
        if param.param_type_name == "option"
        for name in (*param.opts, *param.secondary_opts)
    }


def submit_plan(command: str, module: str, rest: Sequence[str] | None, options, *,
                experiment_config: str | None, xgroup: str | None, name: str | None = None,
                labels: Sequence[str] | None = None, image: str | None = None,
                dry_run: bool = False):  # fmt: skip
    """The command line, checked whole and planned (GroupPlan); SpecError on bad input."""
    from caliban_flows.plan.group import GroupRequest, plan_group
    from caliban_flows.plan.inputs import load_experiment_config
    from caliban_flows.plan.options import platform_of

    args = sub.script_args(command, module, rest, typed=sys.argv[1:], own_flags=_own_flags())
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
