"""devtools.vertex_emulator through the real aiplatform_v1 clients over real gRPC, and (for
container jobs) the real local dockerd and registry from devtools.engine."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1 as v1
from google.cloud.aiplatform_v1.services.job_service.transports.grpc import (
    JobServiceGrpcTransport,
)
from google.cloud.aiplatform_v1.services.job_service.transports.grpc_asyncio import (
    JobServiceGrpcAsyncIOTransport,
)
from google.oauth2 import service_account
from google.protobuf import empty_pb2

from devtools import engine, vertex_quota
from devtools.vertex_emulator import CONTAINER_JOB_LABEL, VertexEmulator
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
PARENT = "projects/emu-project/locations/us-central1"
S = v1.JobState


def make_job(
    key: str | None = None,
    *,
    image: str = "127.0.0.1:5000/caliban/demo:abc123",
    command: list[str] | None = None,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    timeout: float | None = None,
    display_name: str = "emu-test",
) -> v1.CustomJob:
    all_labels = dict(labels or {})
    if key is not None:
        all_labels["caliban_job_key"] = key
    return v1.CustomJob(
        display_name=display_name,
        labels=all_labels,
        job_spec=v1.CustomJobSpec(
            worker_pool_specs=[
                v1.WorkerPoolSpec(
                    machine_spec=v1.MachineSpec(machine_type="n1-standard-4"),
                    replica_count=1,
                    container_spec=v1.ContainerSpec(
                        image_uri=image,
                        command=command or [],
                        args=args or [],
                        env=[v1.EnvVar(name=k, value=v) for k, v in (env or {}).items()],
                    ),
                )
            ],
            scheduling=v1.Scheduling(timeout=timedelta(seconds=timeout)) if timeout else None,
        ),
    )


def client_auth(endpoint: str, key: Path, ca: bytes) -> dict:
    """Transport arguments: a key the emulator trusts, and its CA passed explicitly (this
    process may have made TLS connections before, so $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH is no
    use here; tests/integration/test_vertex_emulator_auth.py covers that path)."""
    credentials = service_account.Credentials.from_service_account_file(
        str(key), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    tls = grpc.ssl_channel_credentials(ca)
    # always_use_jwt_access: the client sets it, a bare transport does not (it would fetch an
    # OAuth token from oauth2.googleapis.com instead).
    return {
        "host": endpoint,
        "credentials": credentials,
        "ssl_channel_credentials": tls,
        "always_use_jwt_access": True,
    }


def sync_client(emu: VertexEmulator) -> v1.JobServiceClient:
    auth = client_auth(emu.endpoint, emu.new_key(), emu.ca_pem)
    return v1.JobServiceClient(transport=JobServiceGrpcTransport(**auth))


def async_client(emu: VertexEmulator) -> v1.JobServiceAsyncClient:
    auth = client_auth(emu.endpoint, emu.new_key(), emu.ca_pem)
    return v1.JobServiceAsyncClient(transport=JobServiceGrpcAsyncIOTransport(**auth))


def wait_state(client, name: str, *states: S, timeout: float = 20.0) -> v1.CustomJob:
    def check():
        job = client.get_custom_job(name=name)
        return job if job.state in states else None

    return wait_for(check, timeout=timeout, interval=0.02)


@pytest.fixture
def emu():
    with VertexEmulator(run_containers=False, sim_step=0.05) as emulator:
        yield emulator


@pytest.fixture
def client(emu):
    return sync_client(emu)


# --------------------------------------------------------------------------- simulated mode


def test_create_get_and_simulated_lifecycle(emu, client) -> None:
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("k1"))
    assert job.name.startswith(PARENT + "/customJobs/")
    assert job.name.rsplit("/", 1)[1].isdigit()
    assert job.state == S.JOB_STATE_QUEUED
    assert job.create_time and job.update_time
    assert job.labels["caliban_job_key"] == "k1"

    done = wait_state(client, job.name, S.JOB_STATE_SUCCEEDED)
    assert done.start_time and done.end_time >= done.start_time
    assert emu.creates_by_key() == {"k1": 1}
    assert emu.duplicates() == 0
    assert len(emu.create_times()) == 1

    with pytest.raises(exceptions.NotFound):
        client.get_custom_job(name=f"{PARENT}/customJobs/1")


def test_forced_outcome_hold_and_finish(emu, client) -> None:
    emu.set_outcome("bad", "JOB_STATE_FAILED")
    bad = client.create_custom_job(parent=PARENT, custom_job=make_job("bad"))
    failed = wait_state(client, bad.name, S.JOB_STATE_FAILED, S.JOB_STATE_SUCCEEDED)
    assert failed.state == S.JOB_STATE_FAILED and failed.error.message

    emu.hold(True)
    held = client.create_custom_job(parent=PARENT, custom_job=make_job("held"))
    wait_state(client, held.name, S.JOB_STATE_RUNNING)
    time.sleep(emu.sim_step * 4)  # several steps pass: a held job must not move on
    assert client.get_custom_job(name=held.name).state == S.JOB_STATE_RUNNING
    emu.hold(False)
    wait_state(client, held.name, S.JOB_STATE_SUCCEEDED)

    quiet = client.create_custom_job(parent=PARENT, custom_job=make_job("quiet"))
    emu.finish(quiet.name, "JOB_STATE_CANCELLED")
    assert client.get_custom_job(name=quiet.name).state == S.JOB_STATE_CANCELLED


def test_list_filters_and_paging_over_260_jobs() -> None:
    with VertexEmulator(run_containers=False, sim_step=3600) as emu:  # jobs stay QUEUED
        client = sync_client(emu)
        names = [
            client.create_custom_job(
                parent=PARENT,
                custom_job=make_job(f"job-{i}", labels={"group": "even" if i % 2 else "odd"}),
            ).name
            for i in range(260)
        ]
        other = "projects/emu-project/locations/europe-west4"
        client.create_custom_job(parent=other, custom_job=make_job("elsewhere"))
        emu.finish(names[0], "JOB_STATE_FAILED")
        emu.finish(names[1], "JOB_STATE_CANCELLED")
        emu.finish(names[2], "JOB_STATE_SUCCEEDED")

        before = emu.calls()["ListCustomJobs"]
        listed = [
            j.name for j in client.list_custom_jobs(request={"parent": PARENT, "page_size": 100})
        ]
        assert listed == names  # every page, create order, only this parent
        assert emu.calls()["ListCustomJobs"] - before == 3

        def names_for(filter_: str, page_size: int = 100) -> list[str]:
            request = {"parent": PARENT, "filter": filter_, "page_size": page_size}
            return [j.name for j in client.list_custom_jobs(request=request)]

        assert names_for('labels.group="odd"') == names[0::2]
        assert names_for("labels.group=even") == names[1::2]
        assert names_for('labels.caliban_job_key="job-7"') == [names[7]]
        assert names_for("labels.caliban_job_key=nope") == []
        assert names_for("state=JOB_STATE_FAILED") == [names[0]]
        assert names_for("state!=JOB_STATE_QUEUED") == names[:3]
        assert names_for("(state=JOB_STATE_FAILED OR state=JOB_STATE_SUCCEEDED)") == [
            names[0],
            names[2],
        ]
        assert names_for('labels.group="odd" AND state!=JOB_STATE_QUEUED') == [names[0], names[2]]
        assert names_for('labels.group="even" and state=JOB_STATE_CANCELLED', 1) == [names[1]]

        # page_size above the maximum is clamped, not refused
        page = client.list_custom_jobs(request={"parent": PARENT, "page_size": 5000}).pages
        first = next(iter(page))
        assert len(first.custom_jobs) == 260 and first.next_page_token == ""

        for bad in ("labels.group~odd", "state=JOB_STATE_NOPE", "(labels.a=b OR state=X)"):
            with pytest.raises(exceptions.InvalidArgument):
                names_for(bad)
        with pytest.raises(exceptions.InvalidArgument):
            list(client.list_custom_jobs(request={"parent": PARENT, "page_token": "garbage!"}))


def test_cancel(emu, client) -> None:
    emu.hold(True)
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("c1"))
    wait_state(client, job.name, S.JOB_STATE_RUNNING)
    client.cancel_custom_job(name=job.name)
    assert client.get_custom_job(name=job.name).state in (
        S.JOB_STATE_CANCELLING,
        S.JOB_STATE_CANCELLED,
    )
    done = wait_state(client, job.name, S.JOB_STATE_CANCELLED)
    assert done.end_time
    with pytest.raises(exceptions.FailedPrecondition):
        client.cancel_custom_job(name=job.name)
    with pytest.raises(exceptions.NotFound):
        client.cancel_custom_job(name=f"{PARENT}/customJobs/2")


def test_delete(emu, client) -> None:
    emu.hold(True)
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("d1"))
    wait_state(client, job.name, S.JOB_STATE_RUNNING)
    with pytest.raises(exceptions.FailedPrecondition):
        client.delete_custom_job(name=job.name)
    emu.hold(False)
    wait_state(client, job.name, S.JOB_STATE_SUCCEEDED)

    operation = client.delete_custom_job(name=job.name)
    assert operation.done()
    assert operation.result(timeout=5) == empty_pb2.Empty()
    assert isinstance(operation.metadata, v1.DeleteOperationMetadata)
    with pytest.raises(exceptions.NotFound):
        client.get_custom_job(name=job.name)
    with pytest.raises(exceptions.NotFound):
        client.delete_custom_job(name=job.name)
    assert emu.jobs() == []


@pytest.mark.parametrize(
    ("job", "needle"),
    [
        (make_job("ok", labels={"Bad": "x"}), "Bad"),
        (make_job("ok", labels={"owner": "Alice"}), "owner"),
        (make_job("ok", labels={"1st": "x"}), "1st"),
        (make_job("ok", labels={"v": "x" * 64}), "'v'"),
        (make_job("ok", labels={f"l{i}": "x" for i in range(64)}), "64 labels"),
        (make_job("ok", display_name=""), "display_name"),
        (make_job("ok", display_name="n" * 129), "display_name"),
        (make_job("ok", image=""), "image_uri"),
        (v1.CustomJob(display_name="no-pools"), "worker_pool_specs"),
    ],
)
def test_invalid_create_is_refused(emu, client, job, needle) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=needle):
        client.create_custom_job(parent=PARENT, custom_job=job)
    assert emu.jobs() == [] and emu.create_times() == []


def test_invalid_parent_and_name(client) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_custom_job(parent="projects/p", custom_job=make_job("x"))
    with pytest.raises(exceptions.InvalidArgument):
        client.get_custom_job(name="customJobs/1")


# --------------------------------------------------------------------------- faults


def test_injected_errors_are_429_and_503(emu, client) -> None:
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("e1"))
    emu.error_rate = 1.0
    seen = set()
    for _ in range(30):
        with pytest.raises((exceptions.ResourceExhausted, exceptions.ServiceUnavailable)) as err:
            client.get_custom_job(name=job.name)
        seen.add(type(err.value))
    assert seen == {exceptions.ResourceExhausted, exceptions.ServiceUnavailable}

    emu.methods_with_errors = {"CreateCustomJob"}
    assert client.get_custom_job(name=job.name).name == job.name
    emu.error_rate = 0.0
    assert emu.calls()["GetCustomJob"] == 31


def test_lost_create_responses_really_create(emu, client) -> None:
    emu.methods_with_errors = {"CreateCustomJob"}
    emu.error_rate, emu.lost_response_rate = 1.0, 1.0
    with pytest.raises((exceptions.ResourceExhausted, exceptions.ServiceUnavailable)):
        client.create_custom_job(parent=PARENT, custom_job=make_job("lost"))
    assert emu.creates_by_key() == {"lost": 1}
    assert [j.labels["caliban_job_key"] for j in emu.jobs()] == ["lost"]

    # An error before the work: nothing is created.
    emu.lost_response_rate = 0.0
    with pytest.raises((exceptions.ResourceExhausted, exceptions.ServiceUnavailable)):
        client.create_custom_job(parent=PARENT, custom_job=make_job("refused"))
    assert "refused" not in emu.creates_by_key()

    # A naive retry of the lost create makes a duplicate, and the emulator sees it.
    emu.error_rate = 0.0
    client.create_custom_job(parent=PARENT, custom_job=make_job("lost"))
    assert emu.creates_by_key() == {"lost": 2}
    assert emu.duplicates() == 1
    assert len(emu.create_times()) == 2


def test_partial_error_rate_is_seeded_and_mixed() -> None:
    def outcomes(seed: int) -> list[str]:
        with VertexEmulator(error_rate=0.5, seed=seed) as emu:
            client = sync_client(emu)
            result = []
            for i in range(40):
                try:
                    client.create_custom_job(parent=PARENT, custom_job=make_job(f"p{i}"))
                    result.append("ok")
                except exceptions.GoogleAPICallError as err:
                    result.append(type(err).__name__)
            return result

    first = outcomes(7)
    assert first == outcomes(7)
    assert 5 < first.count("ok") < 35
    assert {"ResourceExhausted", "ServiceUnavailable"} <= set(first)


def test_crash_and_restart_keep_state(emu, client) -> None:
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("survivor"))
    port = emu.port
    emu.crash()
    with pytest.raises(exceptions.ServiceUnavailable):
        client.get_custom_job(name=job.name)
    emu.restart()
    assert emu.port == port

    def answers():
        try:
            return client.get_custom_job(name=job.name)
        except exceptions.ServiceUnavailable:
            return None  # the channel is still in reconnect backoff

    assert wait_for(answers, timeout=15, interval=0.1).name == job.name
    assert emu.creates_by_key() == {"survivor": 1}


# --------------------------------------------------------------------------- quotas


class FakeClock:
    """The quota windows' clock, moved by hand: no test waits out a minute."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(emu) -> FakeClock:
    emu.clock = FakeClock()
    return emu.clock


