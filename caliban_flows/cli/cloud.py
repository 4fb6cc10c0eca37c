"""`caliban cloud`: one Vertex AI CustomJob per experiment."""

from __future__ import annotations

import typer

from caliban_flows.cli import gcloud
from caliban_flows.cli import options as o
from caliban_flows.cli import submission as sub
from caliban_flows.cli.output import emit, not_built

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

    gpu_mode = sub.gpu_mode(nogpu, gpu_spec, tpu_spec)
    gpu = acc.parse_gpu_spec(gpu_spec) if gpu_spec else None
    tpu = acc.parse_tpu_spec(tpu_spec) if tpu_spec else None
    if gpu_mode and gpu is None:
        gpu = acc.default_gpu_spec()
    where = gcloud.region(region)
    machine = machine_type or acc.default_machine_type(gpu=gpu, tpu=tpu)
    if not force:
        where = acc.parse_region(where)
        machine = acc.parse_machine_type(machine)
        acc.validate_cloud_resources(machine_type=machine, gpu=gpu, tpu=tpu, region=where)
    image = image_tag or "dry_run_tag"
    p = sub.plan(
        command="cloud",
        module=module,
        rest=rest,
        experiment_config=experiment_config,
        xgroup=xgroup,
        dirs=dirs,
        gpu=gpu is not None,
        tpu=tpu is not None,
        image=image,
        name=name,
        labels=label,
    )
    sub.check_image(p, extras, image_given=image_tag is not None)
    project = gcloud.project_id(project_id)
    if not dry_run:
        raise not_built("submitting to Vertex AI (try --dry_run)", VERTEX_ISSUE)
    accel = acc.accelerator_config(gpu)
    shown = image_tag or f"<built from this folder and pushed to {project}'s registry>"
    lines = [
        f"Dry run: {len(p.jobs)} Vertex AI job(s) in xgroup {p.xgroup!r}, project {project!r}, "
        f"{'GPU' if gpu_mode else 'CPU'} mode",
    ]
    tpu_line = f", tpu: {acc.accelerator_config(tpu)}" if tpu else ""
    for job in p.jobs:
        lines += [
            f"Job {job.index} - jobId: {job.name}, image: {shown}",
            f"Job {job.index} - Accelerator: {accel}, machine: {machine!r}, region: {where!r}"
            + tpu_line,
            f"Job {job.index} - Experiment arguments: {list(job.args)}",
            f"Job {job.index} - labels: {dict(job.labels)}",
            "",
        ]
    lines.append("Nothing was built or submitted. Run again without --dry_run to submit.")
    emit(lines)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(cloud)
