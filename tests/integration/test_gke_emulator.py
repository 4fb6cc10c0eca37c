"""devtools.gke_emulator through the real container_v1 ClusterManagerClient over real gRPC."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import container_v1 as v1
from google.cloud.container_v1.services.cluster_manager.transports.grpc import (
    ClusterManagerGrpcTransport,
)

from devtools.gke_emulator import GkeEmulator
from tests.conftest import wait_for
from tests.integration.test_vertex_emulator import client_auth

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "emu-project"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
CS = v1.Cluster.Status
OS = v1.Operation.Status
QUOTA = {"cpu": 100, "memory": 400, "nvidia-tesla-t4": 8, "nvidia-tesla-v100": 4}


def limits(**maxima: int | tuple[int, int]) -> list[v1.ResourceLimit]:
    """ResourceLimits from keyword maxima (or (min, max)); `nvidia_tesla_t4` -> nvidia-tesla-t4."""
    out = []
    for kind, value in maxima.items():
        low, high = value if isinstance(value, tuple) else (0, value)
        out.append(
            v1.ResourceLimit(resource_type=kind.replace("_", "-"), minimum=low, maximum=high)
        )
    return out


def make_cluster(name: str = "emu-cluster", *, gpus: dict[str, int] | None = None, **kw):
    """A cluster with node autoprovisioning (cpu, memory and optional GPU maxima)."""
    resource_limits = limits(cpu=64, memory=256, **(gpus or {}))
    kw.setdefault("initial_node_count", 1)
    return v1.Cluster(
        name=name,
        autoscaling=v1.ClusterAutoscaling(
            enable_node_autoprovisioning=True, resource_limits=resource_limits
        ),
        **kw,
    )


def op_path(op: v1.Operation, project: str = PROJECT) -> str:
    return f"projects/{project}/locations/{op.location}/operations/{op.name}"


def wait_done(client, op: v1.Operation, timeout: float = 10.0) -> v1.Operation:
    def check():
        current = client.get_operation(name=op_path(op))
        return current if current.status == OS.DONE else None

    return wait_for(check, timeout=timeout, interval=0.02)


@pytest.fixture
def emu():
    with GkeEmulator(op_seconds=0.2, quota=QUOTA) as emulator:
        yield emulator


def tls_client(emu: GkeEmulator, endpoint: str | None = None) -> v1.ClusterManagerClient:
    """Over TLS (the emulator's CA), with a service-account key it trusts."""
    auth = client_auth(endpoint or emu.endpoint, emu.new_key(), emu.ca_pem)
    return v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(**auth))


@pytest.fixture
def client(emu):
    made = tls_client(emu)
    yield made
    made.transport.close()


def test_a_call_without_a_trusted_key_is_refused(emu) -> None:
    stranger = GkeEmulator()  # its keys are not `emu`'s
    auth = client_auth(emu.endpoint, stranger.new_key(), emu.ca_pem)
    client = v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(**auth))
    with pytest.raises(exceptions.Unauthenticated):
        client.list_clusters(parent=PARENT)
    assert emu.calls()["ListClusters"] == 1  # counted, and refused before any work


def create(client, cluster: v1.Cluster, parent: str = PARENT) -> v1.Operation:
    return client.create_cluster(parent=parent, cluster=cluster)


# --------------------------------------------------------------------------- lifecycle


