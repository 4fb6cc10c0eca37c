"""podFailurePolicy and pod disruptions in devtools.k8s_emulator, through the real `kubernetes`
client: the apiserver's validation, the Job controller's rules, preemption and the Eviction API
(simulated pods, then real containers on the local dockerd)."""

from __future__ import annotations

import copy

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from caliban_flows.platforms.base import JobRequest, JobState
from caliban_flows.platforms.kubernetes.adapter import Kubernetes
from caliban_flows.spec import k8s_job as kj
from devtools.k8s_emulator import CONTAINER_INSTANCE_LABEL, K8sEmulator
from tests.conftest import wait_for
from tests.integration.test_k8s_emulator import (
    NS,
    Kube,
    condition,
    containers_of,
    make_job,
    status_body,
    wait_running,
)

DISRUPTED = {
    "action": "Ignore",
    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
}


def code_rule(action: str, operator: str, values: list[int], container: str = "main") -> dict:
    return {
        "action": action,
        "onExitCodes": {"containerName": container, "operator": operator, "values": values},
    }


def with_policy(job: client.V1Job, *rules: dict, **spec) -> dict:
    """The Job as JSON with spec.podFailurePolicy (a dict: the typed models refuse bad ones)."""
    body = client.ApiClient().sanitize_for_serialization(job)
    body["spec"]["podFailurePolicy"] = {"rules": list(rules)}
    body["spec"].update(spec)
    return body


def caliban_policy(job: client.V1Job, *codes: int) -> dict:
    """The Job with the podFailurePolicy caliban_flows.spec.k8s_job makes for --max_restarts
    (and restart_on_exit_codes `codes`), on its container named as caliban names it."""
    body = with_policy(job)
    body["spec"]["template"]["spec"]["containers"][0]["name"] = kj.CONTAINER_NAME
    body["spec"]["podFailurePolicy"] = kj.pod_failure_policy(codes)
    return body


def disruption(pod: client.V1Pod) -> client.V1PodCondition | None:
    return next((c for c in pod.status.conditions or [] if c.type == "DisruptionTarget"), None)


def terminated(pod: client.V1Pod):
    return pod.status.container_statuses[0].state.terminated


def oldest_first(pods: list[client.V1Pod]) -> list[client.V1Pod]:
    return sorted(
        pods, key=lambda p: (p.metadata.creation_timestamp, int(p.metadata.resource_version))
    )


@pytest.fixture
def emu():
    with K8sEmulator(sim_step=0.02) as emulator:
        yield emulator


@pytest.fixture
def kube(emu, tmp_path) -> Kube:
    kube = Kube(emu, emu.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS))
    yield kube
    kube.api.close()


# --------------------------------------------------------------------------- the apiserver


def test_a_policy_is_stored_with_the_apiservers_defaults(kube) -> None:
    pattern = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    created = kube.create(with_policy(make_job("defaulted"), pattern))
    (rule,) = created.spec.pod_failure_policy.rules
    assert rule.on_pod_conditions[0].status == "True"  # defaulted
    assert created.spec.pod_replacement_policy == "Failed"  # not TerminatingOrFailed with one
    assert kube.create(make_job("plain")).spec.pod_replacement_policy == "TerminatingOrFailed"
    # A policy without rules is still one: it changes the defaults, and wants restartPolicy Never.
    assert kube.create(with_policy(make_job("empty"))).spec.pod_replacement_policy == "Failed"
    not_an_object = with_policy(make_job("bad"))
    not_an_object["spec"]["podFailurePolicy"] = ["not", "an object"]
    for body in (with_policy(make_job("bad", restart_policy="OnFailure")), not_an_object):
        with pytest.raises(ApiException) as err:
            kube.create(body)
        assert err.value.status == 422
    assert kube.names() == ["defaulted", "empty", "plain"]


def _bad(*rules: dict, job: client.V1Job | None = None, **spec) -> dict:
    return with_policy(job or make_job("bad"), *rules, **spec)


