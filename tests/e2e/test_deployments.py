"""Deployments of `caliban-sweep` end to end: `caliban deploy`, a real process worker, the
embedded Prefect server, the real Docker engine and the Vertex AI emulator.

One caliban home, one worker and one emulator for the module: the worker runs every flow run
as its own process, as it would for a user. Runs are started by the API (as `prefect
deployment run` does), by a cron schedule, and by events: the `caliban.image.pushed` a real
`caliban build --push` emits, and a failed group's `prefect.flow-run.Failed`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from devtools.k8s_emulator import K8sEmulator
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import BIN, wait_for
from tests.prefect_http import auth_env, auth_headers

REPO = Path(__file__).resolve().parents[2]
TRAIN = """\
import sys
args = sys.argv[1:]
print("training with", args, flush=True)
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
IMAGE = "127.0.0.1:5000/caliban-tests/prebuilt:1"  # never pulled in simulated mode
VERTEX = {"nogpu": True, "project": "caliban-test", "region": "us-central1", "max_qps": 50}
TERMINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
SPACE = f"dep{uuid.uuid4().hex[:8]}"  # this module's registry namespace


def prefect_yaml(project: Path) -> str:
    """The test's deployments: run on demand, every minute, on a push, on a failure."""
    sweep = "caliban_flows.flows.sweep.sweep"
    return f"""\
name: caliban-e2e
prefect-version: 3.8.8
pull:
  - prefect.deployments.steps.set_working_directory:
      directory: {project}
deployments:
  - name: sweep
    entrypoint: {sweep}
    work_pool: {{name: caliban-process}}
    tags: [caliban-sweep]
    parameters: {{xgroup: unset, module: trainer.train}}
  - name: every-minute
    entrypoint: {sweep}
    work_pool: {{name: caliban-process}}
    schedules:
      - cron: "* * * * *"
    parameters:
      xgroup: "cron-{{now:%Y%m%d-%H%M}}"
      platform: vertex
      module: trainer.train
      image: {IMAGE}
      platform_options: {json.dumps(VERTEX)}
  - name: on-push
    entrypoint: {sweep}
    parameters:
      xgroup: unset
      platform: vertex
      module: trainer.train
      experiment_config: {{"lr": [1, 2]}}
      platform_options: {json.dumps(VERTEX)}
    triggers:
      - type: event
        expect: [caliban.image.pushed]
        match:
          prefect.resource.id: "caliban.image.127.0.0.1:5000/{SPACE}/*"
        parameters:
          image: "{{{{ event.payload.reference }}}}"
          xgroup: "pushed-{{{{ event.payload.tag }}}}"
  - name: report-failures
    entrypoint: caliban_flows.flows.sweep.report_failures
    work_pool: {{name: caliban-process}}
    triggers:
      - type: event
        expect: [prefect.flow-run.Failed]
        match:
          prefect.resource.id: "prefect.flow-run.*"
        match_related:
          - prefect.resource.role: flow
            prefect.resource.name: caliban-experiment-group
          - prefect.resource.role: tag
            prefect.resource.id: prefect.tag.caliban
        parameters:
          flow_run_id: "{{{{ event.resource.id }}}}"
"""


@pytest.fixture(scope="module")
def emulator():
    with VertexEmulator(run_containers=False, sim_step=0.05, seed=11) as emu:
        yield emu


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dep-project")
    (root / "trainer").mkdir()
    (root / "trainer" / "__init__.py").write_text("")
    (root / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    (root / "deployments").mkdir()
    (root / "deployments" / "prefect.yaml").write_text(prefect_yaml(root))
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory, docker_client, emulator) -> dict:
    home = tmp_path_factory.mktemp("dep-home")
    env = {
        **os.environ,
        "CALIBAN_HOME": str(home),
        "HOME": str(tmp_path_factory.mktemp("dep-user")),
        **emulator.client_env(emulator.new_key()),
        "CALIBAN_VERTEX_POLL_SECONDS": "0.2",
        "PROJECT_ID": "caliban-test",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The server (started by the first command) schedules a few cron runs ahead, not 100.
        "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "3",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "1",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": "PT2M",
    }
    env.pop("PREFECT_API_URL", None)
    yield env
    subprocess.run(
        [str(BIN / "python"), "-c", "from caliban_flows.server import backend; backend.stop()"],
        env=env,
        timeout=60,
    )


