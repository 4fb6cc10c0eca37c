"""How the Kubernetes emulator checks who calls it, as an API server does: TLS with the test CA
(devtools.test_pki), and a caller known by a bearer token or by a client certificate that the
cluster's client CA signed. The kubeconfig user entries for the three kinds kubectl users have:
a token, a client certificate, an exec plugin (a command that prints an ExecCredential).
"""

from __future__ import annotations

import base64
import datetime
import json
import ssl
import sys
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools import test_pki

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class ClientCA:
    """The cluster's client CA: the certificates it signs are users."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def new(cls, name: str = "caliban test cluster client CA") -> ClientCA:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _valid(x509.CertificateBuilder().subject_name(subject).issuer_name(subject))
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(_PEM)

    def issue(self, user: str) -> tuple[bytes, bytes]:
        """A client certificate for `user` (its CN, as Kubernetes reads it): (cert, key) PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            _valid(x509.CertificateBuilder())
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        plain = serialization.NoEncryption()
        return cert.public_bytes(_PEM), key.private_bytes(
            _PEM, serialization.PrivateFormat.PKCS8, plain
        )


def _valid(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
    )


def server_context(client_ca: ClientCA) -> ssl.SSLContext:
    """The API server's TLS: the test CA's server certificate; a client certificate is asked
    for, and verified against the client CA when one is sent (a token caller sends none)."""
    tls, _ = test_pki.shared_tls()
    scratch = test_pki.scratch_dir()
    chain = scratch / "k8s-server.pem"
    if not chain.exists():
        chain.write_bytes(tls.server_cert + tls.server_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=client_ca.pem.decode())
    return context


def ca_data() -> str:
    """The cluster entry's certificate-authority-data: the test CA, base64."""
    tls, _ = test_pki.shared_tls()
    return base64.b64encode(tls.ca_cert).decode()


def token_user(token: str) -> dict:
    return {"token": token}


def cert_user(cert: bytes, key: bytes) -> dict:
    return {
        "client-certificate-data": base64.b64encode(cert).decode(),
        "client-key-data": base64.b64encode(key).decode(),
    }


def exec_user(token: str) -> dict:
    """A plugin as gke-gcloud-auth-plugin is one: a command whose output is the token."""
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": token},
    }
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": sys.executable,
            "args": ["-c", f"print({json.dumps(json.dumps(credential))})"],
            "interactiveMode": "Never",
        }
    }
