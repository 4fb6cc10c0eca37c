"""The CLI and a deployment's sweep plan the same group from the same inputs: for every option
of every platform, the job records each leaves in Prefect are identical.

Each case is one set of options. The CLI side types them as flags (`caliban run`, `caliban
cloud`, `caliban cluster job submit`); the deployment side passes them as the `caliban-sweep`
flow's typed parameters (`local=`, `vertex=`, `kubernetes=`), run as a worker runs it. Both
go to the same embedded Prefect server, the real Docker engine and local registry, and the
Vertex AI and Kubernetes emulators (simulate mode: jobs are not run as containers). Then the
two groups' records (placement, recipes, jobs, cap) are compared, the group name aside.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from caliban_flows.plan.options import BY_PLATFORM
from devtools.k8s_emulator import K8sEmulator
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, caliban_runner
from tests.prefect_http import use_auth

IMAGE = "127.0.0.1:5000/caliban-tests/prebuilt:1"  # never pulled in simulate mode
SPACE = f"parity{uuid.uuid4().hex[:6]}"
GKE_CONTEXT = "gke_caliban-test_us-central1-a_c1"
COMMAND = {
    "local": ("run",),
    "vertex": ("cloud",),
    "kubernetes": ("cluster", "job", "submit"),
}
BUILD = {"build": True}  # the case builds from the folder (and pushes, when remote)
# Under every case of its platform unless the case sets it: the emulator meters no quota, and
# at the default 60 creates a minute the ~80 creates of the Vertex cases, all in one project
# and region, would take two minutes of pacing.
BASE = {"vertex": {"submit_quota": 6000}}

# (platform, case id, options on top of {"nogpu": True}); every option of every platform
# appears in at least one case (test_every_option_has_a_case). Options that touch different
# parts of a record share a case: each case is two submissions, and the module's setup is
# the longest of the suite.
CASES = [
    ("local", "defaults", {}),
    ("local", "gpu", {"nogpu": False}),
    ("local", "extras_dirs", {"extras": ["tests"], "dirs": ["data"]}),
    ("local", "no_cache", {"no_cache": True}),
    ("local", "max_running", {"max_running": 1}),
    ("local", "pool", {"max_running": 2, "pool": SPACE}),
    ("local", "parallel_run_args", {"parallel": 2, "docker_run_args": "--env A=1"}),
    # output_dir: outside the project's image
    (
        "local",
        "key_objective_output",
        {"cloud_key": "key.json", "objective": "accuracy:min", "output_dir": "../outputs"},
    ),
    ("vertex", "defaults", {}),
    ("vertex", "gpu", {"nogpu": False}),
    ("vertex", "gpu_spec", {"nogpu": False, "gpu_spec": "2xV100"}),
    ("vertex", "tpu_spec", {"tpu_spec": "8xV3"}),
    ("vertex", "force", {"force": True}),
    ("vertex", "pacing", {"max_qps": 20, "submit_quota": 120, "manage_quota": 1200}),
    ("vertex", "max_restarts", {"spot": True, "max_restarts": 2}),
    ("vertex", "restart_on_exit_codes", {"max_restarts": 1, "restart_on_exit_codes": "137,143"}),
    ("vertex", "build", BUILD),
    ("vertex", "extras_dirs", {**BUILD, "extras": ["tests"], "dirs": ["data"]}),
    ("vertex", "no_cache", {**BUILD, "no_cache": True}),
    ("vertex", "registry", {**BUILD, "registry": f"127.0.0.1:5000/{SPACE}"}),
    ("vertex", "registry_block", {**BUILD, "registry_block": SPACE}),
    ("vertex", "max_running", {"max_running": 1}),
    ("vertex", "pool", {"max_running": 2, "pool": SPACE}),
    ("vertex", "wait", {"wait": True}),
    ("vertex", "place", {"project_id": "another-project", "region": "europe-west4"}),
    (
        "vertex",
        "machine",
        {
            "machine_type": "n1-standard-16",
            "timeout": "90m",
            "service_account": "jobs@p.iam.gserviceaccount.com",
            "network": "projects/1/global/networks/lab",
            "restart_on_worker_restart": True,
        },
    ),
    ("vertex", "vertex_block", {"vertex_block": SPACE}),
    (
        "vertex",
        "key_objective_output",
        {
            "cloud_key": "key.json",
            "objective": "accuracy:min",
            "output_bucket": "gs://caliban-out/runs",
        },
    ),
    ("kubernetes", "defaults", {}),
    ("kubernetes", "gpu", {"nogpu": False}),
    ("kubernetes", "gpu_spec", {"nogpu": False, "gpu_spec": "2xT4"}),
    (
        "kubernetes",
        "tpu",
        {
            "context": GKE_CONTEXT,
            "tpu_spec": "8xV3",
            "tpu_legacy": True,
            "tpu_driver": "2.1",
            "nonpreemptible_tpu": True,
        },
    ),
    ("kubernetes", "tpu_spec", {"context": GKE_CONTEXT, "tpu_spec": "4xV5E"}),
    ("kubernetes", "force", {"force": True, "nogpu": False, "context": GKE_CONTEXT}),
    ("kubernetes", "max_restarts", {"max_restarts": 2}),
    ("kubernetes", "restart_on_exit_codes", {"max_restarts": 1, "restart_on_exit_codes": "137"}),
    ("kubernetes", "build", BUILD),
    ("kubernetes", "extras_dirs", {**BUILD, "extras": ["tests"], "dirs": ["data"]}),
    ("kubernetes", "no_cache", {**BUILD, "no_cache": True}),
    ("kubernetes", "registry", {**BUILD, "registry": f"127.0.0.1:5000/{SPACE}"}),
    ("kubernetes", "registry_block", {**BUILD, "registry_block": SPACE}),
    ("kubernetes", "max_running", {"max_running": 1}),
    ("kubernetes", "pool", {"max_running": 2, "pool": SPACE}),
    ("kubernetes", "wait", {"wait": True}),
    ("kubernetes", "place", {"context": "second", "namespace": "sweeps"}),
    ("kubernetes", "kubeconfig", {"kubeconfig": "KUBECONFIG"}),
    ("kubernetes", "cluster_block", {"cluster_block": SPACE}),
    (
        "kubernetes",
        "key_objective_output",
        {"cloud_key": "key.json", "objective": "accuracy:min", "output_bucket": "gs://caliban-out"},
    ),
    (
        "kubernetes",
        "gke_cluster",
        {"cluster_name": "c1", "project_id": "caliban-test", "zone": "us-central1-a"},
    ),
    (
        "kubernetes",
        "resources",
        {
            "min_cpu": 500,
            "min_mem": 1024,
            "nonpreemptible": True,
            "backoff_limit": 2,
            "max_qps": 20,
        },
    ),
    ("kubernetes", "output_pvc", {"output_pvc": "results"}),
]
# The first test submits every case (the module's fixture): minutes, not the default 300 s.
pytestmark = pytest.mark.timeout(1200)
TRAIN = "import sys\nprint('training with', sys.argv[1:], flush=True)\n"

# Runs in a fresh interpreter in the project folder: every case's sweep, as a worker would run
# the deployment's flow (its parameters validated by Prefect against the typed signature).
SWEEPS = """
import json, sys
from caliban_flows.server import backend
backend.use_backend()
from caliban_flows.flows.sweep import sweep
out = {}
for case in json.loads(sys.argv[1]):
    state = sweep(return_state=True, **case["params"])
    out[case["xgroup"]] = [state.type.value, state.message]