def caliban(env: dict, cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "caliban"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


class Api(httpx.Client):
    """Retries 503 and 429 as Prefect's own client does: SQLite is busy on a loaded machine."""

    def request(self, *args, **kwargs) -> httpx.Response:
        for attempt in range(8):
            response = super().request(*args, **kwargs)
            if response.status_code not in (429, 503):
                break
            time.sleep(min(0.25 * 2**attempt, 4.0))
        return response


class Stack:
    """The server's API, the worker's log, and the deployments' ids."""

    def __init__(self, url: str, log: Path, env: dict, project: Path):
        self.url, self.log, self.env, self.project = url, log, env, project
        self.api = Api(base_url=url, timeout=30, trust_env=False, headers=auth_headers(env))

    def deployment(self, name: str, flow: str = "caliban-sweep") -> dict:
        response = self.api.get(f"/deployments/name/{flow}/{name}")
        response.raise_for_status()
        return response.json()

    def run(self, name: str, **parameters) -> str:
        deployment = self.deployment(name)
        response = self.api.post(f"/deployments/{deployment['id']}/create_flow_run",
                                 json={"parameters": parameters})  # fmt: skip
        response.raise_for_status()
        return response.json()["id"]

    def flow_run(self, run_id: str) -> dict:
        response = self.api.get(f"/flow_runs/{run_id}")
        response.raise_for_status()
        return response.json()

    def runs_of(self, deployment_id: str) -> list[dict]:
        body = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": 200}
        response = self.api.post("/flow_runs/filter", json=body)
        response.raise_for_status()
        return response.json()

    def ended(self, run_id: str, timeout: float = 150) -> dict:
        def done():
            run = self.flow_run(run_id)
            return run if run["state"]["type"] in TERMINAL else None

        try:
            return wait_for(done, timeout=timeout, interval=0.5)
        except AssertionError:
            raise AssertionError(f"flow run {run_id} did not end:\n{self.worker_log()}") from None

    def worker_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def status(self, xgroup: str, *more: str) -> list[dict]:
        done = caliban(self.env, self.project, "status", "--xgroup", xgroup, "--format", "json",
                       *more)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


def stop_worker(worker: subprocess.Popen) -> None:
    """SIGTERM, wait; a worker may need a second SIGTERM; then SIGKILL its process group."""
    for _ in range(2):
        if worker.poll() is not None:
            return
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(env, project, tmp_path_factory):
    started = time.perf_counter()
    deployed = caliban(env, project, "deploy")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "created process work pool 'caliban-process'" in deployed.stderr
    for name in ("sweep", "every-minute", "on-push", "report-failures"):
        assert re.search(rf"^deployed caliban-[\w-]+/{name}$", deployed.stdout, re.M), (
            deployed.stdout
        )
    assert "  every-minute: cron '* * * * *'" in deployed.stdout
    assert "  on-push: on caliban.image.pushed" in deployed.stdout
    url = re.search(r"PREFECT_API_URL=(\S+)", deployed.stderr)[1]
    print(f"\ncaliban deploy (server start included): {time.perf_counter() - started:.1f} s")

    worker_env = {
        **env,
        "PREFECT_API_URL": url,
        **auth_env(env),  # the worker (and the flow runs it starts) must send the secret
        "PREFECT_HOME": str(tmp_path_factory.mktemp("worker-prefect")),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "caliban-process"],
            env=worker_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=project,
        )  # fmt: skip
    s = Stack(url, log, env, project)
    try:
        wait_for(lambda: s.api.post("/work_pools/caliban-process/workers/filter").json(),
                 timeout=60, interval=0.5)  # fmt: skip
        yield s
    finally:
        stop_worker(worker)
        s.api.close()


def group_run(stack: Stack, rows: list[dict]) -> dict:
    [run_id] = {r["flow_run_id"] for r in rows}
    return stack.flow_run(run_id)


