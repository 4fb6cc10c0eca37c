"""devtools.vertex_emulator checks clients as Vertex does: TLS with its test CA, and on every RPC
a self-signed JWT from a service-account key it trusts.

The real `aiplatform_v1.JobServiceClient` runs in a fresh interpreter with the environment that
caliban gets (`emu.client_env`): gRPC takes $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH once per process,
so only a new process shows that the variable alone makes the CA trusted. Tokens the real client
would never send (expired, forged, ...) go over a raw gRPC channel from this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.auth import crypt, jwt
from google.cloud import aiplatform_v1 as v1

from devtools import test_pki
from devtools.vertex_emulator import SERVICE, VertexEmulator

ROOT = Path(__file__).resolve().parents[2]
PARENT = "projects/emu-project/locations/us-central1"
ROOTS_ENV = "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"

# argv[1] picks the credentials; prints what happened as JSON on its last line.
CLIENT = """
import json, os, sys
import google.auth
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1 as v1
from google.oauth2 import service_account

mode = sys.argv[1]
if mode == "anonymous":
    credentials = AnonymousCredentials()
elif mode == "default":  # application default credentials: the key file, no scopes
    credentials, _ = google.auth.default()
else:
    credentials = service_account.Credentials.from_service_account_file(
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"],
        scopes=["https://www.googleapis.com/auth/cloud-platform"],
    )
client = v1.JobServiceClient(
    credentials=credentials, client_options={"api_endpoint": os.environ["CALIBAN_VERTEX_ENDPOINT"]}
)
parent = "projects/emu-project/locations/us-central1"
job = v1.CustomJob(
    display_name="auth",
    labels={"caliban_job_key": "auth"},
    job_spec=v1.CustomJobSpec(worker_pool_specs=[v1.WorkerPoolSpec(
        machine_spec=v1.MachineSpec(machine_type="n1-standard-4"), replica_count=1,
        container_spec=v1.ContainerSpec(image_uri="127.0.0.1:5000/demo:1"),
    )]),
)
out = {}
try:
    out["created"] = client.create_custom_job(parent=parent, custom_job=job, timeout=30).name
    out["listed"] = [j.name for j in client.list_custom_jobs(parent=parent, timeout=30)]
except exceptions.GoogleAPICallError as err:
    out["error"], out["message"] = err.grpc_status_code.name, err.message
