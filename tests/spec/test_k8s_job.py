"""Kubernetes Job manifests: names, labels, resources, GKE's node selection, user files."""

from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest

from caliban_flows.spec import k8s_job as kj
from caliban_flows.spec.accelerators import GpuSpec
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.gke_tpu import parse_cluster_tpu

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def manifest(resources: kj.Resources, **kw) -> dict:
    labels = kj.job_labels({"lr": "0_01"}, xgroup="g", key="abc", attempt=2)
    return kj.job_manifest(
        name="caliban-me-1",
        image="img:1",
        args=["--lr", "0.01"],
        labels=labels,
        resources=resources,
        **kw,
    )


@pytest.mark.parametrize("name", ["caliban_root", "A" * 100, "__", "x.y/z", "-lead-"])
def test_job_names_are_dns_labels_and_deterministic(name):
    first = kj.job_name(name, "key", 1)
    assert DNS_LABEL.fullmatch(first) and len(first) <= 63
    assert first == kj.job_name(name, "key", 1)
    assert first != kj.job_name(name, "key", 2) != kj.job_name(name, "other", 1)


def test_a_thousand_keys_get_a_thousand_names():
    assert len({kj.job_name("caliban", f"k{i}", 1) for i in range(1000)}) == 1000


@pytest.mark.parametrize("text", ["0_01", "_x_", "a" * 80, "--flag", "Ünïcode", ".", "a b"])
def test_label_values_follow_kubernetes_rules(text):
    assert LABEL_VALUE.fullmatch(kj.label_value(text))


def test_labels_carry_the_group_key_and_attempt():
    labels = kj.job_labels({"Lr": "0_01", "--": "x"}, xgroup="my group/1", key="k", attempt=3)
    assert labels[kj.JOB_KEY_LABEL] == "k" and labels[kj.ATTEMPT_LABEL] == "3"
    assert labels[kj.XGROUP_ID_LABEL] == kj.xgroup_id("my group/1")
    assert labels["lr"] == "0_01" and "--" not in labels
    assert all(LABEL_VALUE.fullmatch(v) for v in labels.values())


def test_cpu_job_off_gke_has_no_gke_selectors():
    res = kj.resources(min_cpu=None, min_mem=2048)
    job = manifest(res)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "31000m", "memory": "2048Mi"}}
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert pod["restartPolicy"] == "Never" and pod["hostIPC"] is True
    assert job["spec"]["backoffLimit"] == 0
    assert job["metadata"]["labels"] == job["spec"]["template"]["metadata"]["labels"]


def test_gpu_on_gke_is_spot_by_default_with_its_accelerator_and_tolerations():
    res = kj.resources(min_cpu=None, min_mem=None, gpu=GpuSpec(2, "T4"), gke=True)
    pod = manifest(res)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert pod["containers"][0]["resources"]["requests"] == {"cpu": "1500m"}
    assert pod["nodeSelector"] == {kj.GKE_ACCELERATOR: "nvidia-tesla-t4", kj.GKE_SPOT: "true"}
    keys = {t["key"] for t in pod["tolerations"]}
    assert keys == {kj.GKE_SPOT, "nvidia.com/gpu"}