RULES = "spec.podFailurePolicy.rules"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            _bad(DISRUPTED, job=make_job("bad", restart_policy="OnFailure")),
            "spec.template.spec.restartPolicy",
            'Invalid value: "OnFailure": only "Never" is supported when podFailurePolicy is '
            "specified",
        ),
        (
            _bad({**DISRUPTED, "action": "Retry"}),
            f"{RULES}[0].action",
            'Unsupported value: "Retry": supported values: "Count", "FailIndex", "FailJob", '
            '"Ignore"',
        ),
        (
            _bad({**DISRUPTED, "action": "FailIndex"}),
            f"{RULES}[0].action",
            'Invalid value: "FailIndex": requires the backoffLimitPerIndex to be set',
        ),
        (
            _bad({**DISRUPTED, **code_rule("Ignore", "In", [1])}),
            f"{RULES}[0]",
            "Invalid value: specifying both OnExitCodes and OnPodConditions is not supported",
        ),
        (
            _bad({"action": "Ignore"}),
            f"{RULES}[0]",
            "Invalid value: specifying one of OnExitCodes and OnPodConditions is required",
        ),
        (
            _bad(code_rule("Count", "Equals", [1])),
            f"{RULES}[0].onExitCodes.operator",
            'Unsupported value: "Equals": supported values: "In", "NotIn"',
        ),
        (
            _bad(DISRUPTED, code_rule("Count", "In", [3, 1])),
            f"{RULES}[1].onExitCodes.values",
            "Invalid value: []int32{3, 1}: must be ordered",
        ),
        (
            _bad(code_rule("Count", "In", [1, 1])),
            f"{RULES}[0].onExitCodes.values[1]",
            "Duplicate value: 1",
        ),
        (
            _bad(code_rule("Count", "In", [0, 1])),
            f"{RULES}[0].onExitCodes.values[0]",
            "Invalid value: 0: must not be 0 for the In operator",
        ),
        (
            _bad(code_rule("FailJob", "NotIn", list(range(256)))),
            f"{RULES}[0].onExitCodes.values",
            "Too many: 256: must have at most 255 items",
        ),
        (
            _bad(code_rule("Count", "In", [])),
            f"{RULES}[0].onExitCodes.values",
            "at least one value is required",
        ),
        (
            _bad(code_rule("FailJob", "NotIn", [0], container="caliban")),
            f"{RULES}[0].onExitCodes.containerName",
            'Invalid value: "caliban": must be one of the container or initContainer names in '
            "the pod template",
        ),
        (
            _bad({"action": "Ignore", "onPodConditions": [{"type": "Bad Type", "status": "True"}]}),
            f"{RULES}[0].onPodConditions[0].type",
            "name part must consist of alphanumeric characters",
        ),
        (
            _bad({"action": "Ignore", "onPodConditions": [{"type": "Ready", "status": "Maybe"}]}),
            f"{RULES}[0].onPodConditions[0].status",
            'Unsupported value: "Maybe": supported values: "False", "True", "Unknown"',
        ),
        (
            _bad(*[code_rule("Count", "In", [i]) for i in range(1, 22)]),
            RULES,
            "Too many: 21: must have at most 20 items",
        ),
        (
            _bad(DISRUPTED, podReplacementPolicy="TerminatingOrFailed"),
            "spec.podReplacementPolicy",
            'Unsupported value: "TerminatingOrFailed": supported values: "Failed"',
        ),
    ],
)
def test_an_invalid_policy_is_422_as_the_apiserver_says_it(kube, body, field, message) -> None:
    with pytest.raises(ApiException) as err:
        kube.create(copy.deepcopy(body))
    status = status_body(err.value)
    assert err.value.status == 422 and status["reason"] == "Invalid"
    causes = status["details"]["causes"]
    assert any(c["field"] == field and message in c["message"] for c in causes), causes
    assert f"{field}: " in status["message"] and message in status["message"]
    assert kube.names() == []


def test_the_policy_caliban_sends_is_valid(kube) -> None:
    """0 may be a NotIn value (only In refuses it); 254 named codes still fit."""
    kube.create(caliban_policy(make_job("caliban-shaped"), *range(1, 255)))
    assert kube.names() == ["caliban-shaped"]


# --------------------------------------------------------------------------- the Job controller


def ignoring(body: dict) -> dict:
    """A policy that replaces a disrupted pod without counting it (caliban's counts it)."""
    body["spec"]["podFailurePolicy"]["rules"][0]["action"] = "Ignore"
    return body