def test_submit_quota_refuses_creates_but_not_lists(emu, client, clock) -> None:
    emu.set_quota(submit=3)
    for i in range(3):
        client.create_custom_job(parent=PARENT, custom_job=make_job(f"s{i}"))
    with pytest.raises(exceptions.ResourceExhausted) as err:
        client.create_custom_job(parent=PARENT, custom_job=make_job("over"))
    assert err.value.code == 429  # HTTP's Too Many Requests
    assert err.value.grpc_status_code == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = err.value.message
    assert message.startswith("Quota exceeded for quota metric 'Job or long-running operation")
    assert "per minute per region' of service 'aiplatform.googleapis.com'" in message
    assert "over" not in emu.creates_by_key()

    # Resource management has its own budget, and every other region its own.
    assert len(list(client.list_custom_jobs(parent=PARENT))) == 3
    elsewhere = "projects/emu-project/locations/europe-west4"
    client.create_custom_job(parent=elsewhere, custom_job=make_job("eu"))

    # Refusals spend nothing: after more of them, the window still holds only the 3 accepted.
    clock.now += 30
    for _ in range(5):
        with pytest.raises(exceptions.ResourceExhausted):
            client.create_custom_job(parent=PARENT, custom_job=make_job("over"))
    clock.now += 30  # the first three are 60 s old: out of the window
    for i in range(3):
        client.create_custom_job(parent=PARENT, custom_job=make_job(f"t{i}"))
    with pytest.raises(exceptions.ResourceExhausted):
        client.create_custom_job(parent=PARENT, custom_job=make_job("over"))

    assert emu.refused() == {"CreateCustomJob": 7}
    submits = emu.accepted_times("submit")
    assert submits == [1000.0] * 4 + [1060.0] * 3
    assert vertex_quota.busiest_window(submits) == 4  # the 3 here and the 1 in europe-west4
    assert emu.accepted_times("manage") == [1000.0]  # the list
    assert emu.calls()["CreateCustomJob"] == 14


