"""`caliban cluster`: Kubernetes jobs on any cluster in your kubeconfig, and GKE clusters."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.output import NOTHING_DONE, emit, job_block
from caliban_flows.plan import project as sub
from caliban_flows.spec.errors import CalibanError, SpecError

EXPORT_SUFFIXES = (".yaml", ".yml", ".json")
JOB_HELP = "The Job: NAME or NAMESPACE/NAME (its remote_id in caliban status --format json)."

cluster_app = typer.Typer(help="Kubernetes jobs and GKE clusters.", no_args_is_help=True)
job_app = typer.Typer(help="Submit jobs to a cluster.", no_args_is_help=True)
cluster_app.add_typer(job_app, name="job")


class ReleaseChannel(str, Enum):
    UNSPECIFIED = "UNSPECIFIED"
    RAPID = "RAPID"
    REGULAR = "REGULAR"
    STABLE = "STABLE"


Context = Annotated[
    str | None,
    typer.Option("--context", metavar="NAME", help="kubeconfig context (default: current)."),
]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", "-n", metavar="NS", help="Namespace (default: the context's)."),
]
Kubeconfig = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
    ),
]
ClusterBlock = Annotated[
    str | None,
    typer.Option(
        "--cluster_block",
        "--block",
        metavar="NAME",
        help="Defaults (context, namespace, registry, kubeconfig ...) from this Prefect "
        "'Caliban Cluster Settings' block.",
    ),
]


def _block_settings(name: str | None) -> dict:
    from caliban_flows.server.ready import block_settings

    return block_settings("caliban_flows.blocks.kubernetes", name)


def _kube_config(block: str | None) -> dict | None:
    if not block:
        return None
    from caliban_flows.platforms.kubernetes import kube_config

    try:
        return kube_config({"cluster_block": block})
    except ValueError as e:
        raise SpecError(str(e)) from None


def _gke_context(cluster_name: str, project: str | None, zone: str | None, names) -> str:
    """The kubeconfig context `gcloud container clusters get-credentials` made for it."""
    from caliban_flows.platforms.kubernetes.adapter import gke_of

    found = [
        name
        for name in names
        if (g := gke_of(name))
        and g["cluster"] == cluster_name
        and (project is None or g["project"] == project)
        and (zone is None or g["location"] == zone)
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise SpecError(
            f"no kubeconfig context for GKE cluster {cluster_name!r}: run `gcloud container "
            f"clusters get-credentials {cluster_name}` first, or pass --context"
        )
    raise SpecError(f"several contexts match cluster {cluster_name!r}: {', '.join(found)}")


@dataclass(frozen=True)
class Target:
    """Where the flags (and a cluster settings block) send jobs."""

    context: str | None
    namespace: str
    kubeconfig: str | None
    config_dict: dict | None  # a kubeconfig kept in the block, never printed
    defaults: dict  # the block's plain settings: registry, backoff_limit, max_qps ...

    def connect(self, resources=None):
        """The Kubernetes platform, its kubeconfig loaded by the client's own loader."""
        from caliban_flows.platforms.kubernetes.adapter import Kubernetes

        try:
            return Kubernetes(
                context=self.context,
                namespace=self.namespace,
                config_file=self.kubeconfig,
                config_dict=self.config_dict,
                resources=resources,
            )
        except RuntimeError as e:
            raise SpecError(str(e)) from None


def _target(
    *, context, namespace, kubeconfig, block, cluster_name=None, project_id=None, zone=None
) -> Target:
    """Flags first, then the block, then the kubeconfig. Read without the Kubernetes client,
    so --dry_run stays light; a context that is not there is bad input."""
    from caliban_flows.platforms.kubernetes import kubeconfig as kc

    defaults = _block_settings(block)
    config_dict = _kube_config(block)
    context = context or defaults.get("context")
    try:
        entries, current = kc.contexts(kubeconfig, config_dict)
        if cluster_name and not context:
            names = [str(e.get("name")) for e in entries]
            context = _gke_context(cluster_name, project_id, zone, names)
        context, namespace = kc.choose(
            entries, current, context, namespace or defaults.get("namespace")
        )
    except kc.KubeconfigError as e:
        raise SpecError(str(e)) from None
    return Target(context, namespace, kubeconfig, config_dict, defaults)


