"""The "Caliban Vertex Settings" block against a real local Prefect server.

Prefect reads its settings when first imported, and other test modules import it early, so
every block is saved and loaded in a child process that calls backend.use_backend() first.
The module shares one caliban home, and so one server (about 8 s to start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from caliban_flows.server import backend
from tests.prefect_http import api_client

# Each of these could point a child at the user's Prefect instead of this module's server.
ENV_VARS = ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_HOME", "PREFECT_PROFILE",
            backend.LOCAL_URL_ENV, "CALIBAN_SERVER_PORT")  # fmt: skip
START = "from caliban_flows.server import backend\nurl = backend.use_backend()\n"
PLAIN = {
    "project": "demo-project",
    "region": "us-central1",
    "service_account": "jobs@demo-project.iam.gserviceaccount.com",
    "network": "projects/123/global/networks/default",
    "registry": "us-central1-docker.pkg.dev/demo-project/caliban",
    "max_qps": 2.5,
    "spot": True,
}


@pytest.fixture(scope="module")
def child_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vertex-block")
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["CALIBAN_HOME"] = str(root / "home")
    # A user's Prefect profile could point elsewhere; these tests need the local server.
    env["PREFECT_PROFILES_PATH"] = str(root / "profiles.toml")
    yield env
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CALIBAN_HOME", env["CALIBAN_HOME"])
        backend.stop()


def run_child(env: dict, code: str, stdin: str = "") -> tuple[dict, str]:
    """Run `code` in a fresh Python; return what it printed as `RESULT <json>` and all output."""
    done = subprocess.run([sys.executable, "-c", code], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    results = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, output
    return json.loads(results[0].removeprefix("RESULT ")), output


def fake_service_account_key(marker: str) -> dict:
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "0123abcd",
        # PEM parsers skip text before the BEGIN line, so the marker rides inside the key.
        "private_key": f"{marker}\n{pem.decode()}",
        "client_email": "submitter@demo-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


SAVE_AND_LOAD = (
    START
    + f"""
import json, sys
from prefect_gcp.credentials import GcpCredentials
from caliban_flows.blocks.vertex import VertexSettings, credentials_from_block, settings_from_block

key = json.loads(sys.stdin.read())
blocks = {{
    "inline": VertexSettings(**{PLAIN!r}, gcp_credentials=GcpCredentials(service_account_info=key)),
    "no-creds": VertexSettings(region="europe-west4"),
}}
GcpCredentials(service_account_info=key).save("sa-key", overwrite=True)
blocks["by-ref"] = VertexSettings(project="other", gcp_credentials=GcpCredentials.load("sa-key"))
ids, settings, creds = {{}}, {{}}, {{}}
for name, block in blocks.items():
    ids[name] = str(block.save(name, overwrite=True))
for name in blocks:
    settings[name] = settings_from_block(name)
    c = credentials_from_block(name)
    creds[name] = c and [type(c).__module__ + "." + type(c).__name__, c.service_account_email]
print("RESULT", json.dumps({{"url": url, "ids": ids, "settings": settings, "creds": creds}}))
"""
)


def test_settings_round_trip_and_the_key_never_leaves_the_server(child_env):
    marker = f"caliban-test-secret-{uuid.uuid4().hex}"
    key = fake_service_account_key(marker)
    result, output = run_child(child_env, SAVE_AND_LOAD, stdin=json.dumps(key))

    assert result["settings"] == {
        "inline": PLAIN,
        "no-creds": {"region": "europe-west4", "spot": False},
        "by-ref": {"project": "other", "spot": False},
    }
    email = key["client_email"]
    sa_credentials = "google.oauth2.service_account.Credentials"
    assert result["creds"] == {
        "inline": [sa_credentials, email],
        "no-creds": None,
        "by-ref": [sa_credentials, email],
    }

    key_body = key["private_key"].splitlines()[3]  # a line of the PEM's base64
    assert marker not in output and key_body not in output
    url = result["url"]
    with api_client(url, child_env, timeout=10) as client:
        pages = [client.get(f"{url}/block_documents/{i}") for i in result["ids"].values()]
        pages.append(client.post(f"{url}/block_documents/filter", json={}))
        for page in pages:
            assert page.status_code == 200, page.text
            assert marker not in page.text and key_body not in page.text
        inline = pages[0].json()["data"]["gcp_credentials"]["service_account_info"]
        assert inline["private_key"] == "********"
        # The key is stored after all: only the masking keeps it out of the pages above.
        unmasked = client.post(f"{url}/block_documents/filter", json={"include_secrets": True})
        assert marker in unmasked.text


UNKNOWN = (
    START
    + """
import json
from caliban_flows.blocks import vertex

errors = []
for load in (vertex.settings_from_block, vertex.credentials_from_block):
    try:
        load("no-such-settings")
    except ValueError as e:
        errors.append([str(e), e.__suppress_context__])
print("RESULT", json.dumps(errors))
"""
)


def test_an_unknown_block_name_is_a_clear_error(child_env):
    errors, _ = run_child(child_env, UNKNOWN)
    message = (
        "no Prefect 'Caliban Vertex Settings' block named 'no-such-settings'; create one in "
        "the Prefect UI or with VertexSettings(...).save('no-such-settings')"
    )
    assert errors == [[message, True], [message, True]]


VALIDATION = """
import json
from pydantic import ValidationError
from caliban_flows.blocks.vertex import VertexSettings

outcome = {}
for qps in (0, -1.5, 0.5):
    try:
        outcome[qps] = VertexSettings(max_qps=qps).max_qps
    except ValidationError as e:
        outcome[qps] = [[err["loc"], err["type"]] for err in e.errors()]
print("RESULT", json.dumps(outcome))
"""


def test_max_qps_must_be_positive(child_env, tmp_path):
    # Building a block needs no server.
    outcome, _ = run_child({**child_env, "PREFECT_HOME": str(tmp_path)}, VALIDATION)
    rejected = [[["max_qps"], "greater_than"]]
    assert outcome == {"0": rejected, "-1.5": rejected, "0.5": 0.5}