def test_manage_quota_refuses_gets_lists_cancels_and_deletes(emu, client, clock) -> None:
    emu.hold(True)
    emu.set_quota(manage=4)
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("m1"))
    client.get_custom_job(name=job.name)
    list(client.list_custom_jobs(parent=PARENT))
    client.cancel_custom_job(name=job.name)
    client.get_custom_job(name=job.name)
    for call in (
        lambda: client.get_custom_job(name=job.name),
        lambda: list(client.list_custom_jobs(parent=PARENT)),
        lambda: client.cancel_custom_job(name=job.name),
        lambda: client.delete_custom_job(name=job.name),
    ):
        with pytest.raises(exceptions.ResourceExhausted, match="Resource management"):
            call()
    # Creates have their own budget.
    client.create_custom_job(parent=PARENT, custom_job=make_job("m2"))
    assert emu.refused() == {
        "GetCustomJob": 1,
        "ListCustomJobs": 1,
        "CancelCustomJob": 1,
        "DeleteCustomJob": 1,
    }
    clock.now += 60
    assert client.get_custom_job(name=job.name).name == job.name
    assert len(emu.accepted_times("manage")) == 5


def test_set_quota_changes_take_effect(emu, client, clock) -> None:
    assert emu.quotas() == {"submit": None, "manage": None}
    for i in range(5):
        client.create_custom_job(parent=PARENT, custom_job=make_job(f"u{i}"))
    emu.set_quota(submit=6)  # the 5 made in the last minute count against the new limit
    client.create_custom_job(parent=PARENT, custom_job=make_job("u5"))
    with pytest.raises(exceptions.ResourceExhausted):
        client.create_custom_job(parent=PARENT, custom_job=make_job("u6"))
    emu.set_quota(submit=None)
    client.create_custom_job(parent=PARENT, custom_job=make_job("u6"))

    emu.set_quota(manage=0)
    assert emu.quotas() == {"submit": None, "manage": 0}
    with pytest.raises(exceptions.ResourceExhausted):
        list(client.list_custom_jobs(parent=PARENT))
    emu.set_quota(manage=vertex_quota.parse_rate("10/s"))
    assert emu.quotas()["manage"] == 600
    assert len(list(client.list_custom_jobs(parent=PARENT))) == 7

    with pytest.raises(TypeError):
        emu.set_quota(submits=1)
    with pytest.raises(ValueError):
        emu.set_quota(manage=-1)
    assert emu.refused() == {"CreateCustomJob": 1, "ListCustomJobs": 1}