@cluster_app.command("ls")
def ls(
    project_id: o.ProjectId = None,
    cloud_key: o.CloudKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
    kubeconfig: Kubeconfig = None,
) -> None:
    """List the clusters in your kubeconfig and, with a project, its GKE clusters."""
    from caliban_flows.platforms.kubernetes import client as kube_client

    config = kube_client.config()
    try:
        contexts, active = config.list_kube_config_contexts(kubeconfig)
    except config.ConfigException:
        contexts, active = [], None
    rows = [
        (
            "*" if active and c["name"] == active["name"] else "",
            c["name"],
            (c.get("context") or {}).get("cluster", ""),
            (c.get("context") or {}).get("namespace") or "default",
        )
        for c in contexts
    ]
    print("kubeconfig contexts:" if rows else "kubeconfig contexts: none")
    _table(("", "CONTEXT", "CLUSTER", "NAMESPACE"), rows)
    project = project_id or sub.env_default("PROJECT_ID")
    if project is None:
        return
    from caliban_flows.platforms.kubernetes.gke import Gke, GkeError, limits_of

    try:
        clusters = Gke(project).clusters(zone or "-")
    except GkeError as e:
        why = f"cannot list the GKE clusters of project {project!r}: {e}"
        if project_id:  # asked for by name: a failure
            raise CalibanError(why) from None
        print(f"note: {why} (project from $PROJECT_ID)", file=sys.stderr)
        return
    if cluster_name:
        clusters = [c for c in clusters if c.name == cluster_name]
    print(
        f"\nGKE clusters in project {project}:" if clusters else f"\nno GKE clusters in {project}"
    )
    _table(
        ("NAME", "LOCATION", "STATUS", "VERSION", "GPU LIMITS"),
        [
            (
                c.name,
                c.location,
                c.status.name,
                c.current_master_version,
                ", ".join(f"{k}={v}" for k, v in limits_of(c).items() if k.startswith("nvidia-"))
                or "-",
            )
            for c in clusters
        ],
    )


def _table(header: tuple[str, ...], rows: list[tuple]) -> None:
    if not rows:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, show_edge=False, pad_edge=False)
    for name in header:
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(width=200, soft_wrap=True).print(table)


def _gke(project_id: str | None):
    from caliban_flows.plan import gcloud
    from caliban_flows.platforms.kubernetes.gke import Gke

    return Gke(gcloud.project_id(project_id))


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
    """Create a GKE cluster with node autoprovisioning, its limits from your quota."""
    from caliban_flows.platforms.kubernetes.gke import GkeError
    from caliban_flows.spec import gke as gs

    if not cluster_name:
        raise SpecError("cluster create needs --cluster_name")
    gs.check_cluster_name(cluster_name)
    where = zone or "us-central1-a"
    region = gs.region_of(where)
    gke = _gke(project_id)
    try:
        quotas, zones = gke.quotas(region)
    except GkeError as e:
        raise CalibanError(str(e)) from None
    request = gs.create_request(
        project=gke.project,
        zone=where,
        name=cluster_name,
        single_zone=single_zone,
        release_channel=release_channel.value,
        limits=gs.resource_limits(quotas),
        zones=zones,
    )
    if dry_run:
        print(json.dumps(request, indent=2))
        print(NOTHING_DONE)
        return
    location = where if single_zone else region
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    say(f"creating cluster {cluster_name} in project {gke.project} in {location} ...")
    say(f"follow it at {gs.console_url(gke.project, location, cluster_name)}")
    try:
        operation = gke.create(request)
        gke.wait(location, operation)
    except GkeError as e:
        raise CalibanError(f"cluster {cluster_name!r} was not created: {e}") from None
    say(f"created cluster {cluster_name}")
    say(
        "next: gcloud container clusters get-credentials "
        f"{cluster_name} --location {location} --project {gke.project}; then install the "
        "NVIDIA driver daemonset for GPU nodes (see the README)"
    )


@cluster_app.command("delete")
def delete(
    project_id: o.ProjectId = None,
    cloud_key: o.CloudKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
    yes: o.Yes = False,
) -> None:
    """Delete a GKE cluster (running jobs die with it), after asking."""
    from caliban_flows.cli.output import confirm as _confirm
    from caliban_flows.platforms.kubernetes.gke import GkeError

    gke = _gke(project_id)
    try:
        cluster = gke.find(cluster_name, zone)
    except GkeError as e:
        raise CalibanError(str(e)) from None
    question = (
        f"delete cluster {cluster.name} in {cluster.location} (project {gke.project})? its "
        "running jobs die with it"
    )
    if not _confirm(question, yes):
        print("nothing deleted")
        return
    try:
        gke.wait(cluster.location, gke.delete(cluster.location, cluster.name))
    except GkeError as e:
        raise CalibanError(f"cluster {cluster.name!r} was not deleted: {e}") from None
    print(f"deleted cluster {cluster.name}")


def _check_export(path: str | None) -> None:
    if path is not None and not path.endswith(EXPORT_SUFFIXES):
        raise SpecError(f"--export {path!r} must end in .yaml or .json")


