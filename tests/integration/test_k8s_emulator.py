"""devtools.k8s_emulator through the real `kubernetes` client (configured from the kubeconfig the
emulator writes) over real HTTP, and (for container jobs) the real local dockerd and registry."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from devtools import engine
from devtools.k8s_emulator import (
    BATCH_JOB_NAME_LABEL,
    CONTAINER_INSTANCE_LABEL,
    CONTAINER_POD_UID_LABEL,
    CONTROLLER_UID_LABEL,
    JOB_NAME_LABEL,
    KEY_LABEL,
    K8sEmulator,
)
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
NS = "default"


def make_job(
    name: str | None = "job",
    *,
    key: str | None = None,
    labels: dict[str, str] | None = None,
    image: str = engine.BUSYBOX_IMAGE,
    command: list[str] | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    restart_policy: str | None = "Never",
    backoff_limit: int | None = 0,
    deadline: int | None = None,
    generate_name: str | None = None,
    containers: list[client.V1Container] | None = None,
) -> client.V1Job:
    all_labels = dict(labels or {})
    if key is not None:
        all_labels[KEY_LABEL] = key
    container = client.V1Container(
        name="main",
        image=image,
        command=command,
        args=args,
        env=[client.V1EnvVar(name=k, value=v) for k, v in (env or {}).items()] or None,
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=client.V1ObjectMeta(
            name=name, generate_name=generate_name, labels=all_labels or None
        ),
        spec=client.V1JobSpec(
            backoff_limit=backoff_limit,
            active_deadline_seconds=deadline,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "emu-test"}),
                spec=client.V1PodSpec(
                    restart_policy=restart_policy,
                    containers=[container] if containers is None else containers,
                ),
            ),
        ),
    )


class Kube:
    """The typed APIs over one ApiClient, configured from the emulator's kubeconfig."""

    def __init__(self, emu: K8sEmulator, kubeconfig: Path, retries: bool = True):
        configuration = client.Configuration()
        if not retries:  # see every 429/503 instead of urllib3 retrying GETs by itself
            configuration.retries = False
        self.api = config.new_client_from_config(
            config_file=str(kubeconfig), context="emulator", client_configuration=configuration
        )
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.emu = emu

    def create(self, job: client.V1Job, **kwargs) -> client.V1Job:
        return self.batch.create_namespaced_job(NS, job, **kwargs)

    def job(self, name: str) -> client.V1Job:
        return self.batch.read_namespaced_job(name, NS)

    def names(self, **kwargs) -> list[str]:
        return [j.metadata.name for j in self.batch.list_namespaced_job(NS, **kwargs).items]

    def pods(self, job_name: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(NS, label_selector=f"job-name={job_name}").items

    def log(self, pod_name: str, **kwargs) -> str:
        # The raw body: client 36's own decoding returns "b'...'" (kubernetes-client#2596).
        response = self.core.read_namespaced_pod_log(pod_name, NS, _preload_content=False, **kwargs)
        return response.data.decode()

    def wait_condition(self, name: str, *types: str, timeout: float = 30) -> client.V1Job:
        def done():
            job = self.job(name)
            conditions = job.status.conditions or []
            return job if any(c.type in types and c.status == "True" for c in conditions) else None

        return wait_for(done, timeout=timeout, interval=0.02)

    def wait_gone(self, name: str, timeout: float = 30) -> None:
        def gone():
            try:
                self.job(name)
            except ApiException as err:
                return err.status == 404
            return False

        wait_for(gone, timeout=timeout, interval=0.02)


def condition(job: client.V1Job, kind: str) -> client.V1JobCondition:
    return next(c for c in job.status.conditions if c.type == kind)


def status_body(err: ApiException) -> dict:
    body = json.loads(err.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == err.status
    return body


def raw(kube: Kube, method: str, path: str, **query: str) -> dict:
    """A request the typed API would deserialize into the wrong model; the JSON body."""
    response = kube.api.call_api(
        path,
        method,
        query_params=list(query.items()),
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    return json.loads(response.data)


@pytest.fixture
def emu():
    with K8sEmulator(sim_step=0.05) as emulator:
        yield emulator


@pytest.fixture
def kube(emu, tmp_path) -> Kube:
    kube = Kube(emu, emu.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))
    yield kube
    kube.api.close()


# --------------------------------------------------------------------------- basics


def test_daemonsets_as_the_api_server_takes_them(emu, kube) -> None:
    """apps/v1 DaemonSets (the NVIDIA driver installer): created, listed, read, deleted; a
    selector that misses the template's labels is refused as the API server refuses it."""
    from devtools.k8s_apps import sample_daemonset

    apps = client.AppsV1Api(kube.api)
    made = apps.create_namespaced_daemon_set("kube-system", sample_daemonset())
    assert made.metadata.uid and made.status.desired_number_scheduled == 0
    with pytest.raises(ApiException) as again:
        apps.create_namespaced_daemon_set("kube-system", sample_daemonset())
    assert again.value.status == 409
    bad = sample_daemonset("other")
    bad["spec"]["selector"] = {"matchLabels": {"k8s-app": "elsewhere"}}
    with pytest.raises(ApiException) as refused:
        apps.create_namespaced_daemon_set("kube-system", bad)
    assert refused.value.status == 422
    assert (
        "`selector` does not match template `labels`" in json.loads(refused.value.body)["message"]
    )
    listed = apps.list_daemon_set_for_all_namespaces().items
    assert [(d.metadata.namespace, d.metadata.name) for d in listed] == [
        ("kube-system", "nvidia-driver-installer")
    ]
    assert apps.read_namespaced_daemon_set("nvidia-driver-installer", "kube-system").spec
    apps.delete_namespaced_daemon_set("nvidia-driver-installer", "kube-system")
    assert emu.daemonsets() == []


def test_version_discovery_and_kubeconfig(emu, kube, tmp_path) -> None:
    info = client.VersionApi(kube.api).get_code()
    assert (info.major, info.minor, info.git_version) == ("1", "33", "v1.33.0")
    assert info.platform == "linux/amd64" and info.go_version.startswith("go")
    assert emu.calls()["get version"] == 1

    groups = client.ApisApi(kube.api).get_api_versions().groups
    assert [g.preferred_version.group_version for g in groups] == ["batch/v1", "apps/v1"]
    assert client.CoreApi(kube.api).get_api_versions().versions == ["v1"]
    resources = client.BatchV1Api(kube.api).get_api_resources().resources
    assert {r.name: r.namespaced for r in resources} == {"jobs": True, "jobs/status": True}
    assert "pods/log" in [r.name for r in client.CoreV1Api(kube.api).get_api_resources().resources]

    # The kubeconfig is an ordinary one: a user's load_kube_config reads it.
    text = yaml.safe_load((tmp_path / "kubeconfig").read_text())
    assert text["clusters"][0]["cluster"]["server"] == emu.url == f"http://127.0.0.1:{emu.port}"
    _, active = config.list_kube_config_contexts(str(tmp_path / "kubeconfig"))
    assert active["name"] == "emulator" and active["context"]["namespace"] == NS
    configuration = client.Configuration()
    config.load_kube_config(
        config_file=str(tmp_path / "kubeconfig"),
        context="emulator",
        client_configuration=configuration,
    )
    assert configuration.host == emu.host
    assert configuration.api_key["BearerToken"] == f"Bearer {emu.token}"
    assert client.BatchV1Api(emu.api_client()).list_namespaced_job(NS).items == []

    with pytest.raises(ApiException) as err:
        raw(kube, "GET", "/apis/nope/v1/things")
    assert err.value.status == 404 and status_body(err.value)["reason"] == "NotFound"


def test_require_auth_checks_the_bearer_token(tmp_path) -> None:
    with K8sEmulator(require_auth=True, token="sekrit") as emu:
        kube = Kube(emu, emu.write_kubeconfig(tmp_path / "kc"))
        assert kube.names() == []
        anonymous = client.BatchV1Api(client.ApiClient(client.Configuration(host=emu.host)))
        with pytest.raises(ApiException) as err:
            anonymous.list_namespaced_job(NS)
        assert err.value.status == 401 and status_body(err.value)["reason"] == "Unauthorized"


def test_create_get_and_simulated_lifecycle(emu, kube) -> None:
    created = kube.create(make_job("train-1", key="k1", labels={"team": "ml"}, backoff_limit=None))
    meta = created.metadata
    assert meta.name == "train-1" and meta.namespace == NS
    assert meta.uid and meta.creation_timestamp and int(meta.resource_version) > 0
    assert meta.generation == 1
    assert meta.labels == {
        "team": "ml",
        KEY_LABEL: "k1",
        CONTROLLER_UID_LABEL: meta.uid,
        "batch.kubernetes.io/controller-uid": meta.uid,
    }
    template_labels = created.spec.template.metadata.labels
    assert template_labels["app"] == "emu-test"
    assert template_labels[JOB_NAME_LABEL] == template_labels[BATCH_JOB_NAME_LABEL] == "train-1"
    assert template_labels[CONTROLLER_UID_LABEL] == meta.uid
    assert created.spec.backoff_limit == 6  # the Kubernetes default
    assert created.spec.completions == 1 and created.spec.parallelism == 1
    assert created.spec.selector.match_labels == {"batch.kubernetes.io/controller-uid": meta.uid}
    assert created.spec.template.spec.containers[0].image_pull_policy == "Always"  # :latest

    done = kube.wait_condition("train-1", "Complete", "Failed")
    assert condition(done, "Complete").status == "True"
    assert condition(done, "Complete").reason == "CompletionsReached"
    assert done.status.succeeded == 1 and not done.status.failed and not done.status.active
    assert done.status.start_time and done.status.completion_time >= done.status.start_time
    assert int(done.metadata.resource_version) > int(meta.resource_version)
    status = kube.batch.read_namespaced_job_status("train-1", NS)
    assert status.status.succeeded == 1

    (pod,) = kube.pods("train-1")
    assert (
        pod.metadata.name.startswith("train-1-") and len(pod.metadata.name) == len("train-1-") + 5
    )
    assert pod.metadata.owner_references[0].uid == meta.uid
    assert pod.metadata.labels[CONTROLLER_UID_LABEL] == meta.uid
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"
    assert pod.spec.node_name and pod.spec.restart_policy == "Never"
    assert kube.core.read_namespaced_pod(pod.metadata.name, NS).metadata.uid == pod.metadata.uid
    assert "simulated pod" in kube.log(pod.metadata.name)
    assert emu.creates_by_key() == {"k1": 1} and emu.duplicates() == 0
    assert [j["metadata"]["name"] for j in emu.jobs()] == ["train-1"]
    assert emu.calls()["create jobs"] == 1


def test_label_selectors_every_operator(kube) -> None:
    specs = {
        "a": {"env": "prod", "tier": "web", "rank": "1"},
        "b": {"env": "dev", "tier": "db", "rank": "5"},
        "c": {"env": "prod"},
        "d": {"team.example.com/owner": "alice"},
        "e": {"env": "staging", "tier": "web"},
    }
    for name, labels in specs.items():
        kube.create(make_job(name, labels=labels))

    cases = {
        "env=prod": ["a", "c"],
        "env==prod": ["a", "c"],
        "env!=prod": ["b", "d", "e"],  # a missing key matches !=
        "env in (prod, dev)": ["a", "b", "c"],
        "env notin (prod)": ["b", "d", "e"],
        "tier": ["a", "b", "e"],
        "!tier": ["c", "d"],
        "env=prod,tier": ["a"],
        "tier in (web),env!=prod": ["e"],
        "env in (prod,staging), !tier": ["c"],
        "team.example.com/owner=alice": ["d"],
        "rank>2": ["b"],
        "rank<2": ["a"],
        "env=nope": [],
        "": ["a", "b", "c", "d", "e"],
        f"{JOB_NAME_LABEL}=b": [],  # job-name is on the pods, not on the Job
    }
    for selector, expected in cases.items():
        assert kube.names(label_selector=selector) == expected, selector
    assert [p.metadata.labels[JOB_NAME_LABEL] for p in kube.pods("b")] == ["b"]

    for bad in ("env in ()", "env===x", "Bad Key=x", "env=a b", "env=" + "x" * 64, "(env)"):
        with pytest.raises(ApiException) as err:
            kube.names(label_selector=bad)
        assert err.value.status == 400, bad
        assert status_body(err.value)["reason"] == "BadRequest"


def test_paging_field_selector_and_all_namespaces(emu, kube) -> None:
    emu.hold(True)
    names = [f"job-{i:02d}" for i in range(25)]
    for name in reversed(names):  # created backwards: lists still come in name order
        kube.create(make_job(name, labels={"group": "even" if int(name[-2:]) % 2 else "odd"}))
    kube.batch.create_namespaced_job("other", make_job("job-00"))
    kube.batch.create_namespaced_job("zz-last", make_job("solo"))

    first = kube.batch.list_namespaced_job(NS, limit=10)
    assert [j.metadata.name for j in first.items] == names[:10]
    assert first.metadata._continue and first.metadata.resource_version
    second = kube.batch.list_namespaced_job(NS, limit=10, _continue=first.metadata._continue)
    assert [j.metadata.name for j in second.items] == names[10:20]
    third = kube.batch.list_namespaced_job(NS, limit=10, _continue=second.metadata._continue)
    assert [j.metadata.name for j in third.items] == names[20:]
    assert third.metadata._continue is None

    odd = kube.batch.list_namespaced_job(NS, label_selector="group=odd", limit=13)
    assert [j.metadata.name for j in odd.items] == names[0::2]
    assert odd.metadata._continue is None  # exactly 13 matches: no empty last page

    assert kube.names(field_selector="metadata.name=job-07") == ["job-07"]
    assert kube.names(field_selector="metadata.name!=job-07,metadata.name!=job-08") == [
        n for n in names if n not in ("job-07", "job-08")
    ]

    everywhere = kube.batch.list_job_for_all_namespaces(limit=20)
    assert len(everywhere.items) == 20 and everywhere.metadata.remaining_item_count == 7
    rest = kube.batch.list_job_for_all_namespaces(limit=20, _continue=everywhere.metadata._continue)
    keys = [(j.metadata.namespace, j.metadata.name) for j in everywhere.items + rest.items]
    assert keys == sorted(keys) and len(keys) == 27
    assert ("other", "job-00") in keys and keys[-1] == ("zz-last", "solo")
    other = kube.batch.list_job_for_all_namespaces(field_selector="metadata.namespace=other")
    assert [j.metadata.name for j in other.items] == ["job-00"]

    assert len(kube.core.list_pod_for_all_namespaces().items) == 27

    def running() -> int:
        return len(kube.core.list_namespaced_pod(NS, field_selector="status.phase=Running").items)

    wait_for(lambda: running() == 25, timeout=10, interval=0.02)
    for bad in ({"field_selector": "spec.foo=1"}, {"_continue": "garbage!"}):
        with pytest.raises(ApiException) as err:
            kube.batch.list_namespaced_job(NS, **bad)
        assert err.value.status == 400 and status_body(err.value)["reason"] == "BadRequest"


# --------------------------------------------------------------------------- errors


def test_not_found_and_already_exists_status_bodies(kube) -> None:
    kube.create(make_job("dup", key="dup-key"))
    with pytest.raises(ApiException) as err:
        kube.create(make_job("dup", key="dup-key"))
    body = status_body(err.value)
    assert err.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'jobs.batch "dup" already exists'
    assert body["details"] == {"name": "dup", "group": "batch", "kind": "jobs"}
    assert kube.emu.creates_by_key() == {"dup-key": 1}
    assert kube.emu.attempts_by_key() == {"dup-key": 2}

    calls = [
        lambda: kube.job("missing"),
        lambda: kube.batch.read_namespaced_job_status("missing", NS),
        lambda: kube.batch.delete_namespaced_job("missing", NS),
        lambda: kube.core.read_namespaced_pod("missing", NS),
        lambda: kube.core.read_namespaced_pod_log("missing", NS),
        lambda: kube.batch.read_namespaced_job("dup", "elsewhere"),
    ]
    for call in calls:
        with pytest.raises(ApiException) as err:
            call()
        body = status_body(err.value)
        assert err.value.status == 404 and body["reason"] == "NotFound"
        assert body["details"]["name"] in ("missing", "dup")
    assert "jobs.batch" in json.loads(err.value.body)["message"]


def bad_template_labels() -> client.V1Job:
    job = make_job("ok")
    job.spec.template.metadata.labels = {"x": "-"}
    return job


@pytest.mark.parametrize(
    ("job", "field", "needle"),
    [
        (make_job("Bad_Name"), "metadata.name", "RFC 1123"),
        (make_job("n" * 64), "metadata.name", "no more than 63"),
        (make_job("-dash"), "metadata.name", "RFC 1123"),
        (make_job("ok", labels={"bad key": "x"}), "metadata.labels", "name part"),
        (make_job("ok", labels={"UPPER.example.com/x": "x"}), "metadata.labels", "prefix"),
        (make_job("ok", labels={"a": "x" * 64}), "metadata.labels", "no more than 63"),
        (make_job("ok", labels={"a": "-x"}), "metadata.labels", "valid label"),
        (make_job("ok", labels={"a/b/c": "x"}), "metadata.labels", "prefix"),
        (make_job("ok", containers=[]), "spec.template.spec.containers", "Required value"),
        (make_job("ok", image=""), "spec.template.spec.containers[0].image", "Required"),
        (make_job("ok", restart_policy="Always"), "spec.template.spec.restartPolicy", "Always"),
        (make_job("ok", restart_policy=None), "spec.template.spec.restartPolicy", "Unsupported"),
        (make_job("ok", backoff_limit=-1), "spec.backoffLimit", "greater than or equal to 0"),
        (make_job(None), "metadata.name", "name or generateName is required"),
        (bad_template_labels(), "spec.template.metadata.labels", "valid label"),
    ],
)
def test_invalid_create_is_422(kube, job, field, needle) -> None:
    with pytest.raises(ApiException) as err:
        kube.create(job)
    body = status_body(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["kind"] == "Job" and body["details"]["group"] == "batch"
    causes = body["details"]["causes"]
    assert any(c["field"] == field and needle in c["message"] for c in causes), causes
    assert needle in body["message"] and " is invalid: " in body["message"]
    assert kube.names() == [] and kube.emu.jobs() == []


def test_dry_run_validates_without_creating(emu, kube) -> None:
    preview = kube.create(make_job("preview", key="dry"), dry_run="All")
    assert preview.metadata.name == "preview" and preview.metadata.uid
    assert preview.spec.template.metadata.labels[JOB_NAME_LABEL] == "preview"
    assert kube.names() == [] and emu.creates_by_key() == {}
    with pytest.raises(ApiException) as err:
        kube.job("preview")
    assert err.value.status == 404
    with pytest.raises(ApiException) as err:
        kube.create(make_job("Not_Valid"), dry_run="All")
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        kube.create(make_job("x"), dry_run="Maybe")
    assert err.value.status == 400

    kube.create(make_job("real"))
    kube.batch.delete_namespaced_job("real", NS, dry_run="All", propagation_policy="Background")
    assert kube.names() == ["real"]


def test_generate_name_and_patch_labels(kube) -> None:
    job = kube.create(make_job(None, generate_name="gen-"))
    assert job.metadata.name.startswith("gen-") and len(job.metadata.name) == 9
    patched = kube.batch.patch_namespaced_job(
        job.metadata.name, NS, {"metadata": {"labels": {"stage": "two"}}}
    )
    assert patched.metadata.labels["stage"] == "two"
    assert int(patched.metadata.resource_version) > int(job.metadata.resource_version)
    assert kube.names(label_selector="stage=two") == [job.metadata.name]
    with pytest.raises(ApiException) as err:
        kube.batch.patch_namespaced_job(job.metadata.name, NS, {"spec": {"parallelism": 3}})
    assert err.value.status == 422


# --------------------------------------------------------------------------- the controller


def test_backoff_limit_retries_then_fails(emu, kube) -> None:
    emu.set_outcome("flaky-key", "Failed", exit_code=2)
    kube.create(make_job("flaky", key="flaky-key", backoff_limit=2))
    failed = kube.wait_condition("flaky", "Failed", "Complete")
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    assert condition(failed, "Failed").message == "Job has reached the specified backoff limit"
    assert condition(failed, "FailureTarget").status == "True"
    assert failed.status.failed == 3 and not failed.status.succeeded
    assert failed.status.completion_time is None  # only a successful Job gets one
    pods = kube.pods("flaky")
    assert len(pods) == 3
    assert {p.status.phase for p in pods} == {"Failed"}
    assert {p.status.container_statuses[0].state.terminated.exit_code for p in pods} == {2}

    # OnFailure restarts the container inside one pod; restarts count against backoffLimit.
    emu.set_outcome("crashy", "Failed")
    kube.create(make_job("crashy", restart_policy="OnFailure", backoff_limit=1))
    crashed = kube.wait_condition("crashy", "Failed")
    assert condition(crashed, "Failed").reason == "BackoffLimitExceeded"
    (pod,) = kube.pods("crashy")
    status = pod.status.container_statuses[0]
    assert pod.status.phase == "Failed" and status.restart_count == 1
    assert status.last_state.terminated.exit_code == 1


def test_hold_and_active_deadline(emu, kube) -> None:
    emu.hold(True)
    kube.create(make_job("held"))
    kube.create(make_job("deadline", deadline=1))

    def running(name):
        pods = kube.pods(name)
        return pods if pods and pods[0].status.phase == "Running" else None

    (pod,) = wait_for(lambda: running("held"), timeout=10, interval=0.02)
    assert pod.status.container_statuses[0].state.running.started_at
    assert kube.job("held").status.active == 1 and kube.job("held").status.ready == 1

    late = kube.wait_condition("deadline", "Failed", timeout=10)
    assert condition(late, "Failed").reason == "DeadlineExceeded"
    assert kube.pods("deadline")[0].status.phase == "Failed"
    assert not kube.job("held").status.conditions  # still held while the other one expired

    emu.hold(False)
    assert kube.wait_condition("held", "Complete").status.succeeded == 1


def test_ttl_after_finished_deletes_the_job(kube) -> None:
    job = make_job("short-lived")
    job.spec.ttl_seconds_after_finished = 0
    kube.create(job)
    kube.wait_gone("short-lived", timeout=10)
    wait_for(lambda: kube.pods("short-lived") == [], timeout=10, interval=0.02)


def test_delete_propagation_and_deletecollection(emu, kube) -> None:
    emu.hold(True)
    for name, group in (("bg", "a"), ("fg", "a"), ("orphan", "b"), ("keep", "c"), ("gone", "c")):
        kube.create(make_job(name, labels={"group": group}))

    def running(name: str) -> bool:
        pods = kube.pods(name)
        return len(pods) == 1 and pods[0].status.phase == "Running"

    for name in ("bg", "fg", "orphan", "keep", "gone"):
        wait_for(lambda n=name: running(n), timeout=10, interval=0.02)

    status = kube.batch.delete_namespaced_job("bg", NS, propagation_policy="Background")
    assert status.status == "Success" and status.details.name == "bg"
    assert status.details.uid
    with pytest.raises(ApiException):
        kube.job("bg")
    wait_for(lambda: kube.pods("bg") == [], timeout=10, interval=0.02)

    response = raw(
        kube, "DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/fg", propagationPolicy="Foreground"
    )
    assert response["kind"] == "Job" and response["metadata"]["deletionTimestamp"]
    assert response["metadata"]["finalizers"] == ["foregroundDeletion"]
    kube.wait_gone("fg")
    assert kube.pods("fg") == []

    kube.batch.delete_namespaced_job("orphan", NS)  # batch/v1's default policy is Orphan
    kube.wait_gone("orphan")
    (orphan,) = kube.pods("orphan")
    assert orphan.metadata.owner_references is None
    assert orphan.status.phase == "Running"

    # A deleted running pod counts as failed (backoffLimit 0 here: the Job fails).
    (first,) = kube.pods("keep")
    kube.core.delete_namespaced_pod(first.metadata.name, NS)
    failed = kube.wait_condition("keep", "Failed")
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    assert failed.status.failed == 1

    kube.batch.delete_collection_namespaced_job(
        NS, label_selector="group=c", propagation_policy="Background"
    )
    assert kube.names() == []
    wait_for(lambda: kube.pods("gone") == [] and kube.pods("keep") == [], timeout=10)
    assert [p.metadata.name for p in kube.core.list_namespaced_pod(NS).items] == [
        orphan.metadata.name
    ]
    assert emu.calls()["deletecollection jobs"] == 1


def test_delete_collection_returns_the_deleted_jobs(kube) -> None:
    for name, group in (("one", "x"), ("two", "x"), ("three", "y")):
        kube.create(make_job(name, labels={"group": group}))
    body = raw(
        kube,
        "DELETE",
        f"/apis/batch/v1/namespaces/{NS}/jobs",
        labelSelector="group=x",
        propagationPolicy="Background",
    )
    assert body["kind"] == "JobList"
    assert sorted(item["metadata"]["name"] for item in body["items"]) == ["one", "two"]
    assert kube.names() == ["three"]


# --------------------------------------------------------------------------- faults


def test_injected_errors_are_429_and_503(emu, kube, tmp_path) -> None:
    kube.create(make_job("e1"))
    emu.error_rate, emu.retry_after = 1.0, 0
    # The stock client's urllib3 honours Retry-After: it retries a GET 3 times by itself.
    with pytest.raises(ApiException) as err:
        kube.job("e1")
    assert err.value.status in (429, 503)
    assert emu.calls()["get jobs"] == 4

    bare = Kube(emu, tmp_path / "kubeconfig", retries=False)
    emu.retry_after = 1
    seen = set()
    for _ in range(30):
        with pytest.raises(ApiException) as err:
            bare.job("e1")
        body = status_body(err.value)
        seen.add((err.value.status, body["reason"]))
        assert err.value.headers["Retry-After"] == "1"
        assert body["details"]["retryAfterSeconds"] == 1
    assert seen == {(429, "TooManyRequests"), (503, "ServiceUnavailable")}

    emu.error_calls = {"create jobs"}
    assert bare.job("e1").metadata.name == "e1"
    with pytest.raises(ApiException) as err:
        bare.create(make_job("e2"))
    assert err.value.status in (429, 503)  # POSTs are never retried by urllib3
    emu.error_rate = 0.0
    assert emu.calls()["get jobs"] == 4 + 31
    assert emu.calls()["create jobs"] == 2

    emu.latency = 0.1
    started = time.monotonic()
    kube.job("e1")
    assert time.monotonic() - started >= 0.1
    assert min(emu.durations("get jobs")[-1:]) >= 0.1


def test_lost_create_responses_really_create(emu, kube) -> None:
    emu.lost_response_rate = 1.0
    with pytest.raises(ApiException) as err:
        kube.create(make_job("lost", key="lost-key"))
    assert err.value.status == 503
    assert emu.creates_by_key() == {"lost-key": 1}
    assert kube.names() == ["lost"]  # applied, although the client heard 503

    # The same name retried naively: Kubernetes refuses it, so no duplicate...
    emu.lost_response_rate = 0.0
    with pytest.raises(ApiException) as err:
        kube.create(make_job("lost", key="lost-key"))
    assert err.value.status == 409
    # ...but with generateName each retry is a new Job, and the emulator sees the duplicate.
    emu.lost_response_rate = 1.0
    with pytest.raises(ApiException):
        kube.create(make_job(None, generate_name="gen-", key="gen-key"))
    emu.lost_response_rate = 0.0
    kube.create(make_job(None, generate_name="gen-", key="gen-key"))
    assert emu.creates_by_key() == {"lost-key": 1, "gen-key": 2}
    assert emu.duplicates() == 1
    # An idempotent client looks its job up by key first.
    assert len(kube.names(label_selector=f"{KEY_LABEL}=gen-key")) == 2

    # "drop": the connection closes without an answer.
    emu.lost_response_rate, emu.lost_response_mode = 1.0, "drop"
    with pytest.raises(urllib3.exceptions.HTTPError):
        kube.create(make_job("dropped", key="drop-key"))
    emu.lost_response_rate = 0.0
    assert kube.job("dropped").metadata.labels[KEY_LABEL] == "drop-key"
    assert emu.creates_by_key()["drop-key"] == 1
    assert emu.attempts_by_key() == {"lost-key": 2, "gen-key": 2, "drop-key": 1}


def test_partial_error_rate_is_seeded_and_mixed(tmp_path) -> None:
    def outcomes(seed: int) -> list[int]:
        with K8sEmulator(error_rate=0.5, seed=seed, sim_step=3600) as emu:
            kube = Kube(emu, emu.write_kubeconfig(tmp_path / f"kc-{seed}"))
            result = []
            for i in range(40):
                try:
                    kube.create(make_job(f"p{i}"))
                    result.append(201)
                except ApiException as err:
                    result.append(err.status)
            assert len(emu.jobs()) == result.count(201)
            return result

    first = outcomes(7)
    assert first == outcomes(7)
    assert 5 < first.count(201) < 35 and {429, 503} <= set(first)


def test_crash_and_restart_keep_state(emu, kube) -> None:
    emu.hold(True)
    kube.create(make_job("survivor", key="s"))
    port = emu.port
    wait_for(lambda: kube.job("survivor").status.active == 1, timeout=10, interval=0.02)
    emu.crash()
    with pytest.raises(urllib3.exceptions.HTTPError):
        kube.job("survivor")
    emu.hold(False)  # the cluster keeps working while its API server is down
    emu.restart()
    assert emu.port == port
    done = kube.wait_condition("survivor", "Complete", timeout=10)
    assert done.metadata.labels[KEY_LABEL] == "s"
    assert emu.creates_by_key() == {"s": 1}
    kube.create(make_job("after"))
    assert kube.names() == ["after", "survivor"]


def test_1000_simulated_jobs_then_one_list(tmp_path) -> None:
    with K8sEmulator(sim_step=0.05) as emu:
        kube = Kube(emu, emu.write_kubeconfig(tmp_path / "kc"))
        started = time.perf_counter()
        for i in range(1000):
            kube.create(make_job(f"bulk-{i:04d}", key=f"bulk-{i}", labels={"batch": "big"}))
        create_s = time.perf_counter() - started
        kube.create(make_job("outsider", labels={"batch": "small"}))

        started = time.perf_counter()
        listed = kube.batch.list_namespaced_job(NS, label_selector="batch=big")
        list_s = time.perf_counter() - started
        server_s = emu.durations("list jobs")[-1]
        assert [j.metadata.name for j in listed.items] == [f"bulk-{i:04d}" for i in range(1000)]
        assert len(emu.creates_by_key()) == 1000 and emu.duplicates() == 0
        assert emu.calls()["create jobs"] == 1001

        def all_complete():
            raw = kube.batch.list_namespaced_job(
                NS,
                label_selector="batch=big",
                field_selector="status.successful=1",
                _preload_content=False,
            )
            return len(json.loads(raw.data)["items"]) == 1000

        wait_for(all_complete, timeout=30, interval=0.2)
        assert len(kube.core.list_namespaced_pod(NS, label_selector="app=emu-test").items) == 1001
        print(
            f"\n1000 serial creates: {create_s:.2f} s ({1000 / create_s:.0f}/s); "
            f"list of 1000 with a label selector: {list_s * 1000:.0f} ms in the client, "
            f"{server_s * 1000:.1f} ms on the server"
        )


def test_command_line_server(tmp_path) -> None:
    kubeconfig = tmp_path / "cli-kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.k8s_emulator",
            "--simulate",
            "--latency",
            "0.01",
            "--kubeconfig",
            str(kubeconfig),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = proc.stdout.readline().strip()
        path = proc.stdout.readline().strip()
        assert url.startswith("K8S_EMULATOR_URL=http://127.0.0.1:")
        assert path == f"KUBECONFIG={kubeconfig}"
        api = config.new_client_from_config(config_file=str(kubeconfig), context="emulator")
        batch = client.BatchV1Api(api)
        batch.create_namespaced_job(NS, make_job("cli", key="cli"))
        assert batch.read_namespaced_job("cli", NS).metadata.labels[KEY_LABEL] == "cli"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


# --------------------------------------------------------------------------- real containers

IMAGE_REPO = f"{engine.REGISTRY}/k8semu/busybox"
IMAGE = f"{IMAGE_REPO}:1"


@pytest.fixture(scope="module")
def pushed_image(docker_client) -> str:
    """busybox in the local registry, and not in the engine, so the emulator has to pull."""
    docker_client.images.get(engine.BUSYBOX_IMAGE).tag(IMAGE_REPO, "1")
    for line in docker_client.images.push(IMAGE_REPO, tag="1", stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(IMAGE)
    return IMAGE


@pytest.fixture
def container_kube(docker_client, tmp_path):
    with K8sEmulator(run_containers=True, workers=4) as emu:
        kube = Kube(emu, emu.write_kubeconfig(tmp_path / "kubeconfig"))
        yield kube
        kube.api.close()
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{CONTAINER_INSTANCE_LABEL}={emu.instance}"}
    )
    assert leftovers == []


def containers_of(docker_client, pod: client.V1Pod, **filters) -> list:
    label = {"label": f"{CONTAINER_POD_UID_LABEL}={pod.metadata.uid}"}
    # ignore_removed: the emulator may remove one between Docker's list and the SDK's get.
    return docker_client.containers.list(
        all=True, filters={**label, **filters}, ignore_removed=True
    )


def wait_running(kube: Kube, name: str) -> client.V1Pod:
    def running():
        pods = kube.pods(name)
        return pods[0] if pods and pods[0].status.phase == "Running" else None

    return wait_for(running, timeout=30, interval=0.05)


def test_container_job_fails_with_backoff(container_kube, docker_client) -> None:
    kube = container_kube
    kube.create(make_job("boom", command=["sh", "-c", "echo hello; exit 3"], backoff_limit=1))
    failed = kube.wait_condition("boom", "Failed", "Complete", timeout=60)
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    assert failed.status.failed == 2 and not failed.status.active

    pods = kube.pods("boom")
    assert len(pods) == 2
    for pod in pods:
        assert pod.status.phase == "Failed"
        status = pod.status.container_statuses[0]
        assert status.state.terminated.exit_code == 3
        assert status.state.terminated.reason == "Error"
        assert status.container_id.startswith("docker://")
        assert kube.log(pod.metadata.name) == "hello\n"
        assert "hello" in kube.core.read_namespaced_pod_log(pod.metadata.name, NS)
        assert len(containers_of(docker_client, pod)) == 1  # kept, like a kubelet keeps it

    kube.batch.delete_namespaced_job("boom", NS, propagation_policy="Background")
    wait_for(lambda: all(not containers_of(docker_client, p) for p in pods), timeout=30)
    assert kube.pods("boom") == []


def test_container_job_succeeds_from_registry(container_kube, docker_client, pushed_image) -> None:
    kube = container_kube
    kube.create(
        make_job(
            "fine",
            image=pushed_image,
            command=["sh", "-c"],
            args=['test "$GREETING" = hello && echo one && echo two'],
            env={"GREETING": "hello"},
        )
    )
    done = kube.wait_condition("fine", "Complete", "Failed", timeout=60)
    assert condition(done, "Complete").status == "True", kube.pods("fine")[0].status
    assert done.status.succeeded == 1 and done.status.completion_time
    (pod,) = kube.pods("fine")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert kube.log(pod.metadata.name) == "one\ntwo\n"
    assert kube.log(pod.metadata.name, tail_lines=1) == "two\n"
    assert docker_client.images.get(pushed_image)  # pulled from the local registry


def test_container_log_follow_streams_until_exit(container_kube, docker_client) -> None:
    kube = container_kube
    script = "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second"
    kube.create(make_job("talker", command=["sh", "-c", script], backoff_limit=0))
    pod = wait_running(kube, "talker")
    stream = kube.core.read_namespaced_pod_log(
        pod.metadata.name, NS, follow=True, _preload_content=False
    )
    chunks = stream.stream(64)
    first = next(chunks)
    assert first == b"first\n"  # streamed while the container still runs
    assert kube.pods("talker")[0].status.phase == "Running"
    (container,) = containers_of(docker_client, pod)
    container.exec_run(["touch", "/tmp/go"])
    rest = b"".join(chunks)
    assert rest == b"second\n"
    kube.wait_condition("talker", "Complete", timeout=30)


def test_foreground_delete_removes_the_running_container(container_kube, docker_client) -> None:
    kube = container_kube
    kube.create(make_job("sleeper", command=["sleep", "300"]))
    pod = wait_running(kube, "sleeper")
    assert len(containers_of(docker_client, pod, status="running")) == 1
    kube.batch.delete_namespaced_job("sleeper", NS, propagation_policy="Foreground")
    kube.wait_gone("sleeper")
    assert containers_of(docker_client, pod) == []
    assert kube.pods("sleeper") == []


def test_container_killed_externally_fails_the_job(container_kube, docker_client) -> None:
    kube = container_kube
    kube.create(make_job("victim", command=["sleep", "300"], backoff_limit=0))
    pod = wait_running(kube, "victim")
    (container,) = containers_of(docker_client, pod)
    container.kill()
    failed = kube.wait_condition("victim", "Failed", timeout=30)
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    (pod,) = kube.pods("victim")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 137


def test_container_deadline_and_missing_image(container_kube, docker_client) -> None:
    kube = container_kube
    kube.create(make_job("slow", command=["sleep", "300"], deadline=1))
    kube.create(make_job("absent", image=f"{engine.REGISTRY}/k8semu/absent:1"))
    late = kube.wait_condition("slow", "Failed", timeout=30)
    assert condition(late, "Failed").reason == "DeadlineExceeded"
    (pod,) = kube.pods("slow")
    wait_for(lambda: not containers_of(docker_client, pod, status="running"), timeout=30)

    def pull_failed():
        pods = kube.pods("absent")
        waiting = pods and pods[0].status.container_statuses[0].state.waiting
        return waiting if waiting and waiting.reason == "ErrImagePull" else None

    waiting = wait_for(pull_failed, timeout=30, interval=0.05)
    assert "absent" in waiting.message
    assert kube.pods("absent")[0].status.phase == "Pending"  # like a real cluster: it waits
    with pytest.raises(ApiException) as err:
        kube.core.read_namespaced_pod_log(kube.pods("absent")[0].metadata.name, NS)
    assert err.value.status == 400 and "waiting to start" in status_body(err.value)["message"]


def test_stop_removes_every_container(docker_client, tmp_path) -> None:
    emu = K8sEmulator(run_containers=True).start()
    try:
        kube = Kube(emu, emu.write_kubeconfig(tmp_path / "kc"))
        kube.create(make_job("left-running", command=["sleep", "300"]))
        wait_running(kube, "left-running")
        selector = {"label": f"{CONTAINER_INSTANCE_LABEL}={emu.instance}"}
        assert len(docker_client.containers.list(filters=selector)) == 1
    finally:
        emu.stop()
    assert docker_client.containers.list(all=True, filters=selector, ignore_removed=True) == []
