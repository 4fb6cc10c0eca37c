"""What Caliban users did with `caliban cluster`, end to end through the CLI: `job submit
--export` (build, push, write, submit nothing), manifests that pass the Kubernetes schema
strictly, and the listings `pod ls`, `job ls` and `node_pool ls`. Against the Kubernetes
emulator, the GKE emulator, and the real engine and registry."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from devtools.gke_emulator import ComputeQuotaEmulator, GkeEmulator
from devtools.k8s_apps import sample_daemonset
from devtools.k8s_emulator import K8sEmulator
from tests.conftest import caliban_runner

PROJECT = "caliban-gke"
SUBMIT = ("cluster", "job", "submit")
# A Kubernetes release the package knows, recent enough for podFailurePolicy and friends.
SCHEMA_VERSION = kubernetes_validate.latest_version()


def _project(root: Path) -> Path:
    (root / "trainer").mkdir(parents=True)
    (root / "trainer" / "__init__.py").write_text("")
    (root / "trainer" / "train.py").write_text(f"print('hi')  # {uuid.uuid4()}\n")
    (root / "requirements.txt").write_text("")
    return root


@pytest.fixture
def kube(tmp_path):
    with K8sEmulator(run_containers=False, sim_step=0.05) as emulator:
        kubeconfig = emulator.write_kubeconfig(tmp_path / "kubeconfig", namespace="research")
        env = {
            **os.environ,
            "CALIBAN_HOME": str(tmp_path / "caliban"),
            "HOME": str(tmp_path / "home"),
            "KUBECONFIG": str(kubeconfig),
            "CALIBAN_REGISTRY": "127.0.0.1:5000",
            "PROJECT_ID": "",
        }
        env.pop("PREFECT_API_URL", None)
        yield emulator, caliban_runner(_project(tmp_path / "project"), env)


def _manifest_file(path: Path) -> tuple[str, dict]:
    text = path.read_text()
    return text, (json.loads(text) if path.suffix == ".json" else yaml.safe_load(text))


def _in_registry(image: str) -> bool:
    registry, _, rest = image.partition("/")
    repo, _, tag = rest.rpartition(":")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{registry}/v2/{repo}/tags/list", timeout=10) as answer:
        return tag in json.loads(answer.read())["tags"]


def test_export_builds_pushes_writes_the_real_image_and_submits_nothing(kube, docker_client):
    emulator, cli = kube
    done = cli(*SUBMIT, "--nogpu", "--export", "jobs.yaml", "trainer.train", "--", "--lr", "1")
    assert done.returncode == 0, done.stderr
    assert "nothing submitted" in done.stderr
    assert emulator.jobs() == [] and emulator.calls()["create jobs"] == 0
    text, job = _manifest_file(cli.cwd / "jobs.yaml")
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("127.0.0.1:5000/") and "placeholder" not in text
    assert _in_registry(image)  # pushed, under the name the file gives
    label = job["metadata"]["labels"]["docker_image"]
    assert label != "dry_run_tag" and label.startswith("127_0_0_1")
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)
    # Submitted later, as exported: the Job runs the pushed image.
    sent = cli("cluster", "job", "submit_file", "jobs.yaml")
    assert sent.returncode == 0, sent.stderr
    [made] = emulator.jobs()
    assert made["spec"]["template"]["spec"]["containers"][0]["image"] == image


@pytest.mark.parametrize(
    "accelerator, suffix",
    [
        (("--nogpu",), ".yaml"),
        (("--nogpu",), ".json"),
        (("--gpu_spec", "2xT4"), ".yaml"),
        (("--gpu_spec", "8xA100"), ".json"),
        (("--tpu_spec", "4xV4"), ".yaml"),  # TPU VM slices: google.com/tpu, node selectors
        (("--tpu_spec", "8xV5E"), ".json"),
        (("--tpu_spec", "8xV3", "--tpu_legacy"), ".yaml"),  # Cloud TPU Nodes, on request
    ],
    ids=["cpu", "cpu-json", "gpu-t4", "gpu-a100-json", "tpu-v4", "tpu-v5e-json", "tpu-legacy"],
)
def test_dry_run_exports_pass_strict_schema_validation(kube, accelerator, suffix):
    emulator, cli = kube
    path = cli.cwd / f"job{suffix}"
    done = cli(*SUBMIT, "--dry_run", *accelerator, "--export", path.name, "trainer.train")
    assert done.returncode == 0, done.stderr
    text, job = _manifest_file(path)
    kubernetes_validate.validate(job, SCHEMA_VERSION, strict=True)  # raises on any fault
    assert "placeholder" in text  # the file says its image is not a real one
    if suffix == ".yaml":
        assert text.startswith("# --dry_run")
    assert emulator.calls()["create jobs"] == 0


def _job(name: str) -> dict:
    container = {"name": "main", "image": "127.0.0.1:5000/caliban-tests/ls:1"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }


def test_pod_and_job_ls_list_every_namespace_as_caliban_did(kube):
    emulator, cli = kube
    empty = cli("cluster", "job", "ls")
    assert empty.returncode == 0 and empty.stdout.startswith("0 jobs found"), empty.stderr
    # Jobs made by anyone: here, manifests the user wrote, in two namespaces.
    for namespace in ("research", "other"):
        path = cli.cwd / f"{namespace}.yaml"
        path.write_text(yaml.safe_dump(_job(f"ls-{namespace}")))
        sent = cli("cluster", "job", "submit_file", path.name, "-n", namespace)
        assert sent.returncode == 0, sent.stderr
    jobs = cli("cluster", "job", "ls")
    assert jobs.returncode == 0, jobs.stderr
    assert jobs.stdout.startswith("2 jobs found")
    rows = {line.split()[0]: line for line in jobs.stdout.splitlines()[2:]}
    assert set(rows) == {"research", "other"}
    one = cli("cluster", "job", "ls", "-n", "other")
    assert one.stdout.startswith("1 job found") and "research" not in one.stdout
    pods = cli("cluster", "pod", "ls")
    assert pods.returncode == 0 and pods.stdout.startswith("2 pods found"), pods.stderr
    names = {pod["metadata"]["name"] for pod in emulator.pods()}
    assert all(name in pods.stdout for name in names)
    bad = cli("cluster", "pod", "ls", "--context", "nope")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.fixture
def gke(tmp_path):
    """GKE whose new clusters' control plane is a TLS Kubernetes emulator accepting the
    Google credentials that GKE trusts."""
    quotas = {"us-central1": {"CPUS": 72, "NVIDIA_T4_GPUS": 4}}
    with (
        GkeEmulator(op_seconds=0.2) as clusters,
        ComputeQuotaEmulator(quotas, trust=clusters) as compute,
        K8sEmulator(tls=True, require_auth=True, authenticate=clusters.authenticates) as kube,
    ):
        clusters.kube_port = kube.port
        env = {
            **os.environ,
            "CALIBAN_HOME": str(tmp_path / "caliban"),
            "HOME": str(tmp_path / "home"),
            **clusters.client_env(clusters.new_key(), compute),
            "PROJECT_ID": PROJECT,
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        }
        env.pop("PREFECT_API_URL", None)
        yield clusters, kube, caliban_runner(_project(tmp_path / "project"), env), tmp_path


DAEMONSET = sample_daemonset()  # the test's own: caliban fetches Google's


def test_create_applies_the_nvidia_driver_daemonset_and_node_pool_ls(gke):
    clusters, kube, cli, tmp_path = gke
    source = tmp_path / "daemonset.yaml"
    source.write_text(yaml.safe_dump(DAEMONSET))
    env = {**cli.env, "CALIBAN_NVIDIA_DRIVER_DAEMONSET": str(source)}
    dry = cli("cluster", "create", "--cluster_name", "c1", "--dry_run", env=env)
    assert dry.returncode == 0 and str(source) in dry.stdout, dry.stderr
    made = cli("cluster", "create", "--cluster_name", "c1", "--zone", "us-central1-a", env=env)
    assert made.returncode == 0, made.stderr
    assert "applied the NVIDIA driver DaemonSet kube-system/nvidia-driver-installer" in made.stderr
    [applied] = kube.daemonsets()
    assert applied["metadata"]["namespace"] == "kube-system"
    assert applied["spec"]["selector"] == DAEMONSET["spec"]["selector"]

    clusters.autoprovision("c1", "nap-n1-standard-8-gpu", "n1-standard-8",
                           {"nvidia-tesla-t4": 2}, max_nodes=4)  # fmt: skip
    pools = cli("cluster", "node_pool", "ls", "--cluster_name", "c1")
    assert pools.returncode == 0, pools.stderr
    lines = pools.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "MACHINE"]
    gpu_row = next(line for line in lines if line.startswith("nap-"))
    assert gpu_row.split()[1:4] == ["n1-standard-8", "nvidia-tesla-t4(2)", "4"]
    assert any(line.startswith("default-pool ") for line in lines)

    # A manifest out of reach: the cluster stays, and one line says how to finish.
    missing = {**env, "CALIBAN_NVIDIA_DRIVER_DAEMONSET": str(tmp_path / "gone.yaml")}
    second = cli("cluster", "create", "--cluster_name", "c2", "--single_zone", env=missing)
    last = second.stderr.strip().splitlines()[-1]
    assert second.returncode == 1 and "c2 was created" in last and "kubectl apply -f" in last
    assert {c.name for c in clusters.clusters()} == {"c1", "c2"}


def test_cluster_commands_without_credentials_say_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GOOGLE_APPLICATION_CREDENTIALS"}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), PROJECT_ID="p",
               CALIBAN_HOME=str(tmp_path / "caliban"))  # fmt: skip
    cli = caliban_runner(tmp_path, env)
    for args in (("delete", "--cluster_name", "c", "--yes"), ("node_pool", "ls"),
                 ("create", "--cluster_name", "c")):  # fmt: skip
        done = cli("cluster", *args)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert "gcloud auth application-default login" in done.stderr
        assert "internal error" not in done.stderr
