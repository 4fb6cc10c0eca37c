"""GKE cluster management end to end: `caliban cluster create/ls/delete` and the GPU check of
`cluster job submit`, with the real google-cloud-container client against the ClusterManager
emulator (gRPC on loopback) and Compute Engine's quotas from its REST emulator."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import yaml

from devtools.gke_emulator import ComputeQuotaEmulator, GkeEmulator
from devtools.k8s_apps import sample_daemonset
from devtools.k8s_emulator import K8sEmulator
from tests.conftest import caliban_runner

PROJECT = "caliban-gke"
QUOTAS = {"us-central1": {"CPUS": 72, "NVIDIA_T4_GPUS": 4, "NVIDIA_V100_GPUS": 0.5}}
IMAGE = "127.0.0.1:5000/caliban-tests/gke:1"


@pytest.fixture
def gke(tmp_path, caliban_home):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text("print('hi')\n")
    with (
        GkeEmulator(op_seconds=0.3) as clusters,
        ComputeQuotaEmulator(QUOTAS, trust=clusters) as compute,
        # TLS and Google's credentials, as a GKE control plane: `cluster create` applies
        # the NVIDIA driver DaemonSet to the cluster it made, which answers here.
        K8sEmulator(
            run_containers=False,
            sim_step=0.05,
            tls=True,
            require_auth=True,
            authenticate=clusters.authenticates,
        ) as kube,  # fmt: skip
    ):
        clusters.kube_port = kube.port
        daemonset = tmp_path / "nvidia-driver-daemonset.yaml"
        daemonset.write_text(yaml.safe_dump(sample_daemonset()))
        context = f"gke_{PROJECT}_us-central1_c1"  # as gcloud get-credentials names it
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", context=context)
        env = {
            **os.environ,
            "CALIBAN_HOME": str(caliban_home),
            "HOME": str(tmp_path / "home"),
            **clusters.client_env(clusters.new_key(), compute),
            "KUBECONFIG": str(kubeconfig),
            "CALIBAN_REGISTRY": "127.0.0.1:5000",
            "PROJECT_ID": PROJECT,
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
            "CALIBAN_NVIDIA_DRIVER_DAEMONSET": str(daemonset),
        }
        env.pop("PREFECT_API_URL", None)
        yield clusters, kube, caliban_runner(tmp_path, env)


def test_create_ls_submit_check_and_delete_a_cluster(gke):
    clusters, kube, cli = gke
    dry = cli("cluster", "create", "--cluster_name", "c1", "--zone", "us-central1-a", "--dry_run")
    assert dry.returncode == 0, dry.stderr
    request = json.loads(dry.stdout[: dry.stdout.rindex("}") + 1])
    limits = {r["resource_type"]: r["maximum"] for r in
              request["cluster"]["autoscaling"]["resource_limits"]}  # fmt: skip
    # From quota: memory is 64 GB per CPU, and a quota under 1 (V100 here) gets no maximum.
    assert limits == {"cpu": 72, "memory": 72 * 64, "nvidia-tesla-t4": 4}
    assert request["parent"] == f"projects/{PROJECT}/locations/us-central1"  # regional
    assert request["cluster"]["release_channel"] == {"channel": "REGULAR"}
    assert "enable_tpu" not in request["cluster"]  # TPU slice node pools, not TPU Nodes
    assert clusters.clusters() == []

    made = cli("cluster", "create", "--cluster_name", "c1", "--zone", "us-central1-a")
    assert made.returncode == 0, made.stderr
    assert "created cluster c1" in made.stderr
    assert [d["metadata"]["name"] for d in kube.daemonsets()] == ["nvidia-driver-installer"]
    [cluster] = clusters.clusters()
    assert cluster.name == "c1" and cluster.status.name == "RUNNING"
    assert cluster.autoscaling.enable_node_autoprovisioning
    assert len(cluster.locations) == 4

    listed = cli("cluster", "ls")
    assert listed.returncode == 0, listed.stderr
    assert f"gke_{PROJECT}_us-central1_c1" in listed.stdout  # the kubeconfig context
    row = next(line for line in listed.stdout.splitlines() if line.startswith("c1 "))
    assert "us-central1" in row and "RUNNING" in row and "nvidia-tesla-t4=4" in row

    # Caliban's check: the cluster can never provision 8 T4s, or any V100.
    for spec, needle in (("8xT4", "at most 4"), ("1xV100", "cannot provision")):
        refused = cli("cluster", "job", "submit", "--cluster_name", "c1", "--gpu_spec", spec,
                      "--image_tag", IMAGE, "trainer.train")  # fmt: skip
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert needle in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert kube.jobs() == []
    xgroup = f"g-{uuid.uuid4().hex[:6]}"
    sent = cli("cluster", "job", "submit", "--cluster_name", "c1", "--gpu_spec", "2xT4",
               "--image_tag", IMAGE, "--xgroup", xgroup, "trainer.train")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    [job] = kube.jobs()
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4",
                                   "cloud.google.com/gke-spot": "true"}  # fmt: skip
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    rows = json.loads(cli("status", "--xgroup", xgroup, "--format", "json").stdout)
    assert rows[0]["console_url"].startswith(
        "https://console.cloud.google.com/kubernetes/job/us-central1/c1/default/"
    )

    kept = cli("cluster", "delete", "--cluster_name", "c1", input="n\n")
    assert kept.returncode == 0 and "nothing deleted" in kept.stdout
    assert len(clusters.clusters()) == 1
    gone = cli("cluster", "delete", "--cluster_name", "c1", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert clusters.clusters() == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (["create", "--cluster_name", "Bad_Name"], "--cluster_name"),
        (["create"], "--cluster_name"),
        (["create", "--cluster_name", "c2", "--zone", "mars-north1-a"], "mars-north1"),
        (["delete", "--cluster_name", "nope", "--yes"], "no cluster named 'nope'"),
    ],
)
def test_bad_cluster_management_is_one_line(gke, args, needle):
    _, _, cli = gke
    done = cli("cluster", *args)
    assert done.returncode in (1, 2), done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and needle in done.stderr, done.stderr


def test_cloud_key_is_the_identity_cluster_commands_use(gke, tmp_path):
    """The environment's key is one GKE does not know; --cloud_key names one it trusts."""
    clusters, kube, cli = gke
    key = clusters.new_key(tmp_path / "sa.json")
    env = {**cli.env, "GOOGLE_APPLICATION_CREDENTIALS": str(clusters.new_key(trusted=False))}
    refused = cli("cluster", "ls", "--project_id", PROJECT, env=env)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    made = cli("cluster", "create", "--cluster_name", "c1", "--zone", "us-central1-a",
               "--cloud_key", str(key), env=env)  # fmt: skip
    assert made.returncode == 0, made.stderr
    listed = cli("cluster", "ls", "--project_id", PROJECT, "--cloud_key", str(key), env=env)
    assert listed.returncode == 0 and "c1 " in listed.stdout, listed.stderr
    # job submit's GPU check asks GKE with the key too; without it, that check is refused.
    submit = ("cluster", "job", "submit", "--cluster_name", "c1", "--gpu_spec", "8xT4",
              "--image_tag", IMAGE, "trainer.train")  # fmt: skip
    checked = cli(*submit[:3], "--cloud_key", str(key), *submit[3:], env=env)
    assert checked.returncode == 2 and "at most 4" in checked.stderr, checked.stderr
    unchecked = cli(*submit, env=env)
    assert unchecked.returncode == 1 and "cannot read GKE cluster" in unchecked.stderr
    bad = cli(*submit[:3], "--cloud_key", str(tmp_path / "missing.json"), *submit[3:], env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert kube.jobs() == []
    gone = cli("cluster", "delete", "--cluster_name", "c1", "--yes", "--cloud_key", str(key),
               env=env)  # fmt: skip
    assert gone.returncode == 0, gone.stderr