def test_a_deployment_run_sweeps_on_the_local_engine(stack):
    xgroup = f"dl-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    run_id = stack.run(
        "sweep", xgroup=xgroup, platform="local", experiment_config={"lr": [1, 2]},
        script_args=["--tag", "x"], build_context=".",
        platform_options={"nogpu": True, "parallel": 2},
    )  # fmt: skip
    run = stack.ended(run_id, timeout=200)
    print(
        f"\nlocal sweep through the worker (build included): {time.perf_counter() - started:.1f} s"
    )
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.worker_log())
    assert "2 jobs succeeded" in run["state"]["message"]

    rows = stack.status(xgroup)
    assert sorted(r["args"] for r in rows) == [
        ["--tag", "x", "--lr", "1"],
        ["--tag", "x", "--lr", "2"],
    ]
    assert [r["state"] for r in rows] == ["SUCCEEDED", "SUCCEEDED"]
    assert all(r["platform"] == "local" and r["attempt"] == 1 for r in rows)
    group = group_run(stack, rows)
    assert {"caliban", f"xgroup:{xgroup}", "platform:local"} <= set(group["tags"])
    assert group["state"]["type"] == "COMPLETED" and group["parent_task_run_id"]
    assert group["parameters"]["recipes"][0]["build"]["root"] == str(stack.project)

    # The same group from the CLI: same experiments, same job keys, so attempt 2 of each.
    (stack.project / "exp.json").write_text('{"lr": [1, 2]}')
    again = caliban(stack.env, stack.project, "run", "--nogpu", "--image_id", rows[0]["image"],
                    "--xgroup", xgroup, "--experiment_config", "exp.json", "trainer.train",
                    "--", "--tag", "x")  # fmt: skip
    assert again.returncode == 0, again.stderr
    both = stack.status(xgroup, "--max_jobs", "0")
    assert sorted((r["key"], r["attempt"]) for r in both) == sorted(
        (r["key"], n) for r in rows for n in (1, 2)
    )


def test_a_deployment_run_submits_to_vertex(stack, emulator):
    xgroup = f"dv-{uuid.uuid4().hex[:8]}"
    typed = {**VERTEX, "project_id": VERTEX["project"]}
    del typed["project"]
    run_id = stack.run("sweep", xgroup=xgroup, platform="vertex", image=IMAGE,
                       experiment_config={"i": [1, 2]}, vertex=typed)  # fmt: skip
    run = stack.ended(run_id)
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.worker_log())
    assert "2 jobs submitted to Vertex AI" in run["state"]["message"]
    mine = [j for j in emulator.jobs() if j.labels.get("caliban_xgroup") == xgroup]
    assert len(mine) == 2
    assert {j.job_spec.worker_pool_specs[0].container_spec.image_uri for j in mine} == {IMAGE}

    rows = wait_for(lambda: (r := stack.status(xgroup)) and all(
        x["state"] == "SUCCEEDED" for x in r) and r)  # fmt: skip
    assert sorted(r["args"] for r in rows) == [["--i", "1"], ["--i", "2"]]
    assert all(r["platform"] == "vertex" and r["remote_id"] for r in rows)
    group = group_run(stack, rows)
    assert {"caliban", f"xgroup:{xgroup}", "platform:vertex"} <= set(group["tags"])
    assert group["state"]["type"] == "COMPLETED"  # settled by status once the jobs ended


def test_typed_options_are_checked_before_a_run_is_created(stack):
    deployment = stack.deployment("sweep")
    bad = {"xgroup": "typo", "platform": "vertex", "vertex": {"projcet": "p"}}
    response = stack.api.post(f"/deployments/{deployment['id']}/create_flow_run",
                              json={"parameters": bad})  # fmt: skip
    assert response.status_code in (409, 422), response.text
    assert "projcet" in response.text
    wrong_type = {"xgroup": "typo", "platform": "local", "local": {"parallel": "many"}}
    response = stack.api.post(f"/deployments/{deployment['id']}/create_flow_run",
                              json={"parameters": wrong_type})  # fmt: skip
    assert response.status_code in (409, 422), response.text


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    with K8sEmulator(run_containers=False, sim_step=0.05, seed=11) as emu:
        yield emu, emu.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