def test_create_with_gpu_autoprovisioning_and_release_channel(emu, client) -> None:
    emu.hold()
    cluster = make_cluster(
        gpus={"nvidia_tesla_t4": 8, "nvidia_l4": (1, 4)},
        release_channel=v1.ReleaseChannel(channel=v1.ReleaseChannel.Channel.RAPID),
    )
    op = create(client, cluster)
    assert op.operation_type == v1.Operation.Type.CREATE_CLUSTER
    assert op.status == OS.RUNNING
    assert op.target_link.endswith(f"{PARENT}/clusters/emu-cluster")

    name = f"{PARENT}/clusters/emu-cluster"
    provisioning = client.get_cluster(name=name)
    assert provisioning.status == CS.PROVISIONING
    assert [p.status for p in provisioning.node_pools] == [v1.NodePool.Status.PROVISIONING]

    emu.hold(False)
    assert wait_done(client, op).end_time
    got = client.get_cluster(name=name)
    assert got.status == CS.RUNNING
    assert got.location == REGION
    assert got.locations == [f"{REGION}-a", f"{REGION}-b", f"{REGION}-c"]
    assert got.self_link == f"https://container.googleapis.com/v1/{name}"
    assert got.endpoint.count(".") == 3
    assert got.current_master_version.startswith("1.") and "-gke." in got.current_master_version
    assert got.release_channel.channel == v1.ReleaseChannel.Channel.RAPID
    assert dt.datetime.fromisoformat(got.create_time).tzinfo is not None
    assert [p.name for p in got.node_pools] == ["default-pool"]
    assert got.node_pools[0].initial_node_count == 1
    assert got.node_pools[0].status == v1.NodePool.Status.RUNNING
    assert got.current_node_count == 3  # one node in each of the region's three zones
    assert got.autoscaling.enable_node_autoprovisioning
    assert {(r.resource_type, r.minimum, r.maximum) for r in got.autoscaling.resource_limits} == {
        ("cpu", 0, 64),
        ("memory", 0, 256),
        ("nvidia-tesla-t4", 0, 8),
        ("nvidia-l4", 1, 4),
    }
    assert [c.name for c in emu.clusters()] == ["emu-cluster"]


def test_operation_lasts_op_seconds(emu, client) -> None:
    emu.op_seconds = 0.3
    began = time.monotonic()
    op = create(client, make_cluster())
    wait_done(client, op)
    assert time.monotonic() - began >= 0.3
    listed = client.list_operations(parent=PARENT).operations
    assert [(o.name, o.status) for o in listed] == [(op.name, OS.DONE)]


def test_default_release_channel_and_explicit_node_pools(emu, client) -> None:
    pools = [
        v1.NodePool(name="cpu", initial_node_count=2),
        v1.NodePool(
            name="gpu", initial_node_count=1, config=v1.NodeConfig(machine_type="n1-standard-8")
        ),
    ]
    op = create(client, v1.Cluster(name="pools", node_pools=pools, locations=["us-central1-b"]))
    wait_done(client, op)
    got = client.get_cluster(name=f"{PARENT}/clusters/pools")
    assert got.release_channel.channel == v1.ReleaseChannel.Channel.REGULAR
    assert [(p.name, p.config.machine_type) for p in got.node_pools] == [
        ("cpu", "e2-medium"),
        ("gpu", "n1-standard-8"),
    ]
    assert got.current_node_count == 3
    assert not got.autoscaling.enable_node_autoprovisioning


def test_legacy_project_and_zone_fields(emu, client) -> None:
    zone = "us-central1-a"
    op = client.create_cluster(project_id=PROJECT, zone=zone, cluster=make_cluster("zonal"))
    assert op.zone == zone
    done = client.get_operation(project_id=PROJECT, zone=zone, operation_id=op.name)
    assert done.name == op.name
    wait_done(client, op)
    got = client.get_cluster(project_id=PROJECT, zone=zone, cluster_id="zonal")
    assert (got.location, list(got.locations), got.current_node_count) == (zone, [zone], 1)
    listed = client.list_clusters(project_id=PROJECT, zone="-").clusters
    assert [c.name for c in listed] == ["zonal"]


def test_list_by_location_and_all_locations(emu, client) -> None:
    create(client, make_cluster("central"))
    create(client, make_cluster("east"), parent=f"projects/{PROJECT}/locations/us-east1")
    create(client, make_cluster("zonal"), parent=f"projects/{PROJECT}/locations/us-central1-f")
    create(client, make_cluster("other"), parent=f"projects/other-project/locations/{REGION}")

    def names(parent: str) -> list[str]:
        return [c.name for c in client.list_clusters(parent=parent).clusters]

    assert names(PARENT) == ["central"]
    assert names(f"projects/{PROJECT}/locations/us-east1") == ["east"]
    assert names(f"projects/{PROJECT}/locations/-") == ["central", "east", "zonal"]
    assert names("projects/other-project/locations/-") == ["other"]
    assert names("projects/nobody/locations/-") == []
    ops = client.list_operations(parent=f"projects/{PROJECT}/locations/-").operations
    assert len(ops) == 3