def test_a_preempted_pod_is_replaced_without_counting(emu, kube) -> None:
    emu.hold(True)
    kube.create(ignoring(caliban_policy(make_job("spot", key="spot-key", backoff_limit=0))))
    taken = emu.preempt("spot-key")  # by key label; waits until the pod runs
    assert taken["status"]["phase"] == "Failed"
    (cond,) = [c for c in taken["status"]["conditions"] if c["type"] == "DisruptionTarget"]
    assert cond["status"] == "True" and cond["reason"] == "PreemptionByScheduler"
    assert cond["message"] == "default-scheduler: preempting to accommodate a higher priority pod"
    ended = taken["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (ended["exitCode"], ended["reason"]) == (137, "Error")

    wait_for(lambda: len(kube.pods("spot")) == 2, timeout=10, interval=0.01)
    emu.hold(False)
    done = kube.wait_condition("spot", "Complete", "Failed")
    assert condition(done, "Complete").status == "True"
    assert not done.status.failed and done.status.succeeded == 1  # an ignored pod is not failed
    first, second = oldest_first(kube.pods("spot"))
    assert first.metadata.name == taken["metadata"]["name"]
    assert first.status.phase == "Failed" and disruption(first).reason == "PreemptionByScheduler"
    assert second.status.phase == "Succeeded" and disruption(second) is None


def test_calibans_policy_counts_a_preemption_against_max_restarts(emu, kube) -> None:
    emu.hold(True)
    kube.create(caliban_policy(make_job("bounded", backoff_limit=1)))  # --max_restarts 1
    emu.preempt("bounded")
    wait_for(lambda: len(kube.pods("bounded")) == 2, timeout=10, interval=0.01)
    emu.preempt("bounded")
    failed = kube.wait_condition("bounded", "Failed", "Complete")
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    assert failed.status.failed == 2


def test_the_code_failing_ends_the_job_at_once(emu, kube) -> None:
    emu.set_outcome("broken", "Failed", exit_code=3)
    kube.create(caliban_policy(make_job("broken", backoff_limit=5), 137))
    failed = kube.wait_condition("broken", "Failed", "Complete")
    (pod,) = kube.pods("broken")
    for kind in ("Failed", "FailureTarget"):
        assert condition(failed, kind).reason == "PodFailurePolicy"
        assert condition(failed, kind).message == (
            f"Container caliban for pod {NS}/{pod.metadata.name} failed with exit code 3 matching "
            "FailJob rule at index 2"
        )
    assert failed.status.failed == 1


def test_named_exit_codes_count_against_the_backoff_limit(emu, kube) -> None:
    emu.set_outcome("oom", "Failed", exit_code=137)
    kube.create(caliban_policy(make_job("oom", backoff_limit=1), 137, 143))
    failed = kube.wait_condition("oom", "Failed", "Complete")
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    assert failed.status.failed == 2 and len(kube.pods("oom")) == 2


def test_without_a_policy_a_disruption_counts_as_any_failure(emu, kube) -> None:
    emu.hold(True)
    kube.create(make_job("unguarded", backoff_limit=0))
    emu.preempt("unguarded", "TerminationByKubelet")  # a node shutdown, e.g. a Spot VM's
    failed = kube.wait_condition("unguarded", "Failed")
    assert condition(failed, "Failed").reason == "BackoffLimitExceeded"
    (pod,) = kube.pods("unguarded")  # the kubelet does not delete it
    assert disruption(pod).reason == "TerminationByKubelet"
    assert (pod.status.reason, pod.status.message) == (
        "Terminated",
        "Pod was terminated in response to imminent node shutdown.",
    )
    with pytest.raises(RuntimeError, match="already finished"):
        emu.preempt("unguarded")
    with pytest.raises(ValueError, match="PreemptionByScheduler"):
        emu.preempt("unguarded", "Cosmic rays")


def test_a_deleting_disruption_and_a_plain_delete(emu, kube) -> None:
    emu.hold(True)
    kube.create(caliban_policy(make_job("tainted", backoff_limit=1)))
    gone = emu.preempt("tainted", "DeletionByTaintManager", delete=True)
    assert gone["metadata"]["deletionTimestamp"]

    def deleted() -> bool:
        return gone["metadata"]["name"] not in [p.metadata.name for p in kube.pods("tainted")]

    wait_for(deleted, timeout=10, interval=0.01)
    replacement = wait_running(kube, "tainted")
    assert replacement.metadata.name != gone["metadata"]["name"]
    assert kube.job("tainted").status.failed == 1  # counted: --max_restarts 1 is spent

    # A pod deleted by hand has no DisruptionTarget: the kubelet's SIGKILL (137) is the code's
    # failure as far as the policy knows.
    kube.core.delete_namespaced_pod(replacement.metadata.name, NS)
    failed = kube.wait_condition("tainted", "Failed")
    assert condition(failed, "Failed").reason == "PodFailurePolicy"
    assert "failed with exit code 137 matching FailJob rule at index 1" in (
        condition(failed, "Failed").message
    )


def test_the_eviction_api(emu, kube) -> None:
    emu.hold(True)
    kube.create(caliban_policy(make_job("drained", backoff_limit=1)))
    pod = wait_running(kube, "drained")
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=pod.metadata.name, namespace=NS))
    kube.core.create_namespaced_pod_eviction(pod.metadata.name, NS, eviction)
    assert emu.calls()["create pods/eviction"] == 1

    def replaced():
        pods = kube.pods("drained")
        return len(pods) == 1 and pods[0].metadata.name != pod.metadata.name and pods[0]

    wait_for(replaced, timeout=10, interval=0.01)
    emu.hold(False)
    done = kube.wait_condition("drained", "Complete", "Failed")
    assert condition(done, "Complete").status == "True" and done.status.failed == 1

    with pytest.raises(ApiException) as err:
        kube.core.create_namespaced_pod_eviction("nope", NS, eviction)
    assert err.value.status == 400  # as the real one: the names differ
    assert "does not match" in status_body(err.value)["message"]
    with pytest.raises(ApiException) as err:
        kube.core.create_namespaced_pod_eviction(pod.metadata.name, NS, eviction)
    assert err.value.status == 404  # deleted with the eviction
    resources = client.CoreV1Api(kube.api).get_api_resources().resources
    assert "pods/eviction" in [r.name for r in resources]