def test_a_deployment_run_submits_to_kubernetes(stack, kube):
    emulator, kubeconfig = kube
    xgroup = f"dk-{uuid.uuid4().hex[:8]}"
    options = {"nogpu": True, "kubeconfig": str(kubeconfig), "namespace": "sweeps"}
    run_id = stack.run("sweep", xgroup=xgroup, platform="kubernetes", image=IMAGE,
                       experiment_config={"i": [1, 2]}, platform_options=options)  # fmt: skip
    run = stack.ended(run_id)
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.worker_log())
    assert "2 jobs submitted to Kubernetes" in run["state"]["message"]
    assert {j["metadata"]["namespace"] for j in emulator.jobs()} == {"sweeps"}

    rows = wait_for(lambda: (r := stack.status(xgroup)) and all(
        x["state"] == "SUCCEEDED" for x in r) and r)  # fmt: skip
    assert sorted(r["args"] for r in rows) == [["--i", "1"], ["--i", "2"]]
    assert all(r["platform"] == "kubernetes" and r["remote_id"].startswith("sweeps/") for r in rows)
    group = group_run(stack, rows)
    assert {"caliban", f"xgroup:{xgroup}", "platform:kubernetes"} <= set(group["tags"])
    assert group["state"]["type"] == "COMPLETED"


def test_a_cron_schedule_starts_runs(stack):
    deployment = stack.deployment("every-minute")
    started = time.perf_counter()

    def completed_run():
        runs = [r for r in stack.runs_of(deployment["id"]) if r["state"]["type"] in TERMINAL]
        return runs[0] if runs else None

    run = wait_for(completed_run, timeout=130, interval=1.0)
    print(f"\ncron run ended {time.perf_counter() - started:.1f} s into this test")
    # Pause it: one run is enough, and the other tests need the worker.
    stack.api.patch(f"/deployments/{deployment['id']}", json={"paused": True}).raise_for_status()
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.worker_log())
    assert run["auto_scheduled"]
    when = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
    xgroup = f"cron-{when:%Y%m%d-%H%M}"  # the xgroup template, expanded at the scheduled time
    assert run["state"]["message"].startswith(f"xgroup {xgroup}:")
    assert len(stack.status(xgroup)) == 1


def test_a_pushed_image_triggers_a_sweep_of_that_image(stack, emulator, tmp_path):
    tiny = tmp_path / "tiny"
    (tiny / "trainer").mkdir(parents=True)
    (tiny / "trainer" / "__init__.py").write_text("")
    (tiny / "trainer" / "train.py").write_text(TRAIN + f"# {uuid.uuid4()}\n")
    deployment = stack.deployment("on-push")
    pushed = caliban(stack.env, tiny, "build", "--nogpu", "--push", "--registry",
                     f"127.0.0.1:5000/{SPACE}", "trainer.train")  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    reference = pushed.stdout.strip()
    assert reference.startswith(f"127.0.0.1:5000/{SPACE}/caliban/")
    assert "warning" not in pushed.stderr
    tag = reference.rsplit(":", 1)[1]

    started = time.perf_counter()
    [triggered] = wait_for(lambda: stack.runs_of(deployment["id"]), timeout=60)
    run = stack.ended(triggered["id"])
    print(f"\npush -> triggered sweep ended: {time.perf_counter() - started:.1f} s")
    assert run["state"]["type"] == "COMPLETED", (run["state"], stack.worker_log())
    assert run["parameters"]["image"] == reference  # templated from the event's payload
    assert run["parameters"]["xgroup"] == f"pushed-{tag}"
    assert run["created_by"]["type"] == "AUTOMATION"

    rows = stack.status(f"pushed-{tag}")
    assert sorted(r["args"] for r in rows) == [["--lr", "1"], ["--lr", "2"]]
    assert {r["image"] for r in rows} == {reference}
    images = {j.job_spec.worker_pool_specs[0].container_spec.image_uri for j in emulator.jobs()
              if j.labels.get("caliban_xgroup") == f"pushed-{tag}"}  # fmt: skip
    assert images == {reference}

    # The event as stored (automations see events before the server stores them).
    body = {"filter": {"event": {"name": ["caliban.image.pushed"]}}, "limit": 50}
    [event] = wait_for(lambda: [
        e for e in stack.api.post("/events/filter", json=body).json()["events"]
        if e["payload"]["reference"] == reference
    ])  # fmt: skip
    repository = reference.rsplit(":", 1)[0]
    assert event["resource"]["prefect.resource.id"] == f"caliban.image.{repository}"
    assert event["payload"]["tag"] == tag