def test_quota_from_the_constructor_and_rates() -> None:
    clock = FakeClock()
    with VertexEmulator(quota_submit=1, quota_manage=2, clock=clock, sim_step=3600) as emu:
        client = sync_client(emu)
        job = client.create_custom_job(parent=PARENT, custom_job=make_job("c"))
        with pytest.raises(exceptions.ResourceExhausted):
            client.create_custom_job(parent=PARENT, custom_job=make_job("d"))
        client.get_custom_job(name=job.name)
        client.get_custom_job(name=job.name)
        with pytest.raises(exceptions.ResourceExhausted):
            client.get_custom_job(name=job.name)
    assert [vertex_quota.parse_rate(r) for r in ("600/min", "10/s", "1.5/s", "0/min")] == [
        600,
        600,
        90,
        0,
    ]
    for bad in ("600", "10/h", "-1/s", "x/min"):
        with pytest.raises(ValueError):
            vertex_quota.parse_rate(bad)
    assert vertex_quota.busiest_window([0, 10, 59.9, 60, 61, 200]) == 4


# --------------------------------------------------------------------------- preemption


def test_preempt_fails_a_running_job_with_code_14(emu, client) -> None:
    emu.hold(True)
    spot = client.create_custom_job(parent=PARENT, custom_job=make_job("spot"))
    normal = client.create_custom_job(parent=PARENT, custom_job=make_job("normal"))
    assert spot.state == S.JOB_STATE_QUEUED
    assert emu.preempt("spot") == spot.name  # by key; waits for RUNNING
    preempted = client.get_custom_job(name=spot.name)
    assert preempted.state == S.JOB_STATE_FAILED
    assert preempted.error.code == 14  # UNAVAILABLE: infrastructure, retriable
    assert "The replica workerpool0-0 was preempted" in preempted.error.message
    assert "Spot VM preemption" in preempted.error.message
    assert preempted.start_time and preempted.end_time

    emu.hold(False)
    done = wait_state(client, normal.name, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
    assert done.state == S.JOB_STATE_SUCCEEDED and not done.error.message
    assert client.get_custom_job(name=spot.name).state == S.JOB_STATE_FAILED

    with pytest.raises(RuntimeError, match="already ended JOB_STATE_SUCCEEDED"):
        emu.preempt(normal.name)
    with pytest.raises(LookupError):
        emu.preempt("no-such-key")
    emu.hold(True)
    other = client.create_custom_job(parent=PARENT, custom_job=make_job("infra"))
    emu.fail_infrastructure(other.name, "The replica workerpool0-0 lost its VM.")
    failed = client.get_custom_job(name=other.name)
    assert failed.state == S.JOB_STATE_FAILED and failed.error.code == 14
    assert failed.error.message.startswith("The replica workerpool0-0 lost its VM.")


def test_preempt_raises_if_the_job_ends_first(emu, client) -> None:
    emu.hold(True)
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("gone"))
    emu.finish(job.name, "JOB_STATE_CANCELLED")
    with pytest.raises(RuntimeError, match="CANCELLED"):
        emu.preempt(job.name, timeout=30)