def test_delete(emu, client) -> None:
    wait_done(client, create(client, make_cluster()))
    name = f"{PARENT}/clusters/emu-cluster"
    emu.hold()
    op = client.delete_cluster(name=name)
    assert (op.operation_type, op.status) == (v1.Operation.Type.DELETE_CLUSTER, OS.RUNNING)
    assert client.get_cluster(name=name).status == CS.STOPPING
    with pytest.raises(exceptions.FailedPrecondition, match="currently deleting"):
        client.delete_cluster(name=name)

    emu.hold(False)
    wait_done(client, op)
    with pytest.raises(exceptions.NotFound, match="Not found"):
        client.get_cluster(name=name)
    assert client.list_clusters(parent=PARENT).clusters == []
    assert emu.clusters() == []


def test_delete_while_provisioning_is_refused(emu, client) -> None:
    emu.hold()
    create(client, make_cluster())
    with pytest.raises(exceptions.FailedPrecondition, match="currently creating cluster"):
        client.delete_cluster(name=f"{PARENT}/clusters/emu-cluster")
    assert emu.clusters()[0].status == CS.PROVISIONING


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "name",
    ["", "Upper", "1starts-with-digit", "ends-with-hyphen-", "under_score", "a" * 41, "dot.ted"],
)
def test_bad_cluster_names_are_invalid(client, name) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=r"[Cc]luster\.name"):
        create(client, make_cluster(name))
    assert client.list_clusters(parent=PARENT).clusters == []


def test_forty_character_name_is_accepted(client) -> None:
    op = create(client, make_cluster("a" * 40))
    assert op.target_link.endswith("a" * 40)


def test_duplicate_name_already_exists(emu, client) -> None:
    create(client, make_cluster("dup"))
    with pytest.raises(exceptions.AlreadyExists, match=f"{PARENT}/clusters/dup"):
        create(client, make_cluster("dup"))
    # The same name elsewhere is a different cluster.
    create(client, make_cluster("dup"), parent=f"projects/{PROJECT}/locations/europe-west4")
    assert len(emu.clusters()) == 2


def test_unknown_cluster_and_operation_are_not_found(client) -> None:
    with pytest.raises(exceptions.NotFound):
        client.get_cluster(name=f"{PARENT}/clusters/ghost")
    with pytest.raises(exceptions.NotFound):
        client.delete_cluster(name=f"{PARENT}/clusters/ghost")
    with pytest.raises(exceptions.NotFound):
        client.get_operation(name=f"{PARENT}/operations/operation-0-deadbeef")


def test_operation_is_scoped_to_its_location(client) -> None:
    op = create(client, make_cluster())
    with pytest.raises(exceptions.NotFound):
        client.get_operation(name=f"projects/{PROJECT}/locations/us-east1/operations/{op.name}")


@pytest.mark.parametrize(
    ("cluster", "needle"),
    [
        (make_cluster(gpus={"nvidia_tesla_t4": (4, 2)}), r"minimum \(4\) is greater than maximum"),
        (make_cluster(gpus={"cpu_x": 1}), "resource_type"),
        (
            v1.Cluster(
                name="nap",
                initial_node_count=1,
                autoscaling=v1.ClusterAutoscaling(
                    enable_node_autoprovisioning=True, resource_limits=limits(nvidia_l4=2)
                ),
            ),
            "cpu and memory",
        ),
        (v1.Cluster(name="no-nodes"), "initial_node_count must be greater than zero"),
        (make_cluster(locations=["europe-west4-a"]), "is not a zone in us-central1"),
    ],
    ids=["min-over-max", "unknown-resource", "nap-without-cpu-memory", "no-nodes", "bad-zone"],
)
def test_invalid_clusters(client, cluster, needle) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=needle):
        create(client, cluster)