# --------------------------------------------------------------------------- the adapter


def platform(emu: K8sEmulator, tmp_path, **restarts) -> Kubernetes:
    resources = kj.resources(min_cpu=None, min_mem=None, **restarts)
    return Kubernetes(config_file=str(emu.write_kubeconfig(tmp_path / "kc")), resources=resources)


def submit(k8s: Kubernetes, xgroup: str, key: str) -> JobRequest:
    request = JobRequest(xgroup=xgroup, key=key, attempt=1, name="job", image="img:1", args=())
    assert k8s.submit(request).state in (JobState.SUBMITTED, JobState.RUNNING)
    return request


def settled(k8s: Kubernetes, xgroup: str, *states: JobState):
    def poll():
        (job,) = k8s.poll(xgroup)
        return job if job.state in states else None

    return wait_for(poll, timeout=10, interval=0.01)


def test_the_adapter_reports_a_preemption_the_job_survived(emu, tmp_path) -> None:
    k8s = platform(emu, tmp_path, max_restarts=2)
    emu.hold(True)
    submit(k8s, "g", "k1")
    emu.preempt("k1")
    running = settled(k8s, "g", JobState.RUNNING)
    # RUNNING again on its replacement: the preempted pod's 137 is no exit code of the Job's.
    assert running.restarts == ("preempted (PreemptionByScheduler)",)
    assert running.exit_code is None and running.infra is None
    emu.hold(False)
    done = settled(k8s, "g", JobState.SUCCEEDED)
    assert (done.exit_code, done.infra, done.detail) == (0, None, None)
    assert done.restarts == ("preempted (PreemptionByScheduler)",)


def test_the_adapter_reports_counted_restarts_and_the_newest_exit_code(emu, tmp_path) -> None:
    k8s = platform(emu, tmp_path, max_restarts=2, restart_on_exit_codes=(137,))
    emu.hold(True)
    submit(k8s, "g", "k1")
    emu.preempt("k1", "EvictionByEvictionAPI")  # restart 1 of 2
    emu.set_outcome("k1", "Failed", exit_code=137)  # the next two pods: restart 2, then out
    emu.hold(False)
    failed = settled(k8s, "g", JobState.FAILED)
    assert failed.restarts == ("evicted (EvictionByEvictionAPI)", "exit code 137")
    assert failed.exit_code == 137 and failed.infra is None
    assert failed.detail.startswith("exit code 137; BackoffLimitExceeded")


def test_max_restarts_bounds_the_preemptions_a_job_survives(emu, tmp_path) -> None:
    k8s = platform(emu, tmp_path, max_restarts=1)
    emu.hold(True)
    submit(k8s, "g", "k1")
    emu.preempt("k1")
    assert settled(k8s, "g", JobState.RUNNING).restarts == ("preempted (PreemptionByScheduler)",)
    emu.preempt("k1")  # a second one is over --max_restarts 1
    failed = settled(k8s, "g", JobState.FAILED)
    assert failed.infra == "preempted (PreemptionByScheduler)"
    assert failed.restarts == ("preempted (PreemptionByScheduler)",)


