"""The credentials a local stand-in for a Google API needs to check clients the way Google does.

A test CA and a loopback server certificate it signs (so clients speak real TLS and verify it),
real-format service-account key files, and the check of the self-signed JWTs that the Google
client libraries send with such a key (`always_use_jwt_access`: no token endpoint, no network).
Everything is made locally with `cryptography`; nothing here is a secret worth keeping.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import datetime
import ipaddress
import json
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
CLOCK_SKEW = 60  # seconds a token's iat/exp may be off, as Google allows some
MAX_LIFETIME = 3600  # Google refuses self-signed JWTs valid for more than an hour

# The real service's answers (UNAUTHENTICATED); the emulator adds why in parentheses.
MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class ServerTLS:
    """PEM bytes: the CA clients trust, and the server's key and certificate chain."""

    ca_cert: bytes
    server_key: bytes
    server_cert: bytes


def make_server_tls(common_name: str = "caliban test server") -> ServerTLS:
    """A fresh CA and a server certificate for 127.0.0.1 and localhost. P-256 keys: quick to
    make, and gRPC accepts them."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServerTLS(
        ca_cert=ca_cert.public_bytes(pem),
        server_key=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        server_cert=cert.public_bytes(pem),
    )


_shared: tuple[ServerTLS, Path] | None = None
_shared_lock = threading.Lock()


def shared_tls() -> tuple[ServerTLS, Path]:
    """This process's test CA and server certificate, and the CA's PEM file. One per process:
    gRPC reads $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH once per process, so every test server a
    process talks to must chain to the same CA. The file goes when the process exits."""
    global _shared
    with _shared_lock:
        if _shared is None:
            tls = make_server_tls()
            ca_file = scratch_dir() / "ca.pem"
            ca_file.write_bytes(tls.ca_cert)
            _shared = tls, ca_file
        return _shared


_scratch: Path | None = None


def scratch_dir() -> Path:
    """A private directory for this process's test PKI files, removed at exit."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="caliban-test-pki-"))
        atexit.register(shutil.rmtree, _scratch, True)
    return _scratch


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


# --------------------------------------------------------------------------- service accounts


def new_service_account_key(project: str, email: str | None = None) -> dict[str, str]:
    """A key in the format `gcloud iam service-accounts keys create` writes (RSA 2048)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = email or f"caliban-test-{secrets.token_hex(3)}@{project}.iam.gserviceaccount.com"
    private_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": private_key.decode(),
        "client_email": email,
        "client_id": str(10**20 + secrets.randbelow(9 * 10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        + email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }


def write_key(path: str | Path, info: dict[str, str]) -> Path:
    """The key file, readable by its owner only (as a key should be)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def read_key(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


class AuthError(Exception):
    """Why a request's credentials are refused; str() is the message for the caller."""


@dataclass(frozen=True)
class _Trusted:
    email: str
    public_key: rsa.RSAPublicKey


class KeyRing:
    """The service-account keys a service accepts, and the check of a request's bearer JWT."""

    def __init__(self, audiences: tuple[str, ...], scope: str = CLOUD_PLATFORM_SCOPE):
        self.audiences = audiences
        self.scope = scope
        self._lock = threading.Lock()
        self._keys: dict[str, _Trusted] = {}  # private_key_id -> who signs with it

    def trust(self, info: dict[str, Any]) -> None:
        private = serialization.load_pem_private_key(info["private_key"].encode(), None)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise ValueError("a service-account key is an RSA key")
        with self._lock:
            self._keys[info["private_key_id"]] = _Trusted(
                info["client_email"], private.public_key()
            )

    def revoke(self, key_id: str) -> None:
        with self._lock:
            self._keys.pop(key_id, None)

    def refusal(self, metadata) -> str | None:
        """Why a call's gRPC metadata (`context.invocation_metadata()`) carries no valid
        credential, as the real service words it; None if it does."""
        values = [value for key, value in metadata if key == "authorization"]
        try:
            if len(values) > 1:
                raise _invalid("several authorization entries")
            self.verify(values[0] if values else None)
        except AuthError as err:
            return str(err)
        return None

    def verify(self, authorization: str | None, now: float | None = None) -> str:
        """The client_email of a valid `Bearer <self-signed JWT>`; AuthError otherwise."""
        if not authorization:
            raise AuthError(f"{MISSING} (emulator: no authorization metadata)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _invalid("authorization is not 'Bearer <token>'")
        parts = token.strip().split(".")
        if len(parts) != 3:
            raise _invalid("the bearer token is not a JWT (OAuth access tokens are not accepted)")
        header, claims, signature = (_b64json(parts[0]), _b64json(parts[1]), _b64(parts[2]))
        if header.get("alg") != "RS256":
            raise _invalid(f"JWT alg {header.get('alg')!r} is not RS256")
        with self._lock:
            trusted = self._keys.get(header.get("kid", ""))
        if trusted is None:
            raise _invalid(f"unknown or deleted key id {header.get('kid')!r}")
        try:
            trusted.public_key.verify(
                signature,
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            raise _invalid("bad JWT signature") from None
        if claims.get("iss") != trusted.email or claims.get("sub") != trusted.email:
            raise _invalid(f"iss/sub is not the key's account {trusted.email}")
        now = time.time() if now is None else now
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)):
            raise _invalid("JWT lacks numeric iat/exp")
        if exp + CLOCK_SKEW < now:
            raise _invalid("the JWT has expired")
        if iat - CLOCK_SKEW > now or exp - iat > MAX_LIFETIME:
            raise _invalid("JWT iat is in the future or its lifetime exceeds one hour")
        scopes = str(claims.get("scope", "")).split()
        if claims.get("aud") not in self.audiences and self.scope not in scopes:
            raise _invalid(f"JWT has neither aud in {self.audiences} nor scope {self.scope}")
        return trusted.email


def _invalid(why: str) -> AuthError:
    return AuthError(f"{INVALID} (emulator: {why})")


def _b64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("JWT part is not base64url") from None


def _b64json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(_b64(text))
    except ValueError:
        raise _invalid("JWT part is not JSON") from None
    if not isinstance(value, dict):
        raise _invalid("JWT part is not a JSON object")
    return value


class GoogleService:
    """What a stand-in for a Google API shares: the process's test CA and server certificate,
    and the service-account keys it accepts (a KeyRing)."""

    project = "caliban-test"

    def __init__(self, audiences: tuple[str, ...]):
        self._tls, self.ca_file = shared_tls()
        self._keys = KeyRing(audiences)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate that signed the server's (the content of `ca_file`)."""
        return self._tls.ca_cert

    def new_key(
        self, path: str | Path | None = None, *, trusted: bool = True, email: str | None = None
    ) -> Path:
        """Write a new service-account key file at `path` (None: in the process's scratch
        directory); the service accepts it if `trusted`."""
        info = new_service_account_key(self.project, email)
        if trusted:
            self._keys.trust(info)
        path = path or scratch_dir() / f"key-{info['private_key_id'][:12]}.json"
        return write_key(path, info)

    def trust(self, key_path: str | Path) -> None:
        """Accept the JWTs that an existing key file signs."""
        self._keys.trust(read_key(key_path))

    def revoke(self, key_path: str | Path) -> None:
        """Stop accepting a key, as when it is deleted from its service account."""
        self._keys.revoke(read_key(key_path)["private_key_id"])
