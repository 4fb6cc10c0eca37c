"""Which files of a project are credentials (spec.secret_files): by name and by content."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from caliban_flows.spec.secret_files import HEAD_BYTES, secret_kind

RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key, fmt=serialization.PrivateFormat.PKCS8, password: bytes | None = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def service_account_key() -> bytes:
    return json.dumps({
        "type": "service_account", "project_id": "p", "private_key_id": "abc",
        "private_key": pem(RSA).decode(), "client_email": "sa@p.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token",
    }, indent=2).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("key.json", service_account_key(), "a service-account key"),
        ("deep/dir/creds.json", service_account_key(), "a service-account key"),
        (
            "adc.json",
            json.dumps(
                {
                    "type": "authorized_user",
                    "client_id": "x",
                    "client_secret": "y",
                    "refresh_token": "z",
                }
            ).encode(),
            "a user's OAuth credentials",
        ),
        ("id_rsa", pem(RSA, serialization.PrivateFormat.TraditionalOpenSSL), "a private key"),
        (
            "id_ed25519",
            pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH),
            "a private key",
        ),
        ("server.pem", pem(ec.generate_private_key(ec.SECP256R1())), "a private key"),
        ("locked.key", pem(RSA, password=b"pw"), "a private key"),
        (
            "x/application_default_credentials.json",
            b"{}",
            "gcloud's application-default credentials",
        ),
    ],
)
def test_credentials_are_found(name, content, kind):
    assert secret_kind(name, content[:HEAD_BYTES]) == kind


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("train.py", b"print('hi')\n"),
        ("config.json", b'{"lr": 0.1, "type": "resnet"}'),
        ("public.pem", RSA.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)),
        ("notes.md", b"never commit a -----BEGIN PRIVATE KEY----- block\n"[:20]),
        ("data.bin", bytes(range(256)) * 16),
    ],
)  # fmt: skip
def test_ordinary_files_are_not(name, content):
    assert secret_kind(name, content[:HEAD_BYTES]) is None


def test_a_file_named_as_credentials_is_left_out_whatever_it_holds():
    named = frozenset({"conf/token.txt"})
    assert secret_kind("conf/token.txt", b"opaque", named) is not None
    assert secret_kind("conf/other.txt", b"opaque", named) is None


def test_a_key_longer_than_the_head_is_still_found():
    big = json.loads(service_account_key())
    big["padding"] = "x" * (2 * HEAD_BYTES)
    text = json.dumps({"type": big.pop("type"), **big}).encode()
    assert len(text) > HEAD_BYTES
    assert secret_kind("big.json", text[:HEAD_BYTES]) == "a service-account key"


@pytest.mark.parametrize(
    ("args", "labels"),
    [
        (["--api_key", "sk-123", "--lr", "0.1"], {"api_key": "redacted", "lr": "0_1"}),
        (["--hf-token=abc", "--epochs", "3"], {"hf-token": "redacted", "epochs": "3"}),
        (["--db_password", "pw", "--flag"], {"db_password": "redacted", "flag": ""}),
        (["--keyboard", "qwerty"], {"keyboard": "qwerty"}),  # a word, not a part of one
        (["--secret"], {"secret": ""}),  # nothing to hide
    ],
)
def test_a_flag_that_names_a_secret_labels_no_value(args, labels):
    from caliban_flows.spec.labels import script_args_to_labels

    assert script_args_to_labels(args) == labels


@pytest.mark.parametrize(
    ("words", "kept", "values"),
    [
        (["-e", "TOKEN=abc", "-v", "/a:/b"], ["-e", "TOKEN", "-v", "/a:/b"], {"TOKEN": "abc"}),
        (["--env=K=v=w", "-eX=1"], ["--env", "K", "-e", "X"], {"K": "v=w", "X": "1"}),
        (["-e", "HOME"], ["-e", "HOME"], {}),  # already taken from the environment
        (["--shm-size", "1g"], ["--shm-size", "1g"], {}),
    ],
)
def test_env_values_stay_out_of_the_recorded_run_args(words, kept, values):
    from caliban_flows.spec.docker_run_args import env_values_out, parse_run_words

    assert env_values_out(words) == (kept, values)
    parse_run_words(kept)  # still words docker accepts