# --------------------------------------------------------------------------- async client


def test_async_client_end_to_end(emu) -> None:
    async def scenario() -> None:
        client = async_client(emu)
        emu.hold(True)
        jobs = await asyncio.gather(
            *(
                client.create_custom_job(parent=PARENT, custom_job=make_job(f"a{i}"))
                for i in range(25)
            )
        )
        pager = await client.list_custom_jobs(
            request={"parent": PARENT, "page_size": 10, "filter": "labels.caliban_job_key=a3"}
        )
        assert [j.name async for j in pager] == [jobs[3].name]
        pager = await client.list_custom_jobs(request={"parent": PARENT, "page_size": 10})
        assert sorted([j.name async for j in pager]) == sorted(j.name for j in jobs)

        await client.cancel_custom_job(name=jobs[0].name)
        emu.hold(False)
        deadline = time.monotonic() + 20
        while (await client.get_custom_job(name=jobs[0].name)).state != S.JOB_STATE_CANCELLED:
            assert time.monotonic() < deadline, "job never reached CANCELLED"
            await asyncio.sleep(0.02)
        operation = await client.delete_custom_job(name=jobs[0].name)
        assert await operation.result() == empty_pb2.Empty()
        with pytest.raises(exceptions.NotFound):
            await client.get_custom_job(name=jobs[0].name)
        await client.transport.close()

    asyncio.run(scenario())
    assert emu.duplicates() == 0 and len(emu.creates_by_key()) == 25