def test_a_failed_group_gets_a_failure_report(stack):
    xgroup = f"df-{uuid.uuid4().hex[:8]}"
    report = stack.deployment("report-failures", flow="caliban-report-failures")
    before = {r["id"] for r in stack.runs_of(report["id"])}
    run_id = stack.run(
        "sweep", xgroup=xgroup, platform="local", build_context=".",
        experiment_config={"exit": [0, 3]}, platform_options={"nogpu": True},
    )  # fmt: skip
    run = stack.ended(run_id)
    assert run["state"]["type"] == "FAILED", (run["state"], stack.worker_log())
    assert "1 of 2 jobs failed" in run["state"]["message"]

    def report_run():
        runs = [r for r in stack.runs_of(report["id"]) if r["id"] not in before]
        return runs[0] if runs else None

    started = time.perf_counter()
    ran = stack.ended(wait_for(report_run, timeout=60)["id"])
    print(f"\nfailure -> report ended: {time.perf_counter() - started:.1f} s")
    assert ran["state"]["type"] == "COMPLETED", (ran["state"], stack.worker_log())
    group_id = stack.status(xgroup)[0]["flow_run_id"]
    assert ran["parameters"]["flow_run_id"] == f"prefect.flow-run.{group_id}"
    key = f"caliban-failures-{xgroup}"
    body = {"artifacts": {"key": {"any_": [key]}}}
    [artifact] = stack.api.post("/artifacts/filter", json=body).json()
    assert artifact["flow_run_id"] == ran["id"]
    assert "1 of 2 jobs failed" in artifact["description"]
    assert "| 3 | --exit 3 |" in artifact["data"]


def test_the_example_prefect_yaml_deploys(stack):
    done = caliban(stack.env, stack.project, "deploy", "--prefect-file",
                   str(REPO / "deployments" / "prefect.yaml"))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("nightly", "on-image-pushed", "after-training"):
        deployment = stack.deployment(name)
        assert deployment["work_pool_name"] == "caliban-process"
        # Nothing of the example may run here: its pushes and groups are not ours.
        stack.api.patch(f"/deployments/{deployment['id']}", json={"paused": True})
    nightly = stack.deployment("nightly")
    assert nightly["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    automations = stack.api.post("/automations/filter", json={}).json()
    names = {a["name"] for a in automations}
    assert {"on-image-pushed__automation_1", "after-training__automation_1",
            "report-failures__automation_1"} <= names  # fmt: skip


def test_deploy_without_the_file_is_bad_input(stack, tmp_path):
    done = caliban(stack.env, tmp_path, "deploy")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "deployments/prefect.yaml is not a file" in done.stderr
    (tmp_path / "bad.yaml").write_text("deployments: [\n")
    bad = caliban(stack.env, tmp_path, "deploy", "-f", "bad.yaml")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "bad.yaml is not valid YAML (line 2)" in bad.stderr
    (tmp_path / "trigger.yaml").write_text(
        "deployments:\n  - name: t\n    entrypoint: caliban_flows.flows.sweep.sweep\n"
        "    triggers: [{type: event, expect: [x], posture: Sideways}]\n"
    )
    invalid = caliban(stack.env, tmp_path, "deploy", "-f", "trigger.yaml")
    assert invalid.returncode == 1 and invalid.stderr.count("\n") == 1, invalid.stderr
    assert "1 validation error: event.posture: Input should be" in invalid.stderr


def test_the_readme_notification_automation_is_valid():
    import yaml
    from prefect.events.schemas.automations import AutomationCore

    text = (REPO / "deployments" / "README.md").read_text()
    block = text.split("```yaml\n")[1].split("```")[0]
    data = yaml.safe_load(block.replace("<your block's id>", str(uuid.uuid4())))
    automation = AutomationCore.model_validate(data)
    assert automation.actions[0].type == "send-notification"
