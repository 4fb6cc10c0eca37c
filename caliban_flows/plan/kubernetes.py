"""Where Kubernetes jobs go: a kubeconfig context and namespace, from the options, a cluster
settings block and the kubeconfig, in that order. Read without the Kubernetes client, so a dry
run stays light; a context that is not there is bad input."""

from __future__ import annotations

from dataclasses import dataclass

from caliban_flows.spec.errors import CalibanError, SpecError


@dataclass(frozen=True)
class Target:
    """A kubeconfig context and namespace (and the cluster settings block's defaults)."""

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


def target(
    *,
    context: str | None,
    namespace: str | None,
    kubeconfig: str | None,
    block: str | None,
    cluster_name: str | None = None,
    project_id: str | None = None,
    zone: str | None = None,
) -> Target:
    from caliban_flows.platforms.kubernetes import kubeconfig as kc
    from caliban_flows.server.ready import block_settings

    defaults = block_settings("caliban_flows.blocks.kubernetes", block)
    config_dict = _kube_config(block)
    context = context or defaults.get("context")
    try:
        entries, current = kc.contexts(kubeconfig, config_dict)
        if cluster_name and not context:
            names = [str(e.get("name")) for e in entries]
            context = _gke_context(cluster_name, project_id, zone, names)
        context, chosen = kc.choose(
            entries, current, context, namespace or defaults.get("namespace")
        )
    except kc.KubeconfigError as e:
        raise SpecError(str(e)) from None
    return Target(context, chosen, kubeconfig, config_dict, defaults)


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


def key_credentials(cloud_key: str | None):
    """The GKE API's credentials: --cloud_key's service-account key once it reads as one
    (SpecError, one line, if not), else None (the application default)."""
    if not cloud_key:
        return None
    from caliban_flows.plan.inputs import service_account_key
    from caliban_flows.platforms.gcp_credentials import from_key_file

    return from_key_file(service_account_key(cloud_key))


def check_gpu_limits(gke: dict, gpu, credentials=None) -> None:
    """Caliban refused GPUs the GKE cluster could never provision."""
    from caliban_flows.platforms.kubernetes.gke import Gke, GkeError, limits_of
    from caliban_flows.spec import gke as gs
    from caliban_flows.spec.k8s_job import gke_accelerator

    try:
        found = Gke(gke["project"], credentials=credentials)
        cluster = found.cluster(gke["location"], gke["cluster"])
    except GkeError as e:
        raise CalibanError(
            f"cannot read GKE cluster {gke['cluster']!r} to check --gpu_spec ({e}); "
            "use --force to skip the check"
        ) from None
    gs.check_gpu_against_limits(
        gke["cluster"], gke_accelerator(gpu.accelerator_type), gpu.count, limits_of(cluster)
    )