print(json.dumps(out))
"""


def run_client(env: dict[str, str], mode: str = "key") -> dict:
    base = {k: v for k, v in os.environ.items() if k != ROOTS_ENV}
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, mode],
        env={**base, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def emu():
    with VertexEmulator(run_containers=False, sim_step=3600) as emulator:
        yield emulator


def refused(out: dict) -> bool:
    return out.get("error") == "UNAUTHENTICATED" and "authentication credential" in out["message"]


# --------------------------------------------------------------------------- the real client


@pytest.mark.parametrize("mode", ["key", "default"])
def test_a_trusted_key_creates_and_lists_jobs(emu, tmp_path, mode) -> None:
    # "key": scopes given, so the JWT has a `scope` claim; "default": none, so an `aud`.
    out = run_client(emu.client_env(emu.new_key(tmp_path / "key.json")), mode)
    assert "error" not in out, out
    assert out["created"].startswith(PARENT + "/customJobs/")
    assert out["listed"] == [out["created"]]
    assert emu.creates_by_key() == {"auth": 1}
    assert emu.calls() == {"CreateCustomJob": 1, "ListCustomJobs": 1}


def test_an_untrusted_key_is_refused(emu, tmp_path) -> None:
    key = emu.new_key(tmp_path / "stranger.json", trusted=False)
    out = run_client(emu.client_env(key))
    assert refused(out), out
    assert out["message"].startswith("Request had invalid authentication credentials.")
    assert emu.jobs() == [] and emu.creates_by_key() == {}
    assert emu.calls() == {"CreateCustomJob": 1}  # counted, not performed


def test_trust_accepts_an_existing_key_file(emu, tmp_path) -> None:
    key = emu.new_key(tmp_path / "later.json", trusted=False)
    emu.trust(key)
    out = run_client(emu.client_env(key))
    assert "error" not in out, out
    assert emu.creates_by_key() == {"auth": 1}


def test_a_revoked_key_is_refused(emu, tmp_path) -> None:
    key = emu.new_key(tmp_path / "key.json")
    env = emu.client_env(key)
    assert "error" not in run_client(env)
    emu.revoke(key)
    out = run_client(env)
    assert refused(out), out
    assert emu.creates_by_key() == {"auth": 1}  # only the create made before the revocation
    assert emu.calls() == {"CreateCustomJob": 2, "ListCustomJobs": 1}


def test_no_credentials_are_refused(emu, tmp_path) -> None:
    out = run_client(emu.client_env(emu.new_key(tmp_path / "key.json")), "anonymous")
    assert refused(out), out
    assert out["message"].startswith("Request is missing required authentication credential.")
    assert emu.jobs() == []
    assert emu.calls() == {"CreateCustomJob": 1}


def test_a_client_that_does_not_trust_the_ca_cannot_connect(emu, tmp_path) -> None:
    env = emu.client_env(emu.new_key(tmp_path / "key.json"))
    del env[ROOTS_ENV]  # the public roots only, as any process without the variable
    out = run_client(env)
    assert out.get("error") == "UNAVAILABLE", out
    assert "CERTIFICATE_VERIFY_FAILED" in out["message"]  # the handshake, not the port
    assert emu.calls() == {} and emu.jobs() == []  # no RPC got through


def test_the_command_line_server_prints_a_working_environment(tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.vertex_emulator", "--simulate"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = proc.stdout.readline().strip()
        env = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(3))
        assert env["CALIBAN_VERTEX_ENDPOINT"] == endpoint
        assert "error" not in run_client(env)
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    assert not Path(env[ROOTS_ENV]).exists()  # its CA and key go with it


# --------------------------------------------------------------------------- crafted tokens


def raw_create(emu: VertexEmulator, stack: contextlib.ExitStack):
    """CreateCustomJob over a raw TLS channel, with whatever authorization metadata."""
    channel = grpc.secure_channel(emu.endpoint, grpc.ssl_channel_credentials(emu.ca_pem))
    stack.callback(channel.close)
    create = channel.unary_unary(
        f"/{SERVICE}/CreateCustomJob",
        request_serializer=v1.CreateCustomJobRequest.serialize,
        response_deserializer=v1.CustomJob.deserialize,
    )
    request = v1.CreateCustomJobRequest(
        parent=PARENT,
        custom_job=v1.CustomJob(
            display_name="raw",
            job_spec=v1.CustomJobSpec(
                worker_pool_specs=[
                    v1.WorkerPoolSpec(
                        machine_spec=v1.MachineSpec(machine_type="n1-standard-4"),
                        replica_count=1,
                        container_spec=v1.ContainerSpec(image_uri="127.0.0.1:5000/demo:1"),
                    )
                ]
            ),
        ),
    )

    def call(*authorizations: str):
        metadata = [("authorization", value) for value in authorizations]
        return create(request, metadata=metadata, timeout=30)

    return call


@pytest.fixture
def raw(emu):
    with contextlib.ExitStack() as stack:
        yield raw_create(emu, stack)


@pytest.fixture
def key_info(emu, tmp_path) -> dict:
    return test_pki.read_key(emu.new_key(tmp_path / "key.json"))


def claims(info: dict, **changes) -> dict:
    """What the real client signs with scopes given, changed by `changes` (None drops)."""
    now = int(time.time())
    email = info["client_email"]
    base = {"iss": email, "sub": email, "iat": now, "exp": now + 3600}
    base["scope"] = test_pki.CLOUD_PLATFORM_SCOPE
    merged = {**base, **changes}
    return {k: v for k, v in merged.items() if v is not None}


def bearer(info: dict, payload: dict) -> str:
    signer = crypt.RSASigner.from_service_account_info(info)
    return "Bearer " + jwt.encode(signer, payload).decode()


def test_a_crafted_token_like_the_clients_is_accepted(emu, raw, key_info) -> None:
    """The control for the refusals below: they differ from this token in one thing each."""
    assert raw(bearer(key_info, claims(key_info))).display_name == "raw"
    audience = claims(key_info, scope=None, aud="https://aiplatform.googleapis.com/")
    assert raw(bearer(key_info, audience)).display_name == "raw"
    assert len(emu.jobs()) == 2


def _forged(info: dict) -> str:
    """Signed by another key that claims the trusted key's id."""
    other = test_pki.new_service_account_key("emu-project", info["client_email"])
    other["private_key_id"] = info["private_key_id"]
    return bearer(other, claims(info))


