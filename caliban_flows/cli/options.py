"""Options shared by several commands, in Caliban's underscore spelling (dashed aliases too)."""

from __future__ import annotations

from typing import Annotated

import typer

NoGpu = Annotated[bool, typer.Option("--nogpu", help="Build and run in CPU-only mode.")]
CloudKey = Annotated[
    str | None,
    typer.Option(
        "--cloud_key",
        "--cloud-key",
        metavar="KEY_FILE",
        help="Service-account key for submitting (defaults to $GOOGLE_APPLICATION_CREDENTIALS). "
        "Used by the client only: it is never copied into an image.",
    ),
]
CloudKeyLocal = Annotated[
    str | None,
    typer.Option(
        "--cloud_key",
        "--cloud-key",
        metavar="KEY_FILE",
        help="Service-account key for your code (defaults to $GOOGLE_APPLICATION_CREDENTIALS): "
        "mounted read-only into the container at run time, never copied into an image.",
    ),
]
CloudKeyBuild = Annotated[
    str | None,
    typer.Option(
        "--cloud_key",
        "--cloud-key",
        metavar="KEY_FILE",
        help="Service-account key (defaults to $GOOGLE_APPLICATION_CREDENTIALS): left out of "
        "the image even when it lies in this folder.",
    ),
]
Extras = Annotated[
    list[str] | None,
    typer.Option(
        "--extras", "-e", metavar="EXTRA", help="Extra setup.py extras to install; repeatable."
    ),
]
NoCache = Annotated[
    bool, typer.Option("--no_cache", "--no-cache", help="Build without Docker's layer cache.")
]
Dirs = Annotated[
    list[str] | None,
    typer.Option(
        "--dir",
        "-d",
        metavar="DIR",
        help="Extra directory to copy into the image; repeatable. Largest first caches best.",
    ),
]
ExperimentConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--experiment_config",
        "--experiment-config",
        metavar="FILE",
        help="JSON experiment config (lists sweep, \"[a,b]\" keys zip), or 'stdin'.",
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry_run", "--dry-run", help="Print every job that would run; build and submit nothing."
    ),
]
ImageId = Annotated[
    str | None,
    typer.Option(
        "--image_id",
        "--image-id",
        metavar="IMAGE",
        help="Use this local Docker image; skip the build.",
    ),
]
ImageTag = Annotated[
    str | None,
    typer.Option(
        "--image_tag",
        "--image-tag",
        metavar="IMAGE",
        help="Use this pushed image; skip the build and the push (--extras and --dir are unused).",
    ),
]
DockerRunArgs = Annotated[
    str | None,
    typer.Option(
        "--docker_run_args",
        "--docker-run-args",
        metavar="ARGS",
        help="Extra `docker run` arguments, one string, split shell-style.",
    ),
]
Xgroup = Annotated[
    str | None,
    typer.Option(
        "--xgroup",
        metavar="XGROUP",
        help="Experiment group to add these jobs to (created if new; a fresh name if omitted).",
    ),
]
ProjectId = Annotated[
    str | None,
    typer.Option(
        "--project_id",
        "--project-id",
        metavar="PROJECT",
        help="Google Cloud project (defaults to $PROJECT_ID, then gcloud's configured project).",
    ),
]
Region = Annotated[
    str | None,
    typer.Option(
        "--region",
        metavar="REGION",
        help="Vertex AI region (defaults to $REGION, then us-central1).",
    ),
]
MachineType = Annotated[
    str | None,
    typer.Option(
        "--machine_type",
        "--machine-type",
        metavar="TYPE",
        help="Machine type (default n1-standard-8 with GPUs, n1-highcpu-32 without).",
    ),
]
GpuSpecOpt = Annotated[
    str | None,
    typer.Option(
        "--gpu_spec",
        "--gpu-spec",
        metavar="NUMxGPU_TYPE",
        help="GPUs per job, e.g. 2xV100 or 1xL4 (default 1xP100 in GPU mode).",
    ),
]
TpuSpecOpt = Annotated[
    str | None,
    typer.Option(
        "--tpu_spec",
        "--tpu-spec",
        metavar="NUMxTPU_TYPE",
        help="TPUs per job. Vertex AI: 8xV2, 8xV3, 4xV4, 1xV5E, 4xV5E or 8xV5E (on "
        "cloud-tpu or ct5lp-hightpu-{1,4,8}t). Clusters: chips of one GKE TPU slice node, "
        "topology from the count: 4xV4 (2x2x1), 1xV5E (1x1), 4xV5E (2x2), 8xV5E (2x4), 4xV5P "
        "(2x2x1), 1xV6E (1x1), 4xV6E (2x2), 8xV6E (2x4); 8xV3 with --tpu_legacy. Without "
        "--gpu_spec this implies CPU mode.",
    ),
]
TpuLegacy = Annotated[
    bool,
    typer.Option(
        "--tpu_legacy",
        "--tpu-legacy",
        help="Ask for TPUs as Caliban did, as deprecated Cloud TPU Nodes (V2/V3, a "
        "cloud-tpus.google.com resource and the --tpu_driver annotation), for clusters that "
        "still have them.",
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Skip every machine, accelerator (type, count) and region check of caliban's "
        "catalog; the platform may still refuse the jobs.",
    ),
]
JobName = Annotated[
    str | None, typer.Option("--name", metavar="NAME", help="Job name (default caliban_<user>).")
]
Labels = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", help="Extra job label; repeatable."),
]
Module = Annotated[
    str,
    typer.Argument(
        metavar="MODULE",
        help="Code to run: a module (trainer.train), a script (trainer/train.py) or any "
        "other file (run.sh, run with bash).",
        show_default=False,
    ),
]
ScriptArgs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[-- SCRIPT_ARGS...]",
        help="Arguments after `--` go to your script, before the experiment's flags.",
        show_default=False,
    ),
]
ClusterName = Annotated[
    str | None,
    typer.Option("--cluster_name", "--cluster-name", metavar="NAME", help="Cluster name."),
]
Zone = Annotated[str | None, typer.Option("--zone", metavar="ZONE", help="Compute zone.")]
# Commands that read or act on jobs already submitted: their own help, not a submit command's.
XgroupShown = Annotated[
    str | None,
    typer.Option(
        "--xgroup",
        metavar="XGROUP",
        help="Show this experiment group only (default: your newest jobs of every group).",
    ),
]
XgroupToResubmit = Annotated[
    str, typer.Option("--xgroup", metavar="XGROUP", help="Experiment group whose jobs to rerun.")
]
ProjectIgnored = Annotated[
    str | None,
    typer.Option(
        "--project_id",
        "--project-id",
        metavar="PROJECT",
        help="Accepted as Caliban did; each job is rerun in the project it ran in.",
    ),
]
DryRunStop = Annotated[
    bool,
    typer.Option("--dry_run", "--dry-run", help="List the jobs it would stop; stop nothing."),
]
DryRunResubmit = Annotated[
    bool,
    typer.Option(
        "--dry_run",
        "--dry-run",
        help="List the jobs it would rerun; build and submit nothing.",
    ),
]
DryRunSubmitFile = Annotated[
    bool,
    typer.Option(
        "--dry_run",
        "--dry-run",
        help="Have the cluster's API server validate the manifest (a server-side dry run); "
        "submit nothing.",
    ),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
User = Annotated[
    str | None,
    typer.Option("--user", metavar="NAME", help="This user's groups (default: your own)."),
]
AllUsers = Annotated[
    bool, typer.Option("--all_users", "--all-users", help="Every user's groups, not only yours.")
]
Registry = Annotated[
    str | None,
    typer.Option(
        "--registry",
        metavar="HOST[/PATH]",
        help="Registry to push to (default: $CALIBAN_REGISTRY, then .calibanconfig.json).",
    ),
]
RegistryBlock = Annotated[
    str | None,
    typer.Option(
        "--registry_block",
        metavar="NAME",
        help="Push with this Prefect 'Docker Registry Credentials' block (URL and login).",
    ),
]
ServiceAccount = Annotated[
    str | None,
    typer.Option("--service_account", metavar="EMAIL", help="Service account the jobs run as."),
]
Network = Annotated[
    str | None,
    typer.Option(
        "--network", metavar="NETWORK", help="VPC network to peer with (projects/N/global/...)."
    ),
]
Spot = Annotated[bool, typer.Option("--spot", help="Run on Spot VMs (cheaper, preemptible).")]
Timeout = Annotated[
    str | None,
    typer.Option(
        "--timeout", metavar="DURATION", help="Stop a job after this long: 3600, 90m, 12h."
    ),
]
RestartOnWorkerRestart = Annotated[
    bool,
    typer.Option(
        "--restart_on_worker_restart", help="Restart the job when its worker VM restarts."
    ),
]
MaxQps = Annotated[
    float | None,
    typer.Option(
        "--max_qps",
        metavar="N",
        min=0.1,
        help="Most API requests per second while submitting (Vertex AI: default 10, and "
        "creates also keep to --submit_quota).",
    ),
]
MaxRestarts = Annotated[
    int | None,
    typer.Option(
        "--max_restarts",
        metavar="N",
        min=0,
        max=100,
        help="Restart a job that the infrastructure ended (Spot preemption, stockout, a lost "
        "VM or node, eviction) up to N times, as attempt 2, 3 ... Its own failures are not "
        "restarted.",
    ),
]


def _exit_codes(text: str | None) -> str | None:
    for part in (text or "").split(","):
        if part.strip() and not (part.strip().isdigit() and 1 <= int(part) <= 255):
            raise typer.BadParameter(f"{part.strip()!r} is not an exit code (1-255): e.g. 137,143")
    return text


RestartOnExitCodes = Annotated[
    str | None,
    typer.Option(
        "--restart_on_exit_codes",
        metavar="CODES",
        callback=_exit_codes,
        help="Also restart a job whose code exits with one of these, e.g. 137,143 (needs "
        "--max_restarts).",
    ),
]
SubmitQuota = Annotated[
    float | None,
    typer.Option(
        "--submit_quota",
        metavar="PER_MINUTE",
        min=0.1,
        help="Vertex AI job submissions a minute your project allows in the region (default "
        "60, Vertex's default quota). Shared by every caliban on the same Prefect server.",
    ),
]
ManageQuota = Annotated[
    float | None,
    typer.Option(
        "--manage_quota",
        metavar="PER_MINUTE",
        min=0.1,
        help="Vertex AI get, list and cancel requests a minute your project allows in the "
        "region (default 600, Vertex's default quota).",
    ),
]
Wait = Annotated[
    bool, typer.Option("--wait", help="Follow the jobs to their end, with a live summary.")
]
VertexBlock = Annotated[
    str | None,
    typer.Option(
        "--vertex_block",
        "--block",
        metavar="NAME",
        help="Defaults (project, region, service account, registry ...) from this Prefect "
        "'Caliban Vertex Settings' block.",
    ),
]
MaxRunning = Annotated[
    int | None,
    typer.Option(
        "--max_running",
        "--max-running",
        metavar="N",
        min=1,
        help="At most N of the group's jobs run at once (with --pool: of every group in that "
        "pool); the rest wait their turn. A Prefect global concurrency limit: the Prefect "
        "UI shows it and can change it.",
    ),
]
Pool = Annotated[
    str | None,
    typer.Option(
        "--pool",
        metavar="NAME",
        help="Share the --max_running cap with every group that names this pool.",
    ),
]
Objective = Annotated[
    str | None,
    typer.Option(
        "--objective",
        metavar="METRIC:max|min",
        help="The metric that makes a job the best (largest for :max, the default; smallest "
        "for :min): the group's results summary in Prefect names its best job, and caliban "
        "results ranks by it.",
    ),
]
Kubeconfig = Annotated[
    str | None,
    typer.Option(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
    ),
]