def test_500_concurrent_creates_with_50ms_latency() -> None:
    async def submit(emu: VertexEmulator, count: int) -> None:
        client = async_client(emu)
        await asyncio.gather(
            *(
                client.create_custom_job(parent=PARENT, custom_job=make_job(f"q{i}"))
                for i in range(count)
            )
        )
        await client.transport.close()

    with VertexEmulator(latency=0.05, sim_step=3600) as emu:
        start = time.monotonic()
        asyncio.run(submit(emu, 500))
        elapsed = time.monotonic() - start
        times = emu.create_times()
    assert len(times) == 500
    # Served one at a time, two creates would be at least the 0.05 s latency apart. Ten within
    # one latency period means ten RPCs were in the server at once (a busy machine only
    # spreads them further, so this is about concurrency, not speed).
    times.sort()
    in_one_period = max(sum(1 for t in times[i:] if t - times[i] < 0.05) for i in range(len(times)))
    print(f"\n500 creates in {elapsed:.2f} s; at most {in_one_period} within one 0.05 s period")
    assert in_one_period >= 10


def test_command_line_server() -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "devtools.vertex_emulator", "--simulate", "--latency", "0.01"),
            *("--quota-submit", "1/min", "--quota-manage", "10/s"),
        ],
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
        client = v1.JobServiceClient(transport=JobServiceGrpcTransport(**auth))
        job = client.create_custom_job(parent=PARENT, custom_job=make_job("cli"))
        assert client.get_custom_job(name=job.name).labels["caliban_job_key"] == "cli"
        with pytest.raises(exceptions.ResourceExhausted, match="per minute per region"):
            client.create_custom_job(parent=PARENT, custom_job=make_job("cli2"))
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


# --------------------------------------------------------------------------- real containers

IMAGE_REPO = f"{engine.REGISTRY}/emutest/busybox"
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
def container_emu(pushed_image):
    with VertexEmulator(run_containers=True, workers=4) as emulator:
        yield emulator


