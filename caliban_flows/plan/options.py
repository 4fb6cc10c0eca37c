"""Each platform's options, typed: the CLI's flags and a deployment's parameters fill the same
model, so both plan identical groups and Prefect shows (and validates) a form for each.

Field names are the CLI's flag names without dashes; `extra="forbid"` makes a typo in a
deployment's YAML fail the run instead of being ignored.
"""

from __future__ import annotations

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator


class SubmitOptions(BaseModel):
    """What every job-running command takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nogpu: bool = Field(False, description="Build and run in CPU-only mode.")
    extras: list[str] = Field(default_factory=list, description="setup.py extras to install.")
    dirs: list[str] = Field(
        default_factory=list, description="Extra folders to copy into the image (--dir)."
    )
    no_cache: bool = Field(False, description="Build without Docker's layer cache.")
    max_running: int | None = Field(
        None, ge=1, description="At most this many of the group's jobs run at once."
    )
    pool: str | None = Field(None, description="Share the max_running cap with this pool.")
    objective: str | None = Field(
        None,
        description="METRIC:max or METRIC:min: the metric that makes a job the best, named "
        "in the run's results summary and caliban results.",
    )


class RemoteOptions(SubmitOptions):
    """What both remote platforms take: accelerators, pacing, where images are pushed."""

    gpu_spec: str | None = Field(None, description="GPUs per job, e.g. 2xV100.")
    tpu_spec: str | None = Field(None, description="TPUs per job, e.g. 8xV3.")
    force: bool = Field(
        False, description="Skip every machine, accelerator and region check of the catalog."
    )
    max_qps: float | None = Field(None, ge=0.1, description="Requests per second submitting.")
    registry: str | None = Field(None, description="Registry to push a built image to.")
    registry_block: str | None = Field(
        None, description="Prefect 'Docker Registry Credentials' block to push with."
    )
    wait: bool = Field(False, description="Follow the jobs to their end.")
    max_restarts: int | None = Field(
        None,
        ge=0,
        le=100,
        description="Restart a job the infrastructure ended (preempted, evicted) up to N times.",
    )
    restart_on_exit_codes: list[int] = Field(
        default_factory=list,
        description="Also restart a job whose code exited with one of these, e.g. [137, 143].",
    )

    @field_validator("restart_on_exit_codes", mode="before")
    @classmethod
    def _codes(cls, value):
        """'137,143' (the flag's text) or a list; each an exit code 1-255."""
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            if not all(p.isdigit() for p in parts):
                raise ValueError(f"{value!r}: give exit codes separated by commas, e.g. 137,143")
            value = [int(p) for p in parts]
        for code in value or []:
            if not 1 <= int(code) <= 255:
                raise ValueError(f"exit code {code} is not one a job can exit with (1-255)")
        return sorted(set(int(c) for c in value or []))


class LocalOptions(SubmitOptions):
    """`caliban run`: containers on this machine's Docker engine."""

    parallel: int = Field(1, ge=1, description="Jobs to run at once.")
    docker_run_args: str | None = Field(None, description="Extra `docker run` arguments.")
    cloud_key: str | None = Field(
        None, description="Service-account key file to mount read-only in the containers."
    )
    output_dir: str | None = Field(
        None,
        description="Host folder holding each job's output folder (default: "
        "$CALIBAN_HOME/outputs, i.e. ~/.caliban/outputs).",
    )


class VertexOptions(RemoteOptions):
    """`caliban cloud`: Vertex AI CustomJobs."""

    project_id: str | None = Field(
        None,
        description="Google Cloud project.",
        # `project` is what deployments of earlier releases wrote.
        validation_alias=AliasChoices("project_id", "project"),
    )
    region: str | None = Field(None, description="Vertex AI region.")
    machine_type: str | None = Field(None, description="Machine type, e.g. n1-standard-8.")
    service_account: str | None = Field(None, description="Service account the jobs run as.")
    network: str | None = Field(None, description="VPC network to peer with.")
    spot: bool = Field(False, description="Run on Spot VMs.")
    timeout: str | None = Field(None, description="Stop a job after this long: 3600, 90m, 12h.")
    restart_on_worker_restart: bool = Field(
        False, description="Restart the job when its worker VM restarts."
    )
    submit_quota: float | None = Field(
        None, gt=0, description="Job submissions a minute the project and region allow (60)."
    )
    manage_quota: float | None = Field(
        None, gt=0, description="Get, list and cancel calls a minute they allow (600)."
    )
    vertex_block: str | None = Field(
        None, description="Defaults from this 'Caliban Vertex Settings' block."
    )
    output_bucket: str | None = Field(
        None, description="gs://BUCKET[/PREFIX] holding each job's output folder."
    )
    cloud_key: str | None = Field(
        None, description="Service-account key file to submit the jobs with."
    )


class KubernetesOptions(RemoteOptions):
    """`caliban cluster job submit`: batch/v1 Jobs on a cluster in a kubeconfig."""

    context: str | None = Field(None, description="kubeconfig context (default: current).")
    namespace: str | None = Field(None, description="Namespace (default: the context's).")
    kubeconfig: str | None = Field(None, description="kubeconfig file.")
    cluster_block: str | None = Field(
        None, description="Defaults from this 'Caliban Cluster Settings' block."
    )
    cluster_name: str | None = Field(None, description="GKE cluster whose context to use.")
    project_id: str | None = Field(None, description="GKE project of cluster_name.")
    zone: str | None = Field(None, description="GKE location of cluster_name.")
    min_cpu: int | None = Field(None, ge=1, description="CPU request in milli-CPUs.")
    min_mem: int | None = Field(None, ge=1, description="Memory request in MB.")
    tpu_driver: str = Field("1.14", description="TPU software version.")
    nonpreemptible_tpu: bool = Field(False, description="Non-preemptible TPUs.")
    tpu_legacy: bool = Field(
        False, description="TPUs as deprecated Cloud TPU Nodes (V2/V3), as Caliban asked."
    )
    nonpreemptible: bool = Field(False, description="Non-preemptible (non-spot) GKE nodes.")
    backoff_limit: int | None = Field(None, ge=0, description="Pod retries before a Job fails.")
    cloud_key: str | None = Field(
        None, description="Service-account key file for the GKE API (the GPU limit check)."
    )
    output_bucket: str | None = Field(
        None,
        description="gs://BUCKET[/PREFIX] holding each job's output folder, mounted with GKE's "
        "Cloud Storage FUSE CSI driver.",
    )
    output_pvc: str | None = Field(
        None, description="PersistentVolumeClaim holding each job's output folder."
    )


PlatformOptions = LocalOptions | VertexOptions | KubernetesOptions
BY_PLATFORM: dict[str, type[SubmitOptions]] = {
    "local": LocalOptions,
    "vertex": VertexOptions,
    "kubernetes": KubernetesOptions,
}


def options_for(platform: str, given: dict | SubmitOptions | None) -> SubmitOptions:
    """`given` as `platform`'s options; unknown or ill-typed ones raise ValueError (one line)."""
    from pydantic import ValidationError

    model = BY_PLATFORM.get(platform)
    if model is None:  # a platform registered from outside (SpecError when there is none)
        from caliban_flows.platforms import registry

        model = registry.get(platform).options or SubmitOptions
    if isinstance(given, model):
        return given
    data = given.model_dump(exclude_unset=True) if isinstance(given, BaseModel) else given
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise ValueError(f"{platform} options: {where}: {first['msg']}") from None


def platform_of(options: SubmitOptions) -> str:
    """The built-in platform these options are for."""
    return next(name for name, model in BY_PLATFORM.items() if type(options) is model)
