"""TPUs and the catalog checks end to end, as a user types them: GKE TPU slice nodes on a cluster
made by `caliban cluster create` (ClusterManager and Compute Engine emulators, then the
Kubernetes emulator), Vertex TPU VM machine types against the Vertex emulator, `--force`, K80,
and the fixed command line offered for words typed between the module and `--`."""

from __future__ import annotations

import os
import shlex
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from devtools.gke_emulator import ComputeQuotaEmulator, GkeEmulator
from devtools.k8s_emulator import K8sEmulator
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import caliban_runner

PROJECT = "caliban-tpu"
QUOTAS = {"us-central1": {"CPUS": 48, "NVIDIA_K80_GPUS": 2, "TPU_LITE_PODSLICE_V5": 16}}
IMAGE = "127.0.0.1:5000/caliban-tests/tpu:1"  # never pulled: the emulators only simulate
KUBERNETES = "1.33.0"  # a current Kubernetes for kubernetes-validate's strict schemas


def _project(tmp_path: Path) -> None:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text("print('hi')\n")


def _env(tmp_path: Path, home: Path) -> dict:
    env = {
        **os.environ,
        "CALIBAN_HOME": str(home),
        "HOME": str(tmp_path / "home"),
        "CALIBAN_REGISTRY": "127.0.0.1:5000",
        "PROJECT_ID": PROJECT,
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
    }
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.fixture
def gke(tmp_path, caliban_home):
    _project(tmp_path)
    with (
        GkeEmulator(op_seconds=0.2) as clusters,
        ComputeQuotaEmulator(QUOTAS, trust=clusters) as compute,
        K8sEmulator(run_containers=False, sim_step=0.05) as kube,
    ):
        context = f"gke_{PROJECT}_us-central1_c1"
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig", context=context)
        env = {**_env(tmp_path, caliban_home), **clusters.client_env(clusters.new_key(), compute)}
        env["KUBECONFIG"] = str(kubeconfig)
        yield clusters, kube, caliban_runner(tmp_path, env)


@pytest.fixture
def vertex(tmp_path, caliban_home):
    _project(tmp_path)
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=3) as emulator:
        env = {**_env(tmp_path, caliban_home), **emulator.client_env(emulator.new_key())}
        yield emulator, caliban_runner(tmp_path, env)


def one_line(done) -> str:
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr


def test_a_cluster_made_for_tpu_slices_runs_a_tpu_job_on_one(gke, tmp_path):
    clusters, kube, cli = gke
    made = cli("cluster", "create", "--cluster_name", "c1", "--tpu_limit", "V6E=32")
    # What follows the create (the NVIDIA driver DaemonSet, item 13) is not this test's subject.
    assert "created cluster c1" in made.stderr, made.stderr
    [cluster] = clusters.clusters()
    limits = {r.resource_type: r.maximum for r in cluster.autoscaling.resource_limits}
    # v5e from the region's quota, v6e from the flag; TPU VM slices, not Cloud TPU Nodes.
    assert limits["tpu-v5-lite-podslice"] == 16 and limits["tpu-v6e-slice"] == 32
    assert not cluster.enable_tpu

    xgroup = f"t-{uuid.uuid4().hex[:6]}"
    sent = cli("cluster", "job", "submit", "--cluster_name", "c1", "--tpu_spec", "4xV5E",
               "--image_tag", IMAGE, "--xgroup", xgroup, "trainer.train")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    [job] = kube.jobs()
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": "4"}
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
        "cloud.google.com/gke-spot": "true",
    }
    assert "annotations" not in job["spec"]["template"]["metadata"]


@pytest.mark.parametrize(
    "flags, limits",
    [
        (["--nogpu"], None),
        (["--gpu_spec", "2xT4"], {"nvidia.com/gpu": "2"}),
        (["--tpu_spec", "8xV6E"], {"google.com/tpu": "8"}),
        (["--tpu_spec", "4xV5P", "--nonpreemptible_tpu"], {"google.com/tpu": "4"}),
        (["--tpu_spec", "8xV3", "--tpu_legacy"], {"cloud-tpus.google.com/preemptible-v3": "8"}),
    ],
)
def test_exported_manifests_pass_strict_kubernetes_validation(gke, tmp_path, flags, limits):
    _, kube, cli = gke
    done = cli("cluster", "job", "submit", "--dry_run", "--export", "jobs.yaml", *flags,
               "--image_tag", IMAGE, "trainer.train")  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load((tmp_path / "jobs.yaml").read_text())
    kubernetes_validate.validate(manifest, KUBERNETES, strict=True)
    assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"].get("limits") == (
        limits
    )
    assert kube.jobs() == []


