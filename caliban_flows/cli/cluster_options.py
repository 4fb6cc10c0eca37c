"""What the `caliban cluster` commands that talk to a cluster share: how the cluster is
chosen (kubeconfig context, namespace, a cluster settings block) and how its API's refusals
read."""

from __future__ import annotations

from typing import Annotated

import typer

from caliban_flows.spec.errors import CalibanError, SpecError

Context = Annotated[
    str | None,
    typer.Option("--context", metavar="NAME", help="kubeconfig context (default: current)."),
]
Namespace = Annotated[
    str | None,
    typer.Option("--namespace", "-n", metavar="NS", help="Namespace (default: the context's)."),
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


def target(*, context, namespace, kubeconfig, block, cluster_name=None, project_id=None,
            zone=None):  # fmt: skip
    from caliban_flows.plan.kubernetes import target

    return target(context=context, namespace=namespace, kubeconfig=kubeconfig, block=block,
                  cluster_name=cluster_name, project_id=project_id, zone=zone)  # fmt: skip


def api_error(error: BaseException, what: str) -> Exception:
    from caliban_flows.platforms.kubernetes import client as kube_client
    from caliban_flows.platforms.kubernetes.adapter import describe

    if isinstance(error, kube_client.api_exception()) and error.status in (400, 409, 422):
        return SpecError(f"{what}: {describe(error)}")
    return CalibanError(f"{what}: {describe(error)}")


OutputPvc = Annotated[
    str | None,
    typer.Option(
        "--output_pvc",
        "--output-pvc",
        metavar="NAME",
        help="Give each job a folder <xgroup>/<name>-<key8>/<attempt>/ on this "
        "PersistentVolumeClaim of the namespace, mounted as $CALIBAN_OUTPUT_DIR "
        "(/caliban/output).",
    ),
]
