"""`caliban cluster pod ls` and `job ls`: what runs on the cluster in your kubeconfig, in
every namespace unless one is named, as Caliban 0.4.2 listed them."""

from __future__ import annotations

from typing import Annotated

import typer

from caliban_flows.cli import options as o
from caliban_flows.cli.cluster_options import ClusterBlock, Context, api_error, target


def _list(what: str, status, namespace: str | None, **where) -> None:
    """Print every `what` (pod, job) of the chosen cluster: of all namespaces unless one is
    named (on the command line or in the block), as Caliban listed them."""
    from caliban_flows.platforms.kubernetes import listing

    found = target(namespace=namespace, **where)
    platform, chosen = found.connect(), namespace or found.defaults.get("namespace")
    try:
        items = getattr(listing, f"{what}s")(platform, chosen)
    except Exception as e:
        raise api_error(e, f"cannot list {what}s") from None
    _print_listing(what, items, status)


def _age(created: str | None, now) -> str:
    from datetime import datetime

    if not created:
        return "-"
    seconds = int((now - datetime.fromisoformat(created.replace("Z", "+00:00"))).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _print_listing(what: str, items: list[dict], status) -> None:
    from datetime import datetime, timezone

    from caliban_flows.cli.gke import _table

    now = datetime.now(timezone.utc)
    print(f"{len(items)} {what}{'' if len(items) == 1 else 's'} found")
    rows = []
    for item in items:
        meta = item.get("metadata") or {}
        rows.append((meta.get("namespace", ""), meta.get("name", ""), status(item),
                     _age(meta.get("creationTimestamp"), now)))  # fmt: skip
    _table(("NAMESPACE", "NAME", "STATUS", "AGE"), rows)


def pod_ls(
    cluster_name: o.ClusterName = None,
    project_id: o.ProjectId = None,
    zone: o.Zone = None,
    context: Context = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            "-n",
            metavar="NS",
            help="Only this namespace (default: all but kube-system).",
        ),
    ] = None,
    kubeconfig: o.Kubeconfig = None,
    cluster_block: ClusterBlock = None,
) -> None:
    """List the pods of the cluster in your kubeconfig (the current context unless named)."""
    _list("pod", lambda pod: (pod.get("status") or {}).get("phase", "Unknown"), namespace,
          context=context, kubeconfig=kubeconfig, block=cluster_block,
          cluster_name=cluster_name, project_id=project_id, zone=zone)  # fmt: skip


def job_ls(
    cluster_name: o.ClusterName = None,
    project_id: o.ProjectId = None,
    zone: o.Zone = None,
    context: Context = None,
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", metavar="NS", help="Only this namespace (default: all)."),
    ] = None,
    kubeconfig: o.Kubeconfig = None,
    cluster_block: ClusterBlock = None,
) -> None:
    """List the Jobs of the cluster in your kubeconfig, caliban's and any other."""
    from caliban_flows.platforms.kubernetes.adapter import job_state

    _list("job", lambda job: job_state(job)[0].value, namespace,
          context=context, kubeconfig=kubeconfig, block=cluster_block,
          cluster_name=cluster_name, project_id=project_id, zone=zone)  # fmt: skip


def add_commands(cluster_app: typer.Typer, job_app: typer.Typer) -> None:
    pod_app = typer.Typer(help="The pods of a cluster.", no_args_is_help=True)
    pod_app.command("ls")(pod_ls)
    cluster_app.add_typer(pod_app, name="pod")
    job_app.command("ls")(job_ls)