def test_gke_refuses_what_its_tpu_nodes_cannot_run_in_one_line(gke):
    _, kube, cli = gke
    for flags, needle in (
        (["--tpu_spec", "8xV3"], "--tpu_legacy"),
        (["--tpu_spec", "16xV6E"], "1xV6E, 4xV6E, 8xV6E"),
        (["--tpu_spec", "4xV5E", "--tpu_legacy"], "V2 or V3 only"),
    ):
        done = cli("cluster", "job", "submit", *flags, "--image_tag", IMAGE, "trainer.train")
        assert done.returncode == 2 and needle in one_line(done), done.stderr
    assert kube.jobs() == []


def test_a_vertex_tpu_job_from_the_command_offered_for_words_after_the_module(vertex):
    emulator, cli = vertex
    xgroup = f"v-{uuid.uuid4().hex[:6]}"
    typed = ["cloud", "--tpu_spec", "4xV5E", "--image_tag", IMAGE, "trainer.train", "--lr",
             "0.1", "--xgroup", xgroup, "--name=nightly"]  # fmt: skip
    done = cli(*typed)
    assert done.returncode == 2
    fixed = one_line(done).split("did you mean: ", 1)[1].strip()
    assert fixed == (
        f"caliban cloud --tpu_spec 4xV5E --image_tag {IMAGE} --xgroup {xgroup} --name=nightly "
        "trainer.train -- --lr 0.1"
    )
    assert emulator.jobs() == []
    again = cli(*shlex.split(fixed)[1:])
    assert again.returncode == 0, again.stderr
    [job] = emulator.jobs()
    pool = job.job_spec.worker_pool_specs[0]
    assert list(pool.container_spec.args) == ["--lr", "0.1"]
    assert job.display_name.startswith("nightly")
    machine = pool.machine_spec
    assert (machine.machine_type, machine.accelerator_type.name, machine.accelerator_count) == (
        "ct5lp-hightpu-4t",
        "TPU_V5_LITEPOD",
        4,
    )

    # --force lets a count the catalog lacks through to Vertex, which has the last word.
    forced = cli("cloud", "--force", "--tpu_spec", "4xV3", "--image_tag", IMAGE, "--xgroup",
                 f"{xgroup}-forced", "trainer.train")  # fmt: skip
    assert forced.returncode != 0 and "cloud-tpu with 8" in one_line(forced), forced.stderr
    assert len(emulator.jobs()) == 1


def test_force_skips_the_gpu_checks_and_k80_is_vertex_only(vertex):
    emulator, cli = vertex
    refused = cli("cloud", "--tpu_spec", "4xV3", "--dry_run", "trainer.train")
    assert refused.returncode == 2 and "try one of: 8" in one_line(refused)
    for flags in (["--gpu_spec", "3xV100"], ["--gpu_spec", "2xV100", "--region", "europe-north1"],
                  ["--gpu_spec", "2xT4", "--machine_type", "n1-standard-96"]):  # fmt: skip
        assert cli("cloud", "--dry_run", *flags, "trainer.train").returncode == 2
        forced = cli("cloud", "--dry_run", "--force", *flags, "trainer.train")
        assert forced.returncode == 0, forced.stderr
    assert (
        "'count': 3, 'type': 'NVIDIA_TESLA_V100'}, machine: 'n1-standard-8'"
        in cli("cloud", "--dry_run", "--force", "--gpu_spec", "3xV100", "trainer.train").stdout
    )
    for force in ([], ["--force"]):
        k80 = cli("cloud", *force, "--gpu_spec", "1xK80", "--image_tag", IMAGE, "trainer.train")
        assert k80.returncode == 2 and "use T4 instead" in one_line(k80), k80.stderr
    on_a_cluster = cli("cluster", "job", "submit", "--dry_run", "--gpu_spec", "3xK80",
                       "trainer.train")  # fmt: skip
    assert on_a_cluster.returncode == 0, on_a_cluster.stderr
    assert "nvidia.com/gpu: '3'" in on_a_cluster.stdout
    assert emulator.jobs() == []