def _export(path: str, manifests: list[dict]) -> list[str]:
    """Caliban's --export: FILE for one job, FILE_0, FILE_1 ... for several."""
    import yaml

    base = Path(path)
    written = []
    for i, manifest in enumerate(manifests):
        target = base if len(manifests) == 1 else base.with_name(f"{base.stem}_{i}{base.suffix}")
        if base.suffix == ".json":
            target.write_text(json.dumps(manifest, indent=2) + "\n")
        else:
            target.write_text(yaml.safe_dump(manifest, sort_keys=False))
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
            "--export", help="Also write each Job manifest to FILE (.yaml/.json, _0, _1 ...)."
        ),
    ] = None,
    xgroup: o.Xgroup = None,
    zone: o.Zone = None,
    context: Context = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
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
    max_qps: o.MaxQps = None,
    max_running: o.MaxRunning = None,
    pool: o.Pool = None,
    wait: o.Wait = False,
) -> None:
    """Submit one Kubernetes Job per experiment."""
    from caliban_flows.platforms.kubernetes.adapter import gke_of, manifest_for
    from caliban_flows.spec import k8s_job as kj
    from caliban_flows.state.limits import record

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
    limit = record("kubernetes", p.xgroup, max_running, pool)
    target = _target(
        context=context,
        namespace=namespace,
        kubeconfig=kubeconfig,
        block=cluster_block,
        cluster_name=cluster_name,
        project_id=project_id,
        zone=zone,
    )
    defaults = target.defaults
    gke = gke_of(target.context)
    resources = kj.resources(
        min_cpu=min_cpu,
        min_mem=min_mem,
        gpu=gpu,
        tpu=tpu,
        nonpreemptible=nonpreemptible,
        nonpreemptible_tpu=nonpreemptible_tpu,
        tpu_driver=tpu_driver,
        gke=gke is not None,
        backoff_limit=backoff_limit
        if backoff_limit is not None
        else defaults.get("backoff_limit", kj.DEFAULT_BACKOFF_LIMIT),
    )
    if gke and gpu and not force and not dry_run:
        _check_gpu_limits(gke, gpu)
    if dry_run or export:
        from caliban_flows.platforms.base import JobRequest

        shown = image_tag or "<built from this folder and pushed to the registry>"
        requests = [
            JobRequest(
                xgroup=p.xgroup,
                key=key,
                attempt=1,
                name=job.name,
                image=shown,
                args=tuple(job.args),
                labels=job.labels,
            )
            for key, job in zip((j["key"] for j in p.records("kubernetes")), p.jobs)
        ]
        manifests = [manifest_for(r, resources, target.namespace) for r in requests]
        if export:
            for path in _export(export, manifests):
                print(f"wrote {path}", file=sys.stderr)
        if dry_run:
            _print_dry_run(p, target, manifests)
            return
    from caliban_flows.flows.engine import run_cluster

    raise typer.Exit(
        run_cluster(
            p,
            target.connect(resources),
            image_tag=image_tag,
            no_cache=no_cache,
            registry=registry or defaults.get("registry"),
            registry_block=registry_block,
            max_qps=max_qps or defaults.get("max_qps"),
            wait=wait,
            cluster_block=cluster_block,
            limit=limit,
        )
    )


def _check_gpu_limits(gke: dict, gpu) -> None:
    """Caliban refused GPUs the GKE cluster could never provision."""
    from caliban_flows.platforms.kubernetes.gke import Gke, GkeError, limits_of
    from caliban_flows.spec import gke as gs
    from caliban_flows.spec.k8s_job import gke_accelerator

    try:
        cluster = Gke(gke["project"]).cluster(gke["location"], gke["cluster"])
    except GkeError as e:
        raise CalibanError(
            f"cannot read GKE cluster {gke['cluster']!r} to check --gpu_spec ({e}); "
            "use --force to skip the check"
        ) from None
    gs.check_gpu_against_limits(
        gke["cluster"], gke_accelerator(gpu.accelerator_type), gpu.count, limits_of(cluster)
    )


def _print_dry_run(p, target: Target, manifests: list[dict]) -> None:
    import yaml

    lines = [
        f"Dry run: {len(p.jobs)} Kubernetes job(s) in xgroup {p.xgroup!r}, context "
        f"{target.context!r}, namespace {target.namespace!r}"
    ]
    for job, manifest in zip(p.jobs, manifests):
        lines += job_block(job, f"Job: {manifest['metadata']['name']}")[:-1]
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
    dry_run: o.DryRun = False,
    context: Context = None,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    cluster_block: ClusterBlock = None,
) -> None:
    """Submit a Job manifest you wrote or exported, after checking it."""
    from caliban_flows.platforms.kubernetes.adapter import console_url
    from caliban_flows.spec.k8s_job import check_job_file

    manifest = check_job_file(_load_manifest(job_file), job_file)
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


def _api_error(error: BaseException, what: str) -> Exception:
    from caliban_flows.platforms.kubernetes import client as kube_client
    from caliban_flows.platforms.kubernetes.adapter import describe

    if isinstance(error, kube_client.api_exception()) and error.status in (400, 409, 422):
        return SpecError(f"{what}: {describe(error)}")
    return CalibanError(f"{what}: {describe(error)}")


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
    kubeconfig: Kubeconfig = None,
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
    app.add_typer(cluster_app, name="cluster")
