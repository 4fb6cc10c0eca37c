"""devtools.storage_emulator through the real google-cloud-storage client and caliban's reader
(caliban_flows.platforms.gcs), over real TLS with the test CA; and the Vertex and Kubernetes
emulators' containers writing job outputs into the bucket folder it serves."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
from google.api_core.exceptions import NotFound
from google.auth.exceptions import RefreshError
from google.cloud import aiplatform_v1 as v1
from google.cloud import storage
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from caliban_flows.platforms import gcs
from caliban_flows.spec.errors import CalibanError
from caliban_flows.spec.outputs import GCSFUSE_CSI_DRIVER, OutputPlace, job_folder
from devtools import engine
from devtools.k8s_emulator import K8sEmulator
from devtools.storage_emulator import StorageEmulator
from devtools.vertex_emulator import VertexEmulator
from tests.conftest import wait_for
from tests.integration.test_k8s_emulator import Kube
from tests.integration.test_k8s_emulator import make_job as k8s_job
from tests.integration.test_vertex_emulator import PARENT, sync_client, wait_state
from tests.integration.test_vertex_emulator import make_job as vertex_job

BUCKET = "caliban-outputs"
PLACE = OutputPlace("gcs", bucket=BUCKET, prefix="caliban")
USER_IMAGE = "caliban-tests/busybox-as-user:1"
# What a job writes, as a shell line: its metrics where caliban looks for them.
WRITE_METRICS = (
    'mkdir -p "$CALIBAN_OUTPUT_DIR" && echo \'{"acc": 0.9}\' > "$CALIBAN_OUTPUT_DIR/metrics.json"'
)


@pytest.fixture
def emu(tmp_path):
    with StorageEmulator(tmp_path / "buckets") as emulator:
        (emulator.root / BUCKET).mkdir()
        yield emulator


@pytest.fixture
def env(emu, monkeypatch) -> Path:
    """The process reaches the emulator as caliban does; returns the trusted key."""
    key = emu.new_key()
    for name, value in emu.client_env(key).items():
        monkeypatch.setenv(name, value)
    return key


def write(root: Path, name: str, text: str) -> None:
    path = root / BUCKET / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_real_client_lists_pages_uploads_downloads_and_deletes(emu, env, tmp_path) -> None:
    names = sorted(f"many/{i:05d}.txt" for i in range(1050))
    for name in names:
        write(emu.root, name, name)
    write(emu.root, "other/a.txt", "a")
    # Exactly what a user's code does with a key file: an OAuth token from the key's
    # token_uri (this emulator), then JSON API calls with it.
    client = storage.Client(client_options={"api_endpoint": emu.url})
    assert client.get_bucket(BUCKET).name == BUCKET
    assert emu.calls()["token"] == 1
    emu.reset_calls()
    assert [b.name for b in client.list_blobs(BUCKET, prefix="many/")] == names
    assert emu.calls()["objects.list"] == 2  # 1,000 a page
    listing = client.list_blobs(BUCKET, delimiter="/")
    assert list(listing) == [] and listing.prefixes == {"many/", "other/"}
    page = client.list_blobs(BUCKET, prefix="many/", max_results=3, fields="items(name)")
    assert [b.name for b in page] == names[:3]

    bucket = client.bucket(BUCKET)
    bucket.blob("up/small.txt").upload_from_string("hello")  # multipart
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 2400)  # 600 KiB in 256 KiB chunks: resumable
    blob = bucket.blob("up/big.bin", chunk_size=256 * 1024)
    blob.upload_from_filename(str(big))
    assert (emu.root / BUCKET / "up/big.bin").read_bytes() == big.read_bytes()
    assert bucket.blob("up/small.txt").download_as_text() == "hello"
    assert bucket.get_blob("up/big.bin").size == big.stat().st_size
    bucket.blob("up/small.txt").delete()
    assert not bucket.blob("up/small.txt").exists()
    with pytest.raises(NotFound, match="bucket does not exist"):
        client.get_bucket("no-such-bucket")
    assert emu.calls()["token"] == 0  # the one token, reused


def test_a_key_it_does_not_trust_is_refused(emu, env) -> None:
    stranger = emu.new_key(trusted=False)
    client = storage.Client.from_service_account_json(
        str(stranger), client_options={"api_endpoint": emu.url}
    )
    with pytest.raises(RefreshError, match="invalid_grant"):
        client.get_bucket(BUCKET)
    with pytest.raises(CalibanError) as err:
        gcs.read_metrics(PLACE, ["g/a/1"], credentials_file=str(stranger))
    assert str(err.value).startswith(f"cannot read metrics from gs://{BUCKET}: credentials refused")
    assert "\n" not in str(err.value)


def test_a_missing_bucket_is_one_line(emu, env) -> None:
    place = OutputPlace("gcs", bucket="no-such-bucket", prefix="caliban")
    for call in (lambda: gcs.read_metrics(place, ["g/a/1"]),
                 lambda: gcs.copy_folder(place, "g/a/1", Path("/nonexistent"))):  # fmt: skip
        with pytest.raises(CalibanError) as err:
            call()
        assert "gs://no-such-bucket: the bucket does not exist (404)" in str(err.value)
        assert "\n" not in str(err.value)


def test_metrics_of_1200_jobs_in_a_few_list_pages(emu, env) -> None:
    emu.latency = 0.02
    folders = [job_folder("sweep", f"caliban_me_{i}", "0123456789abcdef", 1) for i in range(1200)]
    expected, files = {}, 0
    for i, folder in enumerate(folders):
        prefix = PLACE.object_prefix(folder)
        if i % 10 == 0:
            write(emu.root, prefix + "checkpoint/model.bin", "weights")  # never read
        kind = i % 5
        if kind in (0, 2):
            series = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]
            write(emu.root, prefix + "metrics.jsonl", "".join(json.dumps(s) + "\n" for s in series))
            expected[folder] = {"step": 2, "loss": 1.0}
            files += 1
        if kind in (1, 2):  # the object wins over the series
            write(emu.root, prefix + "metrics.json", json.dumps({"loss": 0.5, "acc": i}))
            expected[folder] = {**expected.get(folder, {}), "loss": 0.5, "acc": i}
            files += 1
        if kind == 3:  # caught half-written: no metrics yet
            write(emu.root, prefix + "metrics.json", '{"loss": 0.')
            expected[folder] = {}
            files += 1
    emu.reset_calls()
    assert gcs.read_metrics(PLACE, folders) == expected
    calls = emu.calls()
    assert calls["objects.list"] == math.ceil(files / 1000)  # not a call per job
    assert calls["objects.media"] == files and calls["objects.get"] == 0
    assert gcs.read_metrics(PLACE, []) == {}


def test_copy_folder_keeps_the_layout(emu, env, tmp_path) -> None:
    folder = job_folder("g", "caliban_me_1", "feedface00", 2)
    prefix = PLACE.object_prefix(folder)
    files = {"metrics.json": '{"a": 1}', "ckpt/step-1/model.bin": "m1", "logs/events": "e"}
    for name, text in files.items():
        write(emu.root, prefix + name, text)
    write(emu.root, PLACE.object_prefix(folder.replace("/2", "/1")) + "other.txt", "no")
    dest = tmp_path / "pulled"
    assert gcs.copy_folder(PLACE, folder, dest, credentials_file=str(env)) == len(files)
    got = {p.relative_to(dest).as_posix(): p.read_text() for p in dest.rglob("*") if p.is_file()}
    assert got == files
    assert gcs.copy_folder(PLACE, "g/nothing/1", tmp_path / "empty") == 0


@pytest.fixture(scope="module")
def user_image(docker_client) -> str:
    """busybox that runs as an ordinary user, as caliban's images run as the invoking user."""
    dockerfile = f"FROM {engine.BUSYBOX_IMAGE}\nUSER 4321:4321\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=USER_IMAGE, rm=True)
    return USER_IMAGE


