"""Where a submission's jobs run, from its platform's typed options: the placement a group
records (no credentials in it), with every default resolved and every check made.

`probe` asks the real world what a dry run must not touch: the Docker engine (GPU runtime,
earlier attempts), the GKE cluster's GPU limits, the image's name.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from caliban_flows.plan import project as sub
from caliban_flows.plan.options import KubernetesOptions, LocalOptions, VertexOptions
from caliban_flows.spec.errors import SpecError


@dataclass
class Placed:
    placement: dict  # what the group records
    gpu: object = None  # the AcceleratorSpec (remote) or True (local GPU mode); None: CPU
    tpu: object = None
    registry: str | None = None  # where a built image goes, if the options name one
    attempts: dict[str, int] = field(default_factory=dict)  # each job key's last attempt
    shown: dict = field(default_factory=dict)  # for dry runs: the resolved objects


def local(options: LocalOptions, *, xgroup: str, probe: bool) -> Placed:
    from caliban_flows.plan.inputs import credential_args

    gpu = sub.gpu_mode(options.nogpu, None, None)
    sub.check_local_gpu("run", gpu)
    from caliban_flows.spec.docker_run_args import env_values_out

    # `-e NAME=VALUE`: recorded as `-e NAME`; this process holds the value for its own run.
    words, values = env_values_out(sub.docker_run_args(options.docker_run_args))
    os.environ.update(values)
    run_args = words + credential_args(options.cloud_key)
    attempts: dict[str, int] = {}
    if probe:  # the engine decides: no NVIDIA runtime means CPU mode; reruns count up
        from caliban_flows.platforms.local.adapter import docker_client, engine_gpu, local_attempts

        client = docker_client()
        gpu = engine_gpu(client, gpu)
        attempts = local_attempts(client, xgroup)
    recorded = {"gpu": gpu, "run_args": list(run_args), "outputs": local_outputs(options)}
    return Placed(recorded, gpu or None, attempts=attempts)


def local_outputs(options: LocalOptions) -> dict:
    """--output_dir (default $CALIBAN_HOME/outputs) as an absolute host folder: a job started
    later, from another folder (a resubmit, the reconcile service), writes to the same place."""
    from caliban_flows.server.home import caliban_home
    from caliban_flows.spec.outputs import OutputPlace

    root = Path(options.output_dir).expanduser() if options.output_dir else None
    return OutputPlace("local", root=str((root or caliban_home() / "outputs").resolve())).record()


def remote_outputs(bucket: str | None, claim: str | None = None) -> dict:
    """--output_bucket or --output_pvc as a placement's `outputs` entry; none for neither
    (the jobs then get no output folder)."""
    from caliban_flows.spec.outputs import gcs_place, pvc_place

    if bucket and claim:
        raise SpecError("give --output_bucket or --output_pvc, not both")
    if bucket:
        return {"outputs": gcs_place(bucket).record()}
    return {"outputs": pvc_place(claim).record()} if claim else {}


def vertex(options: VertexOptions, *, probe: bool) -> Placed:
    from caliban_flows.plan import gcloud
    from caliban_flows.plan.inputs import service_account_key
    from caliban_flows.server.ready import block_settings
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec import vertex_job as vj

    defaults = block_settings("caliban_flows.blocks.vertex", options.vertex_block)
    # --force skips every catalog check: counts, machine, region (Vertex may still refuse).
    gpu, tpu = sub.accelerators(
        options.nogpu, options.gpu_spec, options.tpu_spec, validate_count=not options.force
    )
    region = gcloud.region(options.region or defaults.get("region"))
    machine = options.machine_type or _default_machine(gpu, tpu, force=options.force)
    if not options.force:
        region = acc.parse_region(region)
        machine = acc.parse_machine_type(machine)
        acc.validate_cloud_resources(machine_type=machine, gpu=gpu, tpu=tpu, region=region)
    accelerator = tpu or gpu  # one accelerator per Vertex machine; a TPU job runs on its host
    placement = vj.Placement(
        project=gcloud.project_id(options.project_id or defaults.get("project")),
        region=region,
        machine_type=machine,
        accelerator_type=accelerator.accelerator_type if accelerator else None,
        accelerator_count=accelerator.count if accelerator else 0,
        service_account=options.service_account or defaults.get("service_account"),
        network=options.network or defaults.get("network"),
        spot=options.spot or bool(defaults.get("spot")),
        timeout_seconds=vj.parse_timeout(options.timeout) if options.timeout else None,
        restart_job_on_worker_restart=options.restart_on_worker_restart,
    )
    recorded = {
        "project": placement.project,
        "region": placement.region,
        "placement": asdict(placement),
        "max_qps": options.max_qps or defaults.get("max_qps"),
        "submit_quota": options.submit_quota or defaults.get("submit_quota"),
        "manage_quota": options.manage_quota or defaults.get("manage_quota"),
        **restart_policy(options, defaults),
        **remote_outputs(options.output_bucket or defaults.get("output_bucket")),
        "credentials_block": options.vertex_block,
        # Where the key is, never what it holds: status, stop and resubmit read it there.
        "credentials_file": service_account_key(options.cloud_key) if options.cloud_key else None,
    }
    registry = options.registry or defaults.get("registry")
    return Placed(recorded, gpu, tpu, registry, shown={"placement": placement})


def _default_machine(gpu, tpu, *, force: bool) -> str:
    """The catalog's machine for these accelerators; under --force, a count no machine takes
    gets Caliban's GPU machine (or the TPU host) and Vertex has the last word."""
    from caliban_flows.spec import accelerators as acc
    from caliban_flows.spec.catalog import load_catalog

    try:
        return acc.default_machine_type(gpu=gpu, tpu=tpu)
    except SpecError:
        if not force:
            raise
    catalog = load_catalog()
    if gpu is None and tpu is not None and catalog.tpus[tpu.tpu].machine_types:
        return catalog.tpus[tpu.tpu].machine_types[-1]
    return catalog.defaults.gpu_machine_type