def _tampered(info: dict) -> str:
    """A valid token whose claims are swapped for others after signing."""
    head, _, signature = bearer(info, claims(info)).split(".")
    _, body, _ = bearer(info, claims(info, exp=int(time.time()) + 60)).split(".")
    return f"{head}.{body}.{signature}"


def _hour_ago(info: dict) -> str:
    now = int(time.time())
    return bearer(info, claims(info, iat=now - 7200, exp=now - 3600))


CRAFTED = {
    "expired": _hour_ago,
    "forged signature": _forged,
    "tampered claims": _tampered,
    "other account": lambda i: bearer(i, claims(i, iss="x@p.iam.gserviceaccount.com")),
    "another service": lambda i: bearer(
        i, claims(i, scope=None, aud="https://storage.googleapis.com/")
    ),
    "narrow scope": lambda i: bearer(
        i, claims(i, scope="https://www.googleapis.com/auth/devstorage.read_only")
    ),
    "valid for a day": lambda i: bearer(i, claims(i, exp=int(time.time()) + 86400)),
    "access token": lambda i: "Bearer ya29.a0AfH6SMBx-not-a-jwt",
    "not bearer": lambda i: "Basic dXNlcjpwYXNz",
    "garbage jwt": lambda i: "Bearer e30.!!!.e30",
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_bad_tokens_are_refused_before_any_work(emu, raw, key_info, case) -> None:
    with pytest.raises(grpc.RpcError) as err:
        raw(CRAFTED[case](key_info))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details().startswith("Request had invalid authentication credentials.")
    assert emu.jobs() == [] and emu.create_times() == []
    assert emu.calls() == {"CreateCustomJob": 1}


def test_two_authorizations_are_refused(emu, raw, key_info) -> None:
    good = bearer(key_info, claims(key_info))
    with pytest.raises(grpc.RpcError) as err:
        raw(good, good)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert emu.jobs() == []


def test_clock_skew_is_allowed_up_to_a_minute(key_info) -> None:
    ring = test_pki.KeyRing(("https://aiplatform.googleapis.com/",))
    ring.trust(key_info)
    payload = claims(key_info)
    token, exp = bearer(key_info, payload), payload["exp"]
    assert ring.verify(token, now=exp + test_pki.CLOCK_SKEW - 1) == key_info["client_email"]
    with pytest.raises(test_pki.AuthError, match="expired"):
        ring.verify(token, now=exp + test_pki.CLOCK_SKEW + 1)


def test_refused_calls_leave_the_seeded_faults_as_they_were() -> None:
    def outcomes(refuse_first: bool) -> list[str]:
        with VertexEmulator(error_rate=0.5, seed=3) as emu, contextlib.ExitStack() as stack:
            call, info = raw_create(emu, stack), test_pki.read_key(emu.new_key())
            token, seen = bearer(info, claims(info)), []
            for _ in range(20):
                if refuse_first:
                    with pytest.raises(grpc.RpcError) as err:
                        call()
                    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                try:
                    call(token)
                    seen.append("OK")
                except grpc.RpcError as err:
                    seen.append(err.code().name)
            return seen

    plain = outcomes(False)
    assert "OK" in plain and set(plain) - {"OK"}  # both answers and injected faults
    assert outcomes(True) == plain