def test_a_vertex_job_writes_its_metrics_into_the_bucket(emu, env, user_image) -> None:
    folder = job_folder("vx", "caliban_me_1", "abcdef0123", 1)
    base = PLACE.uri(folder)
    check = (
        f'test "$AIP_MODEL_DIR" = "{base}/model/" && test "$AIP_CHECKPOINT_DIR" = '
        f'"{base}/checkpoints/" && test "$AIP_TENSORBOARD_LOG_DIR" = "{base}/logs/"'
    )
    with VertexEmulator(run_containers=True, workers=1, buckets=emu.root) as vertex:
        client = sync_client(vertex)
        script = f"{check} && {WRITE_METRICS}"
        job = vertex_job(image=user_image, command=["sh", "-c"], args=[script],
                         env={"CALIBAN_OUTPUT_DIR": PLACE.container_dir(folder)})  # fmt: skip
        job.job_spec.base_output_directory = v1.GcsDestination(output_uri_prefix=base)
        done = wait_state(client, client.create_custom_job(parent=PARENT, custom_job=job).name,
                          v1.JobState.JOB_STATE_SUCCEEDED, v1.JobState.JOB_STATE_FAILED,
                          timeout=60)  # fmt: skip
        assert done.state == v1.JobState.JOB_STATE_SUCCEEDED, done.error.message
        bad = vertex_job(image=user_image)
        bad.job_spec.base_output_directory = v1.GcsDestination(output_uri_prefix="/tmp/out")
        with pytest.raises(Exception, match="must be a Cloud Storage URI starting with gs://"):
            client.create_custom_job(parent=PARENT, custom_job=bad)
    assert gcs.read_metrics(PLACE, [folder]) == {folder: {"acc": 0.9}}


