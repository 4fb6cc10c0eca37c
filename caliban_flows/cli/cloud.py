"""`caliban cloud`: one Vertex AI CustomJob per experiment."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.output import NOTHING_DONE, emit, job_block
from caliban_flows.plan import gcloud
from caliban_flows.plan import project as sub


def _block_settings(name: str | None) -> dict:
    from caliban_flows.server.ready import block_settings

    return block_settings("caliban_flows.blocks.vertex", name)


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
    wait: o.Wait = False,
    registry: o.Registry = None,
    registry_block: o.RegistryBlock = None,
    vertex_block: o.VertexBlock = None,
    max_running: o.MaxRunning = None,
    pool: o.Pool = None,
) -> None:
    """Submit one Vertex AI training job per experiment."""
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec import vertex_job as vj
    from caliban_flows.state.limits import record

    defaults = _block_settings(vertex_block)
    gpu, tpu = sub.accelerators(nogpu, gpu_spec, tpu_spec)
    where = gcloud.region(region or defaults.get("region"))
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
    project = gcloud.project_id(project_id or defaults.get("project"))
    accelerator = tpu or gpu  # one accelerator per Vertex machine; a TPU job runs on its host
    placement = vj.Placement(
        project=project,
        region=where,
        machine_type=machine,
        accelerator_type=accelerator.accelerator_type if accelerator else None,
        accelerator_count=accelerator.count if accelerator else 0,
        service_account=service_account or defaults.get("service_account"),
        network=network or defaults.get("network"),
        spot=spot or bool(defaults.get("spot")),
        timeout_seconds=vj.parse_timeout(timeout) if timeout else None,
        restart_job_on_worker_restart=restart_on_worker_restart,
    )
    limit = record("vertex", p.xgroup, max_running, pool)
    if dry_run:
        _print_dry_run(p, placement, image_tag, gpu, tpu)
        return
    if image_tag is not None:  # bad input: say so before starting anything
        import os

        from caliban_flows.platforms.vertex.adapter import ENDPOINT_ENV

        vj.check_image_uri(image_tag, emulator=bool(os.environ.get(ENDPOINT_ENV)))
    from caliban_flows.flows.engine import run_cloud

    raise typer.Exit(
        run_cloud(
            p,
            placement,
            image_tag=image_tag,
            no_cache=no_cache,
            registry=registry or defaults.get("registry"),
            registry_block=registry_block,
            max_qps=max_qps or defaults.get("max_qps"),
            wait=wait,
            vertex_block=vertex_block,
            limit=limit,
        )
    )


def _print_dry_run(p, placement, image_tag, gpu, tpu) -> None:
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec import vertex_job as vj

    where = (
        f"Accelerator: {acc.accelerator_config(gpu)}, machine: {placement.machine_type!r}, "
        f"region: {placement.region!r}"
    )
    if tpu:
        where += f", tpu: {acc.accelerator_config(tpu)}"
    image = image_tag or "<built from this folder and pushed to the registry>"
    lines = [
        f"Dry run: {len(p.jobs)} Vertex AI job(s) in xgroup {p.xgroup!r}, project "
        f"{placement.project!r}, {'GPU' if gpu else 'CPU'} mode",
    ]
    for key, job in zip((j["key"] for j in p.records("vertex")), p.jobs):
        tag = image_tag or job.labels.get("docker_image", "")
        labels = vj.job_labels(job.labels, xgroup=p.xgroup, key=key, attempt=1, image=tag)
        spec = vj.custom_job(
            display_name=job.name, image=image, args=job.args, labels=labels, placement=placement
        )
        lines += job_block(job, f"jobId: {job.name}, image: {image}", where)[:-1]
        lines += [f"Job {job.index} - CustomJob: {json.dumps(spec)}", ""]
    lines.append(f"Parent: {placement.parent}; placement: {json.dumps(asdict(placement))}")
    lines.append(NOTHING_DONE)
    emit(lines)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": False})(cloud)
