"""The credentials devtools.storage_emulator accepts, as Cloud Storage and Google's token
endpoint do: OAuth access tokens it issued for a trusted key's JWT-bearer assertion (what
google-cloud-storage gets with a key file), or a trusted key's self-signed JWT."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from devtools import test_pki
from devtools.storage_wire import Reply, error

TOKEN_SECONDS = 3600
# google-auth addresses every assertion to Google's endpoint, whatever the key's token_uri.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


class Tokens:
    """Access tokens issued for the keys of a KeyRing; the check of a request's credential."""

    def __init__(self, keys: test_pki.KeyRing):
        self.keys = keys
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # access token -> (email, expiry)

    def authorize(self, headers) -> None:
        given = headers.get_all("Authorization") or []
        if len(given) == 1 and given[0].startswith("Bearer ya29.emu."):
            with self._lock:
                _email, expiry = self._tokens.get(given[0][7:], ("", 0.0))
            if expiry > time.time():
                return
            raise error(401, "authError", f"{test_pki.INVALID} (emulator: unknown token)")
        denied = self.keys.refusal([("authorization", value) for value in given])
        if denied is not None:
            raise error(401, "authError", denied)

    def grant(self, form: dict[str, list[str]]) -> dict[str, Any]:
        """Google's token endpoint for a service account's signed JWT-bearer assertion."""

        def refuse(why: str) -> Reply:
            return Reply(400, {"error": "invalid_grant", "error_description": why})

        if form.get("grant_type") != [JWT_BEARER] or not form.get("assertion"):
            raise Reply(400, {"error": "unsupported_grant_type", "error_description": "grant"})
        parts = form["assertion"][0].split(".")
        try:
            header, claims = (test_pki._b64json(p) for p in parts[:2])
            signature = test_pki._b64(parts[2])
        except (test_pki.AuthError, IndexError):
            raise refuse("Invalid JWT.") from None
        trusted = self.keys._keys.get(str(header.get("kid", "")))
        if trusted is None:
            raise refuse("Invalid grant: account not found")
        try:
            signed = f"{parts[0]}.{parts[1]}".encode()
            trusted.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise refuse("Invalid JWT Signature.") from None
        now = time.time()
        if claims.get("iss") != trusted.email or claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            raise refuse("Invalid JWT: iss or aud is wrong")
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] + 60 < now:
            raise refuse("Invalid JWT: Token must be a short-lived token and in a reasonable "
                          "timeframe.")  # fmt: skip
        token = f"ya29.emu.{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tokens[token] = (trusted.email, now + TOKEN_SECONDS)
        return {"access_token": token, "expires_in": TOKEN_SECONDS, "token_type": "Bearer"}