def test_invalid_parent_and_location(client) -> None:
    with pytest.raises(exceptions.InvalidArgument, match="parent"):
        create(client, make_cluster(), parent="projects/p/regions/us-central1")
    with pytest.raises(exceptions.InvalidArgument, match="not a valid GKE region"):
        create(client, make_cluster(), parent="projects/p/locations/-")
    with pytest.raises(exceptions.InvalidArgument, match="name must be"):
        client.get_cluster(name="clusters/x")


def test_limits_over_quota_are_refused(emu, client) -> None:
    with pytest.raises(exceptions.FailedPrecondition, match=r'"nvidia-tesla-t4".*quota of 8'):
        create(client, make_cluster(gpus={"nvidia_tesla_t4": 9}))
    with pytest.raises(exceptions.FailedPrecondition, match=r'"cpu".*quota of 100'):
        autoscaling = v1.ClusterAutoscaling(
            enable_node_autoprovisioning=True, resource_limits=limits(cpu=101, memory=10)
        )
        create(client, v1.Cluster(name="big", initial_node_count=1, autoscaling=autoscaling))
    assert emu.clusters() == []
    # Exactly at quota is fine, and types without a quota entry are unlimited.
    create(client, make_cluster(gpus={"nvidia_tesla_t4": 8, "nvidia_h100_80gb": 64}))
    assert len(emu.clusters()) == 1


# --------------------------------------------------------------------------- faults


def test_injected_unavailable_is_service_unavailable(emu, client) -> None:
    emu.error_rate = 1.0
    with pytest.raises(exceptions.ServiceUnavailable, match="injected UNAVAILABLE"):
        create(client, make_cluster())
    # GetCluster retries UNAVAILABLE by default; with retry=None the first failure surfaces.
    with pytest.raises(exceptions.ServiceUnavailable):
        client.get_cluster(name=f"{PARENT}/clusters/emu-cluster", retry=None)
    assert emu.clusters() == []
    assert emu.calls()["CreateCluster"] == 1
    assert emu.calls()["GetCluster"] == 1

    emu.methods_with_errors = {"GetCluster"}
    create(client, make_cluster())  # only GetCluster fails now
    emu.error_rate = 0.0
    assert client.get_cluster(name=f"{PARENT}/clusters/emu-cluster").name == "emu-cluster"
    assert emu.calls() == {"CreateCluster": 2, "GetCluster": 2}


def test_default_retry_rides_out_partial_unavailability(emu, client) -> None:
    create(client, make_cluster())
    emu.methods_with_errors, emu.error_rate = {"GetCluster"}, 0.5
    for _ in range(5):
        assert client.get_cluster(name=f"{PARENT}/clusters/emu-cluster").name == "emu-cluster"
    assert emu.calls()["GetCluster"] > 5  # some attempts failed and were retried


def test_latency_is_added_to_each_call(emu, client) -> None:
    emu.latency = 0.25
    began = time.monotonic()
    client.list_clusters(parent=PARENT)
    assert time.monotonic() - began >= 0.25
    emu.latency = 0.0


def test_command_line_server() -> None:
    command = [sys.executable, "-m", "devtools.gke_emulator", "--port", "0"]
    command += ["--op-seconds", "0.05", "--quota", "nvidia-tesla-t4=2"]
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = proc.stdout.readline().strip()
        assert endpoint.startswith("127.0.0.1:")
        env = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(3))
        key = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
        ca = Path(env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"]).read_bytes()
        auth = client_auth(endpoint, key, ca)
        client = v1.ClusterManagerClient(transport=ClusterManagerGrpcTransport(**auth))
        with pytest.raises(exceptions.FailedPrecondition):
            create(client, make_cluster(gpus={"nvidia_tesla_t4": 3}))
        wait_done(client, create(client, make_cluster("cli")))
        assert client.get_cluster(name=f"{PARENT}/clusters/cli").status == CS.RUNNING
        client.transport.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
