"""`caliban cluster`: Kubernetes jobs on any cluster in your kubeconfig, and GKE clusters."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.cluster_options import ClusterBlock, Context, Namespace, OutputPvc
from caliban_flows.cli.cluster_options import api_error as _api_error
from caliban_flows.cli.cluster_options import target as _target
from caliban_flows.cli.output import NOTHING_DONE, emit, job_block
from caliban_flows.cli.output_dirs import OutputBucketGke, job_output, outputs_line
from caliban_flows.platforms.kubernetes import DEFAULT_MAX_QPS
from caliban_flows.spec.errors import SpecError

EXPORT_SUFFIXES = (".yaml", ".yml", ".json")
JOB_HELP = "The Job: NAME or NAMESPACE/NAME (its remote_id in caliban status --format json)."

cluster_app = typer.Typer(help="Kubernetes jobs and GKE clusters.", no_args_is_help=True)
job_app = typer.Typer(help="Submit, list and follow the Jobs of a cluster.", no_args_is_help=True)
cluster_app.add_typer(job_app, name="job")


KubeMaxQps = Annotated[
    float | None,
    typer.Option(
        "--max_qps",
        metavar="N",
        min=0.1,
        help="Most Kubernetes API requests per second while submitting, paced by caliban "
        f"itself (default {DEFAULT_MAX_QPS:g}, as kubectl; or the cluster settings block's).",
    ),
]
PLACEHOLDER_NOTE = (
    "--dry_run: no image was built, so the image is a placeholder (and the docker_image label "
    "reads dry_run_tag). Export without --dry_run to build, push and write the real image."
)


def _check_export(path: str | None) -> None:
    if path is not None and not path.endswith(EXPORT_SUFFIXES):
        raise SpecError(f"--export {path!r} must end in .yaml or .json")


def _export(path: str, manifests: list[dict], placeholder: bool) -> list[str]:
    """Caliban's --export: FILE for one job, FILE_0, FILE_1 ... for several. A placeholder
    image is said so: in a YAML comment, or (JSON has no comments) an annotation."""
    import yaml

    base = Path(path)
    written = []
    for i, manifest in enumerate(manifests):
        target = base if len(manifests) == 1 else base.with_name(f"{base.stem}_{i}{base.suffix}")
        if base.suffix == ".json":
            if placeholder:
                notes = manifest["metadata"].setdefault("annotations", {})
                notes["caliban.dev/placeholder-image"] = PLACEHOLDER_NOTE
            target.write_text(json.dumps(manifest, indent=2) + "\n")
        else:
            note = textwrap.fill(PLACEHOLDER_NOTE, 96, initial_indent="# ",
                                 subsequent_indent="# ") + "\n" if placeholder else ""  # fmt: skip
            target.write_text(note + yaml.safe_dump(manifest, sort_keys=False))
        written.append(str(target))
    return written


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
    tpu_legacy: o.TpuLegacy = False,
    force: o.Force = False,
    name: o.JobName = None,
    experiment_config: o.ExperimentConfigOpt = None,
    label: o.Labels = None,
    nonpreemptible: Annotated[
        bool,
        typer.Option("--nonpreemptible", help="Use non-preemptible (non-spot) nodes on GKE."),
    ] = False,
    dry_run: o.DryRun = False,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Build and push the image, write each Job manifest to FILE (.yaml/.json; "
            "FILE_0, FILE_1 ... for several) and submit nothing; with --dry_run, nothing is "
            "built and the image is a placeholder.",
        ),
    ] = None,
    xgroup: o.Xgroup = None,
    zone: o.Zone = None,
    context: Context = None,
    namespace: Namespace = None,
    kubeconfig: o.Kubeconfig = None,
    cluster_block: ClusterBlock = None,
    backoff_limit: Annotated[
        int | None,
        typer.Option(
            "--backoff_limit",
            "--backoff-limit",
            min=0,
            help="Pod retries before a Job fails (default 0: a retry is a resubmit).",
        ),
    ] = None,
    registry: o.Registry = None,
    registry_block: o.RegistryBlock = None,
    max_qps: KubeMaxQps = None,
    max_restarts: o.MaxRestarts = None,
    restart_on_exit_codes: o.RestartOnExitCodes = None,
    max_running: o.MaxRunning = None,
    pool: o.Pool = None,
    objective: o.Objective = None,
    wait: o.Wait = False,
    output_bucket: OutputBucketGke = None,
    output_pvc: OutputPvc = None,
) -> None:
    """Submit one Kubernetes Job per experiment."""
    from caliban_flows.cli.submit import submit_plan
    from caliban_flows.plan.options import KubernetesOptions

    _check_export(export)
    options = KubernetesOptions(
        nogpu=nogpu, extras=extras or [], dirs=dirs or [], no_cache=no_cache,
        max_running=max_running, pool=pool, wait=wait, gpu_spec=gpu_spec, tpu_spec=tpu_spec,
        force=force, max_qps=max_qps, registry=registry, registry_block=registry_block,
        context=context, namespace=namespace, kubeconfig=kubeconfig,
        cluster_block=cluster_block, cluster_name=cluster_name, project_id=project_id,
        zone=zone, min_cpu=min_cpu, min_mem=min_mem, tpu_driver=tpu_driver,
        nonpreemptible_tpu=nonpreemptible_tpu, tpu_legacy=tpu_legacy,
        nonpreemptible=nonpreemptible, backoff_limit=backoff_limit, cloud_key=cloud_key,
        max_restarts=max_restarts,
        restart_on_exit_codes=restart_on_exit_codes or [], output_bucket=output_bucket,
        output_pvc=output_pvc,
        objective=objective,
    )  # fmt: skip
    p = submit_plan("cluster job submit", module, rest, options,
                    experiment_config=experiment_config, xgroup=xgroup, name=name,
                    labels=label, image=image_tag, dry_run=dry_run)  # fmt: skip
    if dry_run or export:
        from caliban_flows.platforms.base import JobRequest
        from caliban_flows.platforms.kubernetes.adapter import PLACEHOLDER_IMAGE, manifest_for

        if export and not dry_run:  # Caliban's --export: build and push, write, submit nothing
            from caliban_flows.flows.engine import prepare_image

            p = prepare_image(p)
        shown = p.recipes[0]["image"] or PLACEHOLDER_IMAGE
        where = p.placed.shown["target"]
        resources = p.placed.shown["resources"]

        def manifests(secrets: dict[str, str]) -> list[dict]:
            return [
                manifest_for(
                    JobRequest(
                        xgroup=p.xgroup,
                        key=job["key"],
                        attempt=1,
                        name=spec.name,
                        image=shown,
                        args=tuple(spec.args),
                        labels=spec.labels,
                        secrets=secrets,
                        outputs=p.placement.get("outputs") or {},
                    ),
                    resources,
                    where.namespace,
                )
                for job, spec in zip(p.jobs, p.specs)
            ]

        if export:  # files to apply later: the jobs need their secret args' values
            values = {name: v.get_secret_value() for name, v in p.secrets.items()}
            for path in _export(export, manifests(values), shown == PLACEHOLDER_IMAGE):
                print(f"wrote {path}", file=sys.stderr)
        if dry_run:  # printed: references in place of secret values
            _print_dry_run(p, where, manifests({}))
        else:
            print(f"{len(p.specs)} job(s) written with image {shown}; nothing submitted",
                  file=sys.stderr)  # fmt: skip
        return
    from caliban_flows.flows.engine import run_plan

    raise typer.Exit(run_plan(p))


def _print_dry_run(p, target, manifests: list[dict]) -> None:
    import yaml

    from caliban_flows.spec.outputs import OutputPlace, job_folder

    outputs = OutputPlace.of(p.placement.get("outputs"))
    lines = [
        f"Dry run: {len(p.specs)} Kubernetes job(s) in xgroup {p.xgroup!r}, context "
        f"{target.context!r}, namespace {target.namespace!r}",
        outputs_line(outputs, p.xgroup, flags="--output_bucket gs://BUCKET or --output_pvc NAME"),
    ]
    for planned, job, manifest in zip(p.jobs, p.specs, manifests):
        folder = job_folder(p.xgroup, planned["name"], planned["key"], 1)
        lines += job_block(job, f"Job: {manifest['metadata']['name']}",
                           *job_output(outputs, folder))[:-1]  # fmt: skip
        lines += ["---", yaml.safe_dump(manifest, sort_keys=False).rstrip(), ""]
    lines.append(NOTHING_DONE)
    emit(lines)


@job_app.command("submit_file")
def submit_file(
    job_file: Annotated[str, typer.Argument(help="Kubernetes Job manifest (.yaml or .json).")],
    cluster_name: o.ClusterName = None,
    cloud_key: o.CloudKey = None,
    project_id: o.ProjectId = None,
    zone: o.Zone = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry_run",
            "--dry-run",
            help="Have the API server check the manifest (its dry run); submit nothing.",
        ),
    ] = False,
    context: Context = None,
    namespace: Namespace = None,
    kubeconfig: o.Kubeconfig = None,
    cluster_block: ClusterBlock = None,
) -> None:
    """Submit a Job manifest you wrote or exported, after checking it."""
    from caliban_flows.plan.kubernetes import key_credentials
    from caliban_flows.platforms.kubernetes.adapter import console_url
    from caliban_flows.spec.k8s_job import check_job_file

    manifest = check_job_file(_load_manifest(job_file), job_file)
    key_credentials(cloud_key)  # checked as everywhere; the Job goes by the kubeconfig's user
    platform = _target(
        context=context,
        namespace=namespace,
        kubeconfig=kubeconfig,
        block=cluster_block,
        cluster_name=cluster_name,
        project_id=project_id,
        zone=zone,
    ).connect()
    if namespace:
        manifest.setdefault("metadata", {})["namespace"] = namespace
    try:
        platform.create_manifest(manifest, dry_run=True)  # the API server's own validation
        if dry_run:
            print(f"{job_file}: valid for {platform.context}/{platform.namespace}")
            print(NOTHING_DONE)
            return
        made = platform.create_manifest(manifest)
    except Exception as e:
        raise _api_error(e, f"{job_file} was not submitted") from None
    meta = made["metadata"]
    print(f"submitted job: {meta['namespace']}/{meta['name']}")
    url = console_url(platform.gke, meta["namespace"], meta["name"])
    if url:
        print(url)


def _load_manifest(path: str) -> object:
    if not path.endswith(EXPORT_SUFFIXES):
        raise SpecError(f"job file {path!r} must end in .yaml or .json")
    file = Path(path)
    if not file.is_file():
        raise SpecError(f"job file {path!r} not found")
    text = file.read_text()
    try:
        if path.endswith(".json"):
            return json.loads(text)
        import yaml

        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (ValueError, Exception) as e:  # yaml.YAMLError, json.JSONDecodeError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SpecError(
            f"job file {path!r} is not valid {file.suffix[1:].upper()}: {first}"
        ) from None
    if len(docs) != 1:
        raise SpecError(f"job file {path!r} must hold exactly one Job, not {len(docs)} documents")
    return docs[0]


@job_app.command("logs")
def logs(
    job: Annotated[
        str,
        typer.Argument(
            help="The Job: NAME or NAMESPACE/NAME (caliban status "
            "--format json shows it as remote_id)."
        ),
    ],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")] = False,
    context: Context = None,
    namespace: Namespace = None,
    kubeconfig: o.Kubeconfig = None,
    cluster_block: ClusterBlock = None,
) -> None:
    """Print the output of a Job's (newest) pod."""
    target = _target(
        context=context, namespace=namespace, kubeconfig=kubeconfig, block=cluster_block
    )
    platform = target.connect()
    remote_id = job if "/" in job else f"{platform.namespace}/{job}"
    out = sys.stdout.buffer
    try:
        for chunk in platform.logs(remote_id, follow=follow):
            out.write(chunk)
            out.flush()
    except Exception as e:
        raise _api_error(e, f"no logs for {remote_id}") from None


def register(app: typer.Typer) -> None:
    from caliban_flows.cli import cluster_ls, gke

    cluster_ls.add_commands(cluster_app, job_app)

    gke.add_commands(cluster_app)
    app.add_typer(cluster_app, name="cluster")