print(json.dumps(out))
"""
BLOCKS = f"""
import sys
from caliban_flows.server import backend
backend.use_backend()
from prefect_docker.credentials import DockerRegistryCredentials
from caliban_flows.blocks.kubernetes import ClusterSettings
from caliban_flows.blocks.vertex import VertexSettings
DockerRegistryCredentials(username="ci", password="pw", registry_url="127.0.0.1:5000/{SPACE}"
                          ).save("{SPACE}", overwrite=True)
VertexSettings(project="from-block", region="europe-west4", max_qps=50,
               service_account="jobs@from-block.iam.gserviceaccount.com").save("{SPACE}")
ClusterSettings(namespace="from-block", backoff_limit=3).save("{SPACE}")
"""


def _flags(options: dict) -> list[str]:
    """The options as a user types them."""
    flags: list[str] = []
    for name, value in options.items():
        flag = "--dir" if name == "dirs" else f"--{name}"
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            for item in value:
                flags += [flag, str(item)]
        elif value is not False:
            flags += [flag, str(value)]
    return flags


def _resolved(options: dict, project: Path, kubeconfig: Path) -> dict:
    out = dict(options)
    if out.get("kubeconfig") == "KUBECONFIG":
        out["kubeconfig"] = str(kubeconfig)
    if "cloud_key" in out:
        out["cloud_key"] = str(project / out["cloud_key"])
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory, docker_client):
    """One project, one caliban home, both emulators; then every case submitted both ways."""
    root = tmp_path_factory.mktemp("parity")
    project, home = root / "project", root / "home"
    (project / "trainer").mkdir(parents=True)
    (project / "trainer" / "__init__.py").write_text("")
    (project / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (project / "requirements.txt").write_text("")
    (project / "data").mkdir()
    (project / "data" / "x.txt").write_text("x\n")
    (project / "exp.json").write_text('{"lr": [0.1, 0.01]}')
    with (
        VertexEmulator(run_containers=False, sim_step=0.02, seed=5) as vertex,
        K8sEmulator(run_containers=False, sim_step=0.02, seed=5) as kube,
    ):
        kubeconfig = kube.write_kubeconfig(root / "kubeconfig")
        config = yaml.safe_load(kubeconfig.read_text())
        base = config["contexts"][0]["context"]
        for name in ("second", GKE_CONTEXT):
            config["contexts"].append({"name": name, "context": dict(base)})
        kubeconfig.write_text(yaml.safe_dump(config))
        env = {
            **os.environ,
            "CALIBAN_HOME": str(home),
            "HOME": str(root / "user"),
            **vertex.client_env(vertex.new_key(project / "key.json")),
            "CALIBAN_VERTEX_POLL_SECONDS": "0.2",
            "CALIBAN_REGISTRY": "127.0.0.1:5000",
            "PROJECT_ID": "caliban-test",
            "KUBECONFIG": str(kubeconfig),
        }
        for name in ("PREFECT_API_URL", "REGION"):  # (the emulator's key is the ADC)
            env.pop(name, None)
        cli = caliban_runner(project, env)
        try:
            saved = subprocess.run([str(BIN / "python"), "-c", BLOCKS], env=env, cwd=project,
                                   capture_output=True, text=True, timeout=120)  # fmt: skip
            assert saved.returncode == 0, saved.stderr
            yield _submit_all(cli, project, kubeconfig)
        finally:
            stop = "from caliban_flows.server import backend; backend.stop()"
            subprocess.run([str(BIN / "python"), "-c", stop], env=env, timeout=60)


def _submit_all(cli, project: Path, kubeconfig: Path) -> dict:
    """Each case twice: by the CLI, and by the sweep flow. Their exit codes and groups.

    The sweeps run one after another in one interpreter while the CLI submissions run three
    at a time beside them: every case has groups of its own, so none waits on another."""
    results: dict[str, dict] = {}
    commands, sweeps = [], []
    for platform, case, given in CASES:
        options = _resolved({"nogpu": True, **BASE.get(platform, {}), **given}, project,
                            kubeconfig)  # fmt: skip
        build = options.pop("build", False)
        image = None if build or platform == "local" else IMAGE
        tag = f"{platform[:3]}-{case.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
        argv = [*COMMAND[platform], *_flags(options), "--experiment_config", "exp.json",
                "--xgroup", f"cli-{tag}", *(["--image_tag", image] if image else []),
                "trainer.train", "--", "--epochs", "1"]  # fmt: skip
        commands.append((f"{platform}/{case}", argv))
        results[f"{platform}/{case}"] = {"cli_group": f"cli-{tag}", "sweep": f"dep-{tag}"}
        sweeps.append({"xgroup": f"dep-{tag}", "params": {
            "xgroup": f"dep-{tag}", "module": "trainer.train", "platform": platform,
            "experiment_config": {"lr": [0.1, 0.01]}, "script_args": ["--epochs", "1"],
            "image": image, "build_context": None if image else ".", platform: options,
        }})  # fmt: skip
    # Files, not pipes: a full pipe would stall the sweeps until the CLI side is done.
    # Outside the project: a file in it would change the image's content hash.
    out, err = project.parent / "sweeps.out", project.parent / "sweeps.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        ran = subprocess.Popen([str(BIN / "python"), "-c", SWEEPS, json.dumps(sweeps)],
                               cwd=project, env=cli.env, stdout=stdout, stderr=stderr)  # fmt: skip
        with ThreadPoolExecutor(max_workers=3) as pool:
            done = dict(zip((c for c, _ in commands),
                            pool.map(lambda c: cli(*c[1], timeout=600), commands)))  # fmt: skip
        ran.wait(timeout=1200)
    assert ran.returncode == 0, err.read_text()[-3000:]
    states = json.loads(out.read_text().strip().splitlines()[-1])
    for case, result in results.items():
        result["cli"] = (done[case].returncode, done[case].stderr[-2000:])
        result["sweep_state"] = states[result["sweep"]]
    results["api"], results["home"] = _api_url(cli), cli.env["CALIBAN_HOME"]
    return results


def _api_url(cli) -> str:
    code = "from caliban_flows.server import backend; print(backend.api_url())"
    out = subprocess.run([str(BIN / "python"), "-c", code], env=cli.env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout.strip()


def _record(api: str, xgroup: str) -> dict:
    """What the group's one run recorded, its name taken out."""
    from caliban_flows.state import prefect_api
    from caliban_flows.state.groups import read_group_runs

    with prefect_api.client(api) as http:
        [run] = read_group_runs(http, xgroup)
    text = json.dumps({"platform": run.platform, "placement": run.placement,
                       "recipes": run.recipes, "limit": run.limit,
                       "jobs": [{k: v for k, v in j.items() if k not in ("experiment", "key")}
                                for j in run.jobs]}, sort_keys=True)  # fmt: skip
    return json.loads(text.replace(xgroup, "<xgroup>"))


def test_every_option_has_a_case():
    for platform, model in BY_PLATFORM.items():
        covered = {name for p, _, options in CASES if p == platform for name in options}
        assert set(model.model_fields) - covered == set(), platform


@pytest.mark.parametrize(("platform", "case"), [(p, c) for p, c, _ in CASES],
                         ids=[f"{p}-{c}" for p, c, _ in CASES])  # fmt: skip
def test_the_cli_and_a_deployment_record_the_same_jobs(world, platform, case, monkeypatch):
    result = world[f"{platform}/{case}"]
    code, stderr = result["cli"]
    assert code == 0, stderr
    state, message = result["sweep_state"]
    assert state == "COMPLETED", message
    use_auth(monkeypatch, world["home"])  # prefect_api.client: the server is another process's
    by_cli = _record(world["api"], result["cli_group"])
    by_sweep = _record(world["api"], result["sweep"])
    assert by_cli == by_sweep
    assert len(by_cli["jobs"]) == 2