def test_nonpreemptible_drops_spot():
    res = kj.resources(min_cpu=4000, min_mem=None, gke=True, nonpreemptible=True)
    pod = manifest(res)["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod


def test_tpus_as_caliban_asked_for_them_with_tpu_legacy():
    tpu = parse_cluster_tpu("8xV3", legacy=True)
    res = kj.resources(min_cpu=None, min_mem=None, tpu=tpu, tpu_driver="2.1", gke=True)
    job = manifest(res)
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {
        "cloud-tpus.google.com/preemptible-v3": "8"
    }
    assert job["spec"]["template"]["metadata"]["annotations"] == {kj.TPU_VERSION_ANNOTATION: "2.1"}
    tpu = parse_cluster_tpu("8xV2", legacy=True)
    res = kj.resources(min_cpu=None, min_mem=None, tpu=tpu, nonpreemptible_tpu=True)
    limits = manifest(res)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits == {"cloud-tpus.google.com/v2": "8"}


@pytest.mark.parametrize(
    "spec, accelerator, topology",
    [
        ("4xV4", "tpu-v4-podslice", "2x2x1"),
        ("1xV5E", "tpu-v5-lite-podslice", "1x1"),
        ("4xv5_litepod", "tpu-v5-lite-podslice", "2x2"),
        ("8xV5E", "tpu-v5-lite-podslice", "2x4"),
        ("4xV5P", "tpu-v5p-slice", "2x2x1"),
        ("1xV6E", "tpu-v6e-slice", "1x1"),
        ("4xtpu-v6e-slice", "tpu-v6e-slice", "2x2"),
        ("8xTrillium", "tpu-v6e-slice", "2x4"),
    ],
)
def test_tpus_as_gke_runs_them_today(spec, accelerator, topology):
    tpu = parse_cluster_tpu(spec)
    res = kj.resources(min_cpu=None, min_mem=None, tpu=tpu, gke=True)
    job = manifest(res)
    pod = job["spec"]["template"]["spec"]
    chips = spec.split("x")[0]
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": chips}
    assert pod["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": accelerator,
        "cloud.google.com/gke-tpu-topology": topology,
        "cloud.google.com/gke-spot": "true",
    }
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert "annotations" not in job["spec"]["template"]["metadata"]
    # The TPU is the node: either flag asks for an on-demand one.
    for flag in ("nonpreemptible", "nonpreemptible_tpu"):
        res = kj.resources(min_cpu=None, min_mem=None, tpu=tpu, gke=True, **{flag: True})
        assert (
            "cloud.google.com/gke-spot"
            not in manifest(res)["spec"]["template"]["spec"]["nodeSelector"]
        )


@pytest.mark.parametrize(
    "spec, kw, needle",
    [
        ("8xV3", {}, "--tpu_legacy"),
        ("16xV5E", {}, "1xV5E, 4xV5E, 8xV5E"),
        ("8xV4", {}, "4xV4"),
        ("4xV5E", {"legacy": True}, "V2 or V3 only"),
        ("4xV9", {}, "V4, V5E, V5P, V6E"),
    ],
)
def test_cluster_tpu_specs_that_gke_cannot_run(spec, kw, needle):
    with pytest.raises(SpecError, match=re.escape(needle)):
        parse_cluster_tpu(spec, **kw)


def test_force_sends_a_count_the_catalog_does_not_list_without_topology():
    tpu = parse_cluster_tpu("16xV5E", force=True)
    pod = manifest(kj.resources(min_cpu=None, min_mem=None, tpu=tpu))["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice"}


def test_negative_backoff_is_refused():
    with pytest.raises(SpecError, match="backoff_limit"):
        kj.resources(min_cpu=None, min_mem=None, backoff_limit=-1)


def test_backoff_limit_is_kept():
    res = kj.resources(min_cpu=None, min_mem=None, backoff_limit=3)
    assert manifest(res)["spec"]["backoffLimit"] == 3


GOOD = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "mine"},
    "spec": {
        "template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
        }
    },
}


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"kind": "Pod"}, "kind Job"),
        ({"metadata": {}}, "metadata.name"),
        ({"metadata": {"name": "Bad_Name"}}, "DNS-1123"),
        ({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}}, "containers"),
        (
            {
                "spec": {
                    "template": {
                        "spec": {
                            "restartPolicy": "Always",
                            "containers": [{"name": "c", "image": "i"}],
                        }
                    }
                }
            },
            "restartPolicy",
        ),
        (
            {
                "spec": {
                    "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}
                }
            },
            "image",
        ),
    ],
)
def test_a_users_job_file_is_checked_before_sending(change, needle):
    assert kj.check_job_file(GOOD, "job.yaml") is GOOD
    with pytest.raises(SpecError, match=needle):
        kj.check_job_file({**GOOD, **change}, "job.yaml")
    with pytest.raises(SpecError, match="mapping"):
        kj.check_job_file(["not", "a", "job"], "job.yaml")


# --------------------------------------------------------------------------- --max_restarts


def test_no_restarts_leave_the_manifest_as_it_was():
    plain = manifest(kj.resources(min_cpu=None, min_mem=None, backoff_limit=2))
    assert manifest(kj.resources(min_cpu=None, min_mem=None, backoff_limit=2, max_restarts=0)) == (
        plain
    )
    assert list(plain["spec"]) == ["backoffLimit", "template"]
    assert plain["spec"]["backoffLimit"] == 2


def test_max_restarts_adds_a_pod_failure_policy():
    res = kj.resources(min_cpu=None, min_mem=None, max_restarts=3)
    spec = manifest(res)["spec"]
    assert spec["backoffLimit"] == 3
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # what the policy needs
    assert spec["podFailurePolicy"] == {
        "rules": [
            {
                "action": "Count",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "caliban", "operator": "NotIn", "values": [0]},
            },
        ]
    }
    assert spec["template"]["spec"]["containers"][0]["name"] == "caliban"


def test_named_exit_codes_are_counted_against_max_restarts():
    res = kj.resources(
        min_cpu=None, min_mem=None, max_restarts=2, restart_on_exit_codes=(143, 137, 143)
    )
    assert res.restart_on_exit_codes == (137, 143)
    spec = manifest(res)["spec"]
    disrupted, count, fail = spec["podFailurePolicy"]["rules"]
    assert disrupted["action"] == "Count"  # bounded by backoffLimit = max_restarts
    assert count == {
        "action": "Count",
        "onExitCodes": {"containerName": "caliban", "operator": "In", "values": [137, 143]},
    }
    assert fail == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "caliban", "operator": "NotIn", "values": [0, 137, 143]},
    }
    assert spec["backoffLimit"] == 2