def restart_policy(options, defaults: dict) -> dict:
    """--max_restarts and --restart_on_exit_codes, as a run records them (state/restarts.py)."""
    restarts = options.max_restarts
    restarts = restarts if restarts is not None else defaults.get("max_restarts") or 0
    codes = options.restart_on_exit_codes or list(defaults.get("restart_on_exit_codes") or [])
    if codes and not restarts:
        raise SpecError("--restart_on_exit_codes needs --max_restarts N (N restarts at most)")
    return {"max_restarts": restarts, "restart_on_exit_codes": codes}


def _k8s_restarts(policy: dict) -> dict:
    return {
        "max_restarts": policy["max_restarts"],
        "restart_on_exit_codes": tuple(policy["restart_on_exit_codes"]),
    }


def kubernetes(options: KubernetesOptions, *, probe: bool) -> Placed:
    from caliban_flows.plan.kubernetes import check_gpu_limits, key_credentials, target
    from caliban_flows.platforms.kubernetes.adapter import gke_of
    from caliban_flows.spec import k8s_job as kj
    from caliban_flows.spec.gke_tpu import parse_cluster_tpu

    # Cluster capacity, not Vertex's catalog, bounds GPU counts here; the type must still exist.
    gpu, _ = sub.accelerators(
        options.nogpu, options.gpu_spec, options.tpu_spec, validate_count=False, cluster=True
    )
    tpu = (
        parse_cluster_tpu(options.tpu_spec, legacy=options.tpu_legacy, force=options.force)
        if options.tpu_spec
        else None
    )
    where = target(
        context=options.context,
        namespace=options.namespace,
        kubeconfig=options.kubeconfig,
        block=options.cluster_block,
        cluster_name=options.cluster_name,
        project_id=options.project_id,
        zone=options.zone,
    )
    defaults = where.defaults
    gke = gke_of(where.context)
    backoff = options.backoff_limit
    resources = kj.resources(
        min_cpu=options.min_cpu,
        min_mem=options.min_mem,
        gpu=gpu,
        tpu=tpu,
        nonpreemptible=options.nonpreemptible,
        nonpreemptible_tpu=options.nonpreemptible_tpu,
        tpu_driver=options.tpu_driver,
        gke=gke is not None,
        backoff_limit=backoff
        if backoff is not None
        else defaults.get("backoff_limit", kj.DEFAULT_BACKOFF_LIMIT),
        # The Job itself replaces a disrupted pod (its podFailurePolicy): no caliban restart.
        **_k8s_restarts(restart_policy(options, defaults)),
    )
    if probe:
        where.connect(resources)  # a kubeconfig with no context to use: jobs must go somewhere
        if gke and gpu and not options.force:
            check_gpu_limits(gke, gpu, key_credentials(options.cloud_key))
    recorded = {
        "context": where.context,
        "namespace": where.namespace,
        "config_file": where.kubeconfig,
        "resources": asdict(resources),
        "cluster_block": options.cluster_block,
        "max_qps": options.max_qps or defaults.get("max_qps"),
        **remote_outputs(options.output_bucket, options.output_pvc),
    }
    registry = options.registry or defaults.get("registry")
    return Placed(recorded, gpu, tpu, registry, shown={"target": where, "resources": resources})