def test_kubernetes_pods_write_into_a_gcsfuse_bucket_and_a_claim(emu, env, user_image, tmp_path):
    folder = job_folder("kx", "caliban_me_1", "abcdef0123", 1)
    with K8sEmulator(run_containers=True, workers=2, buckets=emu.root,
                     pvcs=tmp_path / "pvcs") as cluster:  # fmt: skip
        kube = Kube(cluster, cluster.write_kubeconfig(tmp_path / "kubeconfig"))

        def job(name: str, volume: k8s.V1Volume, output: str, at: str, sub=None, annotate=True):
            spec = k8s_job(name, image=user_image, command=["sh", "-c", WRITE_METRICS],
                           env={"CALIBAN_OUTPUT_DIR": output})  # fmt: skip
            template = spec.spec.template
            if annotate:
                template.metadata.annotations = {"gke-gcsfuse/volumes": "true"}
            template.spec.volumes = [volume]
            mount = k8s.V1VolumeMount(name=volume.name, mount_path=at, sub_path=sub)
            template.spec.containers[0].volume_mounts = [mount]
            return spec

        bucket = k8s.V1Volume(name="outputs", csi=k8s.V1CSIVolumeSource(
            driver=GCSFUSE_CSI_DRIVER, volume_attributes={"bucketName": BUCKET}))  # fmt: skip
        claim = k8s.V1Volume(name="outputs", persistent_volume_claim=(
            k8s.V1PersistentVolumeClaimVolumeSource(claim_name="results")))  # fmt: skip
        gcs_dir = PLACE.container_dir(folder)  # /gcs/BUCKET/caliban/kx/...
        at = f"/gcs/{BUCKET}"  # where caliban mounts a bucket, as Vertex does
        kube.create(job("on-gcs", bucket, gcs_dir, at))
        kube.create(job("on-pvc", claim, "/caliban/output", "/caliban/output", sub=folder))
        kube.create(job("no-sidecar", bucket, gcs_dir, at, annotate=False))
        for name in ("on-gcs", "on-pvc"):
            done = kube.wait_condition(name, "Complete", "Failed", timeout=60)
            assert done.status.succeeded == 1, name

        def waiting():
            pods = kube.pods("no-sidecar")
            statuses = pods and pods[0].status.container_statuses
            return statuses and statuses[0].state.waiting and statuses[0].state.waiting.message

        assert "failed to find the sidecar container" in wait_for(waiting, timeout=30)
        wrong = job("bad-mount", bucket, gcs_dir, at)
        wrong.spec.template.spec.containers[0].volume_mounts[0].name = "nope"
        with pytest.raises(ApiException) as refused:
            kube.create(wrong)
        assert refused.value.status == 422 and "volumeMounts[0].name" in refused.value.body
        kube.api.close()
    assert (tmp_path / "pvcs/results" / folder / "metrics.json").read_text().strip()
    assert gcs.read_metrics(PLACE, [folder]) == {folder: {"acc": 0.9}}
