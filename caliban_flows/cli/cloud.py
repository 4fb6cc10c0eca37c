"""`caliban cloud`: one Vertex AI CustomJob per experiment."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.output import NOTHING_DONE, emit, job_block
from caliban_flows.cli.output_dirs import OutputBucket, job_output, outputs_line
from caliban_flows.cli.submit import submit_plan


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
    service_account: o.ServiceAccount = None,
    network: o.Network = None,
    spot: o.Spot = False,
    timeout: o.Timeout = None,
    restart_on_worker_restart: o.RestartOnWorkerRestart = False,
    max_qps: o.MaxQps = None,
    max_restarts: o.MaxRestarts = None,
    restart_on_exit_codes: o.RestartOnExitCodes = None,
    submit_quota: o.SubmitQuota = None,
    manage_quota: o.ManageQuota = None,
    wait: o.Wait = False,
    registry: o.Registry = None,
    registry_block: o.RegistryBlock = None,
    vertex_block: o.VertexBlock = None,
    output_bucket: OutputBucket = None,
    max_running: o.MaxRunning = None,
    pool: o.Pool = None,
    objective: o.Objective = None,
) -> None:
    """Submit one Vertex AI training job per experiment."""
    from caliban_flows.plan.options import VertexOptions

    options = VertexOptions(
        nogpu=nogpu, extras=extras or [], dirs=dirs or [], no_cache=no_cache,
        max_running=max_running, pool=pool, wait=wait, gpu_spec=gpu_spec, tpu_spec=tpu_spec,
        force=force, max_qps=max_qps, registry=registry, registry_block=registry_block,
        project_id=project_id, region=region, machine_type=machine_type,
        service_account=service_account, network=network, spot=spot, timeout=timeout,
        restart_on_worker_restart=restart_on_worker_restart, vertex_block=vertex_block,
        cloud_key=cloud_key, submit_quota=submit_quota, manage_quota=manage_quota,
        max_restarts=max_restarts, restart_on_exit_codes=restart_on_exit_codes or [],
        output_bucket=output_bucket,
        objective=objective,
    )  # fmt: skip
    plan = submit_plan("cloud", module, rest, options, experiment_config=experiment_config,
                       xgroup=xgroup, name=name, labels=label, image=image_tag,
                       dry_run=dry_run)  # fmt: skip
    if dry_run:
        _print_dry_run(plan, image_tag)
        return
    from caliban_flows.flows.engine import run_plan

    raise typer.Exit(run_plan(plan))


def _print_dry_run(p, image_tag) -> None:
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec import vertex_job as vj
    from caliban_flows.spec.outputs import OutputPlace, job_folder

    placement = p.placed.shown["placement"]
    gpu, tpu = p.placed.gpu, p.placed.tpu

    where = (
        f"Accelerator: {acc.accelerator_config(gpu)}, machine: {placement.machine_type!r}, "
        f"region: {placement.region!r}"
    )
    if tpu:
        where += f", tpu: {acc.accelerator_config(tpu)}"
    image = image_tag or "<built from this folder and pushed to the registry>"
    outputs = OutputPlace.of(p.placement.get("outputs"))
    lines = [
        f"Dry run: {len(p.specs)} Vertex AI job(s) in xgroup {p.xgroup!r}, project "
        f"{placement.project!r}, {'GPU' if gpu else 'CPU'} mode",
        outputs_line(outputs, p.xgroup, flags="--output_bucket gs://BUCKET"),
    ]
    for planned, job in zip(p.jobs, p.specs):
        tag = image_tag or job.labels.get("docker_image", "")
        labels = vj.job_labels(job.labels, xgroup=p.xgroup, key=planned["key"], attempt=1,
                               image=tag)  # fmt: skip
        folder = job_folder(p.xgroup, planned["name"], planned["key"], planned["attempt"])
        spec = vj.custom_job(display_name=job.name, image=image, args=job.args, labels=labels,
                             placement=placement, outputs=outputs, folder=folder)  # fmt: skip
        lines += job_block(job, f"jobId: {job.name}, image: {image}", where,
                           *job_output(outputs, folder))[:-1]  # fmt: skip
        lines += [f"Job {job.index} - CustomJob: {json.dumps(spec)}", ""]
    lines.append(f"Parent: {placement.parent}; placement: {json.dumps(asdict(placement))}")
    lines.append(NOTHING_DONE)
    emit(lines)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(cloud)