def test_max_restarts_wins_over_backoff_limit():
    res = kj.resources(min_cpu=None, min_mem=None, backoff_limit=5, max_restarts=1)
    assert manifest(res)["spec"]["backoffLimit"] == 1


def test_recorded_resources_come_back_from_json():
    res = kj.resources(min_cpu=None, min_mem=None, max_restarts=2, restart_on_exit_codes=[137])
    back = kj.Resources(**json.loads(json.dumps(asdict(res))))
    assert back == res and back.restart_on_exit_codes == (137,)
    assert kj.Resources(cpu_millis=1).max_restarts == 0  # placements recorded before the flags


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"max_restarts": -1}, "--max_restarts -1 must be 0 or more"),
        ({"max_restarts": 1, "restart_on_exit_codes": (0,)}, "--restart_on_exit_codes 0: "),
        ({"max_restarts": 1, "restart_on_exit_codes": (256,)}, "1 to 255"),
        ({"max_restarts": 1, "restart_on_exit_codes": (-3,)}, "1 to 255"),
        ({"restart_on_exit_codes": (137,)}, "needs --max_restarts"),
        ({"max_restarts": 1, "restart_on_exit_codes": range(1, 256)}, "at most 254"),
    ],
)
def test_bad_restart_settings_are_refused_in_one_line(kwargs, needle):
    with pytest.raises(SpecError) as err:
        kj.resources(min_cpu=None, min_mem=None, **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_policy_follows_kubernetes_rules():
    """What the apiserver checks (pkg/apis/batch/validation): values sorted, unique, at most
    255, no 0 with In; 254 named codes is the most that fits the FailJob rule."""
    res = kj.resources(
        min_cpu=None, min_mem=None, max_restarts=1, restart_on_exit_codes=range(1, 255)
    )
    for rule in manifest(res)["spec"]["podFailurePolicy"]["rules"]:
        values = (rule.get("onExitCodes") or {}).get("values")
        if values is None:
            continue
        assert values == sorted(set(values)) and len(values) <= 255
        assert rule["onExitCodes"]["operator"] == "NotIn" or 0 not in values


# --------------------------------------------------------------------------- output folders


def _with_outputs(place, folder="g/caliban_me_1-abcdef12/2"):
    from caliban_flows.spec.k8s_outputs import with_outputs

    return with_outputs(manifest(kj.resources(min_cpu=None, min_mem=None)), place, folder)


def _strictly_valid(job: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(json.loads(json.dumps(job)),
                                 kubernetes_validate.latest_version(), strict=True)  # fmt: skip


def test_a_bucket_is_mounted_with_gkes_cloud_storage_fuse_driver():
    from caliban_flows.spec.outputs import gcs_place

    job = _with_outputs(gcs_place("gs://my-bucket/runs"))
    template = job["spec"]["template"]
    pod, container = template["spec"], template["spec"]["containers"][0]
    assert template["metadata"]["annotations"] == {"gke-gcsfuse/volumes": "true"}
    attributes = {
        "bucketName": "my-bucket",
        "mountOptions": "implicit-dirs,file-mode=666,dir-mode=777",
    }
    csi = {"driver": "gcsfuse.csi.storage.gke.io", "volumeAttributes": attributes}
    assert pod["volumes"] == [{"name": "caliban-outputs", "csi": csi}]
    assert container["volumeMounts"] == [{"name": "caliban-outputs", "mountPath": "/gcs/my-bucket"}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CALIBAN_OUTPUT_DIR"] == "/gcs/my-bucket/runs/g/caliban_me_1-abcdef12/2"
    assert env["PYTHONUNBUFFERED"] == "1"
    _strictly_valid(job)


def test_a_claim_is_mounted_at_the_jobs_own_folder():
    from caliban_flows.spec.outputs import pvc_place

    job = _with_outputs(pvc_place("results"))
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["volumes"] == [
        {"name": "caliban-outputs", "persistentVolumeClaim": {"claimName": "results"}}
    ]
    assert container["volumeMounts"] == [{"name": "caliban-outputs", "mountPath":
                                          "/caliban/output",
                                          "subPath": "g/caliban_me_1-abcdef12/2"}]  # fmt: skip
    assert {"name": "CALIBAN_OUTPUT_DIR", "value": "/caliban/output"} in container["env"]
    assert "annotations" not in job["spec"]["template"]["metadata"]
    _strictly_valid(job)


def test_no_output_place_leaves_the_manifest_as_it_was():
    before = manifest(kj.resources(min_cpu=None, min_mem=None))
    assert _with_outputs(None) == before
    assert "volumes" not in before["spec"]["template"]["spec"]