def test_container_jobs_exit_codes(container_emu, docker_client, pushed_image) -> None:
    client = sync_client(container_emu)
    ok = client.create_custom_job(
        parent=PARENT,
        custom_job=make_job(
            "ok",
            image=pushed_image,
            command=["sh", "-c"],
            args=['test "$GREETING" = hello && echo fine'],
            env={"GREETING": "hello"},
        ),
    )
    bad = client.create_custom_job(
        parent=PARENT,
        custom_job=make_job(
            "bad", image=pushed_image, command=["sh", "-c"], args=["echo about to fail; exit 3"]
        ),
    )
    terminal = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
    ok_done = wait_state(client, ok.name, *terminal, timeout=60)
    bad_done = wait_state(client, bad.name, *terminal, timeout=60)
    assert ok_done.state == S.JOB_STATE_SUCCEEDED, ok_done.error.message
    assert ok_done.start_time and ok_done.end_time
    assert bad_done.state == S.JOB_STATE_FAILED
    assert "exit code 3" in bad_done.error.message
    assert bad_done.error.code == 3
    assert "The replica workerpool0-0 exited with a non-zero status of 3." in bad_done.error.message
    assert "about to fail" in bad_done.error.message
    assert docker_client.images.get(pushed_image)  # pulled from the registry
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{CONTAINER_JOB_LABEL}={bad.name}"}
    )
    assert leftovers == []


def test_container_job_cancel(container_emu, docker_client, pushed_image) -> None:
    client = sync_client(container_emu)
    job = client.create_custom_job(
        parent=PARENT,
        custom_job=make_job("long", image=pushed_image, command=["sleep"], args=["300"]),
    )
    wait_state(client, job.name, S.JOB_STATE_RUNNING, timeout=60)
    selector = {"label": f"{CONTAINER_JOB_LABEL}={job.name}"}
    assert len(docker_client.containers.list(filters=selector)) == 1
    client.cancel_custom_job(name=job.name)
    done = wait_state(client, job.name, S.JOB_STATE_CANCELLED, timeout=30)
    assert done.end_time
    assert docker_client.containers.list(all=True, filters=selector, ignore_removed=True) == []


def test_container_job_preempted(container_emu, docker_client, pushed_image) -> None:
    client = sync_client(container_emu)
    job = client.create_custom_job(
        parent=PARENT,
        custom_job=make_job("spot", image=pushed_image, command=["sleep"], args=["300"]),
    )
    normal = client.create_custom_job(
        parent=PARENT, custom_job=make_job("normal", image=pushed_image, args=["true"])
    )
    assert container_emu.preempt(job.name, timeout=60) == job.name  # waits for its container
    done = client.get_custom_job(name=job.name)
    assert done.state == S.JOB_STATE_FAILED and done.error.code == 14
    assert "was preempted" in done.error.message
    selector = {"label": f"{CONTAINER_JOB_LABEL}={job.name}"}
    assert wait_for(
        lambda: not docker_client.containers.list(all=True, filters=selector, ignore_removed=True),
        timeout=30,
        interval=0.1,
    )
    assert client.get_custom_job(name=job.name).error.code == 14  # the worker left it as it was
    terminal = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
    assert wait_state(client, normal.name, *terminal, timeout=60).state == S.JOB_STATE_SUCCEEDED


def test_container_timeout_and_pull_failure(container_emu, pushed_image) -> None:
    client = sync_client(container_emu)
    slow = client.create_custom_job(
        parent=PARENT,
        custom_job=make_job("slow", image=pushed_image, args=["sleep", "300"], timeout=1),
    )
    missing = client.create_custom_job(
        parent=PARENT,
        custom_job=make_job("missing", image=f"{engine.REGISTRY}/emutest/absent:1"),
    )
    terminal = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED)
    slow_done = wait_state(client, slow.name, *terminal, timeout=60)
    assert slow_done.state == S.JOB_STATE_FAILED and "timeout" in slow_done.error.message
    missing_done = wait_state(client, missing.name, *terminal, timeout=60)
    assert missing_done.state == S.JOB_STATE_FAILED
    assert "pull failed" in missing_done.error.message
