"""`caliban cluster`: Kubernetes jobs, and GKE cluster management."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli import submission as sub
from caliban_flows.cli.output import NOTHING_DONE, emit, job_block, not_built
from caliban_flows.spec.errors import SpecError

CLUSTER_ISSUE = 6
EXPORT_SUFFIXES = (".yaml", ".json")

cluster_app = typer.Typer(help="Kubernetes jobs and GKE clusters.", no_args_is_help=True)
job_app = typer.Typer(help="Submit jobs to a cluster.", no_args_is_help=True)
cluster_app.add_typer(job_app, name="job")


class ReleaseChannel(str, Enum):
    UNSPECIFIED = "UNSPECIFIED"
    RAPID = "RAPID"
    REGULAR = "REGULAR"
    STABLE = "STABLE"


@cluster_app.command("ls")
def ls(
    project_id: o.ProjectId = None,
    cloud_key: o.CloudKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
) -> None:
    """List clusters."""
    raise not_built("listing clusters", CLUSTER_ISSUE)


@cluster_app.command("create")
def create(
    project_id: o.ProjectId = None,
    cloud_key: o.CloudKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
    dry_run: o.DryRun = False,
    release_channel: Annotated[
        ReleaseChannel,
        typer.Option("--release_channel", "--release-channel", help="GKE release channel."),
    ] = ReleaseChannel.REGULAR,
    single_zone: Annotated[
        bool,
        typer.Option(
            "--single_zone", "--single-zone", help="One zone for all nodes (default: regional)."
        ),
    ] = False,
) -> None:
    """Create a GKE cluster with node autoprovisioning."""
    raise not_built("creating GKE clusters", CLUSTER_ISSUE)


@cluster_app.command("delete")
def delete(
    project_id: o.ProjectId = None,
    cloud_key: o.CloudKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
) -> None:
    """Delete a GKE cluster (running jobs die with it)."""
    raise not_built("deleting GKE clusters", CLUSTER_ISSUE)


def _check_export(path: str | None) -> None:
    if path is not None and not path.endswith(EXPORT_SUFFIXES):
        raise SpecError(f"--export {path!r} must end in .yaml or .json")


@job_app.command("submit", context_settings={"allow_interspersed_args": False})
def submit(
    module: o.Module,
    rest: o.ScriptArgs = None,
    cluster_name: o.ClusterName = None,
    nogpu: o.NoGpu = False,
    cloud_key: o.CloudKey = None,
    extras: o.Extras = None,
    no_cache: o.NoCache = False,
    dirs: o.Dirs = None,
    image_tag: o.ImageTag = None,
    project_id: o.ProjectId = None,
    min_cpu: Annotated[
        int | None,
        typer.Option(
            "--min_cpu",
            "--min-cpu",
            min=1,
            help="CPU request in milli-CPUs (default 1500 with accelerators, 31000 without).",
        ),
    ] = None,
    min_mem: Annotated[
        int | None,
        typer.Option("--min_mem", "--min-mem", min=1, help="Memory request in MB."),
    ] = None,
    gpu_spec: o.GpuSpecOpt = None,
    tpu_spec: o.TpuSpecOpt = None,
    tpu_driver: Annotated[
        str, typer.Option("--tpu_driver", "--tpu-driver", help="TPU software version.")
    ] = "1.14",
    nonpreemptible_tpu: Annotated[
        bool,
        typer.Option("--nonpreemptible_tpu", "--nonpreemptible-tpu", help="Non-preemptible TPUs."),
    ] = False,
    force: o.Force = False,
    name: o.JobName = None,
    experiment_config: o.ExperimentConfigOpt = None,
    label: o.Labels = None,
    nonpreemptible: Annotated[
        bool,
        typer.Option("--nonpreemptible", help="Use non-preemptible (non-spot) nodes."),
    ] = False,
    dry_run: o.DryRun = False,
    export: Annotated[
        str | None,
        typer.Option(
            "--export", help="Also write each Job manifest to FILE (.yaml/.json, _0, _1 ...)."
        ),
    ] = None,
    xgroup: o.Xgroup = None,
) -> None:
    """Submit one Kubernetes Job per experiment."""
    # Cluster capacity, not Vertex's catalog, bounds counts here; the type must still exist.
    gpu, tpu = sub.accelerators(nogpu, gpu_spec, tpu_spec, validate_count=False)
    _check_export(export)
    p = sub.plan(
        command="cluster job submit",
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
    if not dry_run:
        raise not_built("submitting to Kubernetes (try --dry_run)", CLUSTER_ISSUE)
    accelerated = gpu is not None or tpu is not None
    cpu = min_cpu if min_cpu is not None else (1500 if accelerated else 31000)
    resources = f"cpu: {cpu}m" + (f", memory: {min_mem}Mi" if min_mem else "")
    if gpu:
        resources += f", gpu: {gpu}"
    if tpu:
        resources += f", tpu: {tpu} (driver {tpu_driver})"
    spot = "non-preemptible" if nonpreemptible else "preemptible"
    lines = [f"Dry run: {len(p.jobs)} Kubernetes job(s) in xgroup {p.xgroup!r}"]
    for job in p.jobs:
        shown = image_tag or "<built at submit>"
        lines += job_block(
            job, f"name: {job.name}, image: {shown}", f"resources: {resources}, {spot}"
        )
    lines.append(NOTHING_DONE)
    emit(lines)


@job_app.command("submit_file")
def submit_file(
    job_file: Annotated[str, typer.Argument(help="Kubernetes Job manifest (.yaml or .json).")],
    cluster_name: o.ClusterName = None,
    cloud_key: o.CloudKey = None,
    project_id: o.ProjectId = None,
    dry_run: o.DryRun = False,
) -> None:
    """Submit a Job manifest you wrote or exported."""
    if not job_file.endswith(EXPORT_SUFFIXES):
        raise SpecError(f"job file {job_file!r} must end in .yaml or .json")
    if not Path(job_file).is_file():
        raise SpecError(f"job file {job_file!r} not found")
    raise not_built("submitting Job files to Kubernetes", CLUSTER_ISSUE)


def register(app: typer.Typer) -> None:
    app.add_typer(cluster_app, name="cluster")