def test_the_adapter_says_when_the_infrastructure_ended_a_job(emu, tmp_path) -> None:
    k8s = platform(emu, tmp_path)  # no --max_restarts: a disruption counts as a failure
    emu.hold(True)
    submit(k8s, "g", "k1")
    emu.preempt("k1", "TerminationByKubelet")
    failed = settled(k8s, "g", JobState.FAILED)
    assert failed.infra == "node shut down (TerminationByKubelet)"
    assert failed.exit_code == 137 and failed.restarts == ()


def test_the_adapter_on_the_codes_own_failure(emu, tmp_path) -> None:
    k8s = platform(emu, tmp_path, max_restarts=3)
    emu.set_outcome("k1", "Failed", exit_code=3)
    submit(k8s, "g", "k1")
    failed = settled(k8s, "g", JobState.FAILED)
    assert (failed.exit_code, failed.infra, failed.restarts) == (3, None, ())
    assert failed.detail.startswith("exit code 3; PodFailurePolicy: Container caliban for pod ")


def test_the_adapter_lists_pods_only_when_a_job_has_failed_ones(emu, tmp_path) -> None:
    plain, guarded = platform(emu, tmp_path), platform(emu, tmp_path, max_restarts=1)
    emu.hold(True)
    submit(plain, "plain", "p1")
    submit(guarded, "guarded", "g1")
    before = emu.calls()["list pods"]
    plain.poll("plain")
    (job,) = guarded.poll("guarded")
    assert emu.calls()["list pods"] == before  # nothing failed, nothing to read
    assert job.restarts == ()
    emu.preempt("g1")  # counted in the Job's status: now its pods are read
    wait_for(lambda: guarded.poll("guarded")[0].restarts, timeout=10, interval=0.01)
    assert emu.calls()["list pods"] > before


# --------------------------------------------------------------------------- real containers

WAIT_FOR_GO = "echo started; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo done"


@pytest.fixture
def container_kube(docker_client, tmp_path):
    with K8sEmulator(run_containers=True, workers=4) as emulator:
        kube = Kube(emulator, emulator.write_kubeconfig(tmp_path / "kubeconfig"))
        yield kube
        kube.api.close()
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{CONTAINER_INSTANCE_LABEL}={emulator.instance}"}
    )
    assert leftovers == []


def test_a_container_job_survives_a_preemption(container_kube, docker_client) -> None:
    kube = container_kube
    job = make_job("spot", command=["sh", "-c", WAIT_FOR_GO], backoff_limit=1)
    kube.create(caliban_policy(job))
    taken = kube.emu.preempt("spot")
    (first,) = [p for p in kube.pods("spot") if p.metadata.name == taken["metadata"]["name"]]
    (container,) = containers_of(docker_client, first)
    container.reload()
    assert container.status == "exited" and container.attrs["State"]["ExitCode"] == 137

    def second_running():
        pods = [p for p in kube.pods("spot") if p.metadata.uid != first.metadata.uid]
        return pods and pods[0].status.phase == "Running" and pods[0]

    second = wait_for(second_running, timeout=60, interval=0.05)
    (container,) = containers_of(docker_client, second)
    container.exec_run(["touch", "/tmp/go"])
    done = kube.wait_condition("spot", "Complete", "Failed", timeout=60)
    assert condition(done, "Complete").status == "True" and done.status.failed == 1
    first, second = oldest_first(kube.pods("spot"))
    assert disruption(first).reason == "PreemptionByScheduler"
    assert terminated(first).exit_code == 137 and terminated(second).exit_code == 0
    assert kube.log(second.metadata.name) == "started\ndone\n"


def test_a_container_exiting_3_fails_the_job_at_once(container_kube) -> None:
    kube = container_kube
    job = make_job("exits", command=["sh", "-c", "exit 3"], backoff_limit=4)
    kube.create(caliban_policy(job, 137))
    failed = kube.wait_condition("exits", "Failed", "Complete", timeout=60)
    assert condition(failed, "Failed").reason == "PodFailurePolicy"
    (pod,) = kube.pods("exits")
    assert terminated(pod).exit_code == 3 and failed.status.failed == 1
