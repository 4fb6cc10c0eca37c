"""`caliban cloud`: one Vertex AI CustomJob per experiment."""

from __future__ import annotations

import typer

from caliban_flows.cli import gcloud
from caliban_flows.cli import options as o
from caliban_flows.cli import submission as sub
from caliban_flows.cli.output import NOTHING_DONE, emit, job_block, not_built

VERTEX_ISSUE = 4


def cloud(
    module: o.Module,
    rest: o.ScriptArgs = None,
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKey = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    dirs: o.Dirs = None,
    experiment_config: o.ExperimentConfigOpt = None,
    dry_run: o.DryRun = False,
    image_tag: o.ImageTag = None,
    project_id: o.ProjectId = None,
    region: o.Region = None,
    machine_type: o.MachineType = None,
    gpu_spec: o.GpuSpecOpt = None,
    tpu_spec: o.TpuSpecOpt = None,
    force: o.Force = False,
    name: o.JobName = None,
    label: o.Labels = None,
    xgroup: o.Xgroup = None,
) -> None:
    """Submit one Vertex AI training job per experiment."""
    from caliban_flows.spec import accelerators as acc

    gpu, tpu = sub.accelerators(nogpu, gpu_spec, tpu_spec)
    where = gcloud.region(region)
    machine = machine_type or acc.default_machine_type(gpu=gpu, tpu=tpu)
    if not force:
        where = acc.parse_region(where)
        machine = acc.parse_machine_type(machine)
        acc.validate_cloud_resources(machine_type=machine, gpu=gpu, tpu=tpu, region=where)
    p = sub.plan(
        command="cloud",
        module=module,
        rest=rest,
        experiment_config=experiment_config,
        xgroup=xgroup,
        dirs=dirs,
        gpu=gpu is not None,
        tpu=tpu is not None,
        extras=extras,
        prebuilt_image=image_tag,
        name=name,
        labels=label,
    )
    project = gcloud.project_id(project_id)
    if not dry_run:
        raise not_built("submitting to Vertex AI (try --dry_run)", VERTEX_ISSUE)
    placement = (
        f"Accelerator: {acc.accelerator_config(gpu)}, machine: {machine!r}, region: {where!r}"
    )
    if tpu:
        placement += f", tpu: {acc.accelerator_config(tpu)}"
    shown = image_tag or f"<built from this folder and pushed to {project}'s registry>"
    lines = [
        f"Dry run: {len(p.jobs)} Vertex AI job(s) in xgroup {p.xgroup!r}, project {project!r}, "
        f"{'GPU' if gpu else 'CPU'} mode",
    ]
    for job in p.jobs:
        lines += job_block(job, f"jobId: {job.name}, image: {shown}", placement)
    lines.append(NOTHING_DONE)
    emit(lines)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(cloud)
