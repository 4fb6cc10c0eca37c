"""`caliban cluster ls / create / delete`: the clusters in your kubeconfig, and GKE clusters
with node autoprovisioning."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.output import NOTHING_DONE
from caliban_flows.plan import project as sub
from caliban_flows.spec.errors import CalibanError, SpecError

GkeKey = Annotated[
    str | None,
    typer.Option(
        "--cloud_key",
        "--cloud-key",
        metavar="KEY_FILE",
        help="Service-account key for the GKE API (default: the application-default "
        "credentials: $GOOGLE_APPLICATION_CREDENTIALS, else gcloud's).",
    ),
]
CreateDryRun = Annotated[
    bool,
    typer.Option(
        "--dry_run",
        "--dry-run",
        help="Print the request that would create the cluster; create nothing.",
    ),
]


class ReleaseChannel(str, Enum):
    UNSPECIFIED = "UNSPECIFIED"
    RAPID = "RAPID"
    REGULAR = "REGULAR"
    STABLE = "STABLE"


def ls(
    project_id: o.ProjectId = None,
    cloud_key: GkeKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
    kubeconfig: o.Kubeconfig = None,
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
    from caliban_flows.plan.kubernetes import key_credentials
    from caliban_flows.platforms.kubernetes.gke import Gke, GkeError, limits_of

    credentials = key_credentials(cloud_key)
    try:
        clusters = Gke(project, credentials=credentials).clusters(zone or "-")
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


def _gke(project_id: str | None, cloud_key: str | None):
    from caliban_flows.plan import gcloud
    from caliban_flows.plan.kubernetes import key_credentials
    from caliban_flows.platforms.kubernetes.gke import Gke

    return Gke(gcloud.project_id(project_id), credentials=key_credentials(cloud_key))


def create(
    project_id: o.ProjectId = None,
    cloud_key: GkeKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
    dry_run: CreateDryRun = False,
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
    tpu_limit: Annotated[
        list[str] | None,
        typer.Option(
            "--tpu_limit",
            "--tpu-limit",
            metavar="TYPE=CHIPS",
            help="Most TPU chips of TYPE (V4, V5E, V5P, V6E) that node autoprovisioning may "
            "create as TPU slice node pools; repeatable. Default: the region's v5e quota; "
            "v4, v5p and v6e quotas are not in the region's quota list, so name them here.",
        ),
    ] = None,
    tpu_legacy: Annotated[
        bool,
        typer.Option(
            "--tpu_legacy",
            "--tpu-legacy",
            help="Also enable deprecated Cloud TPU Nodes (enable_tpu), as Caliban's clusters "
            "had, for `cluster job submit --tpu_legacy` jobs.",
        ),
    ] = False,
) -> None:
    """Create a GKE cluster with node autoprovisioning, its limits from your quota; then apply
    the NVIDIA driver DaemonSet for its GPU nodes."""
    from caliban_flows.platforms.kubernetes import nvidia
    from caliban_flows.platforms.kubernetes.gke import GkeError
    from caliban_flows.spec import gke as gs

    if not cluster_name:
        raise SpecError("cluster create needs --cluster_name")
    gs.check_cluster_name(cluster_name)
    from caliban_flows.spec.gke_tpu import parse_tpu_limits

    tpu_limits = parse_tpu_limits(tpu_limit)
    where = zone or "us-central1-a"
    region = gs.region_of(where)
    gke = _gke(project_id, cloud_key)
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
        limits=gs.resource_limits(quotas, tpu_limits),
        zones=zones,
        tpu_legacy=tpu_legacy,
    )
    if dry_run:
        print(json.dumps(request, indent=2))
        print(f"then: apply the NVIDIA driver DaemonSet from {nvidia.source()}")
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
    say("applying the NVIDIA driver DaemonSet ...")
    try:
        applied = nvidia.apply(gke.cluster(location, cluster_name), gke.credentials)
    except (GkeError, nvidia.DriverError) as e:
        raise CalibanError(
            f"cluster {cluster_name} was created, but its NVIDIA driver DaemonSet was not "
            f"applied ({e}): run `kubectl apply -f {nvidia.source()}` once you have its "
            "credentials"
        ) from None
    say(f"applied the NVIDIA driver DaemonSet {applied}")
    say(
        "next: gcloud container clusters get-credentials "
        f"{cluster_name} --location {location} --project {gke.project}"
    )


def delete(
    project_id: o.ProjectId = None,
    cloud_key: GkeKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
    yes: o.Yes = False,
) -> None:
    """Delete a GKE cluster (running jobs die with it), after asking."""
    from caliban_flows.cli.output import confirm as _confirm
    from caliban_flows.platforms.kubernetes.gke import GkeError

    gke = _gke(project_id, cloud_key)
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


def node_pool_ls(
    project_id: o.ProjectId = None,
    cloud_key: GkeKey = None,
    cluster_name: o.ClusterName = None,
    zone: o.Zone = None,
) -> None:
    """List the node pools of a GKE cluster (the project's only one unless named), those
    node autoprovisioning made included."""
    from caliban_flows.platforms.kubernetes.gke import GkeError

    gke = _gke(project_id, cloud_key)
    try:
        cluster = gke.find(cluster_name, zone)
        pools = gke.node_pools(cluster.location, cluster.name)
    except GkeError as e:
        raise CalibanError(str(e)) from None
    if not pools:
        print(f"no node pools in cluster {cluster.name}")
        return
    _table(
        ("NAME", "MACHINE TYPE", "ACCELERATORS", "MAX NODES", "STATUS"),
        [
            (
                p.name,
                p.config.machine_type,
                ",".join(
                    f"{a.accelerator_type}({a.accelerator_count})" for a in p.config.accelerators
                )
                or "-",
                p.autoscaling.max_node_count if p.autoscaling.enabled else "-",
                p.status.name,
            )
            for p in pools
        ],
    )


def add_commands(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command("create")(create)
    app.command("delete")(delete)
    node_pool_app = typer.Typer(help="The node pools of a GKE cluster.", no_args_is_help=True)
    node_pool_app.command("ls")(node_pool_ls)
    app.add_typer(node_pool_app, name="node_pool")
