"""No credentials in images: a project folder full of keys, built for real, searched layer by
layer in the saved image.

A top-level script makes caliban copy the whole folder, which is where a key file sitting
beside the code used to ride along into the image (and, pushed, on to a registry).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.conftest import caliban_runner


def _pem(key, fmt=serialization.PrivateFormat.PKCS8) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt,
                             serialization.NoEncryption()).decode()  # fmt: skip


def _service_account(email: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return json.dumps({"type": "service_account", "project_id": "p", "private_key_id": email,
                       "private_key": _pem(key), "client_email": email})  # fmt: skip


def _files(image) -> Iterator[tuple[str, bytes | None]]:
    """Every entry of every layer of the saved image: its path, and a file's bytes."""
    with tarfile.open(fileobj=io.BytesIO(b"".join(image.save()))) as archive:
        members = [m for m in archive.getmembers() if m.name.endswith("layer.tar")]
        assert members, "no layer in the saved image"
        for member in members:
            with tarfile.open(fileobj=archive.extractfile(member)) as layer:
                for item in layer.getmembers():
                    data = layer.extractfile(item).read() if item.isfile() else None
                    yield item.name, data


def test_no_key_in_the_project_folder_reaches_the_image(tmp_path, docker_client):
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('training')\n")
    (project / "requirements.txt").write_text("")
    secrets = {
        "key.json": _service_account("named@p.iam.gserviceaccount.com"),  # the env names it
        "other-sa.json": _service_account("other@p.iam.gserviceaccount.com"),
        "gcloud/application_default_credentials.json": json.dumps(
            {
                "type": "authorized_user",
                "client_id": "c",
                "client_secret": "s",
                "refresh_token": "adc-refresh-token-0123456789",
            }
        ),
        "id_ed25519": _pem(
            ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH
        ),
        "certs/tls.pem": _pem(ec.generate_private_key(ec.SECP256R1())),
    }
    for rel, text in secrets.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "h"),
           "GOOGLE_APPLICATION_CREDENTIALS": str(project / "key.json")}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    cli = caliban_runner(project, env)

    built = cli("build", "--nogpu", "train.py")
    assert built.returncode == 0, built.stderr
    warnings = [line for line in built.stderr.splitlines() if line.startswith("warning: left out")]
    assert len(warnings) == 1, built.stderr
    for rel in secrets:
        assert rel in warnings[0], warnings[0]

    markers = [line.encode() for text in secrets.values() for line in text.splitlines()
               if len(line) > 40 and "BEGIN" not in line and "END" not in line]  # fmt: skip
    markers += [b"adc-refresh-token-0123456789", b"named@p.iam", b"other@p.iam"]
    names = {Path(rel).name for rel in secrets} | {".caliban.Dockerfile"}
    image = docker_client.images.get(built.stdout.strip())
    seen_script = False
    hits = []
    for path, data in _files(image):
        seen_script |= path.endswith("usr/app/train.py")
        if Path(path).name in names:
            hits.append(path)
        if data is not None:
            hits += [f"{path}: {m[:20]!r}" for m in markers if m in data]
    assert seen_script, "the project folder was not copied: the test proves nothing"
    assert hits == [], hits
    print(f"{len(secrets)} credential files and the Dockerfile: 0 hits in every layer")


def test_caliban_run_leaves_out_the_file_cloud_key_names(tmp_path, docker_client):
    """Named by --cloud_key, a file stays out whatever it holds (here nothing that looks like
    a key), and the job still gets it, mounted read-only."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(
        "import os; print('key at', os.environ['GOOGLE_APPLICATION_CREDENTIALS'])\n"
    )
    (project / "requirements.txt").write_text("")
    (project / "opaque.key").write_text("opaque-credential-0123456789abcdef\n")
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home"), "HOME": str(tmp_path / "h")}
    env.pop("PREFECT_API_URL", None)
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    cli = caliban_runner(project, env)

    done = cli("run", "--nogpu", "--xgroup", "named-key", "--cloud_key", "opaque.key", "train.py")
    assert done.returncode == 0, done.stderr
    assert "opaque.key (the credentials file caliban was given)" in done.stderr, done.stderr
    rows = json.loads(cli("status", "--xgroup", "named-key", "--format", "json").stdout)
    assert [r["state"] for r in rows] == ["SUCCEEDED"], rows
    image = docker_client.images.get(rows[0]["image"])
    hits = [
        path
        for path, data in _files(image)
        if Path(path).name == "opaque.key" or (data and b"opaque-credential" in data)
    ]
    assert hits == [], hits
