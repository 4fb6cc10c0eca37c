"""Google credentials as caliban uses them: a service-account key file (--cloud_key), else the
user's application-default credentials. Service-account keys sign their own JWTs for the APIs
(`always_use_jwt_access`), so no token exchange with Google's OAuth endpoint is needed.
"""

from __future__ import annotations

from typing import Any

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def from_key_file(path: str) -> Any:
    """The credentials of a service-account key file, for every Google Cloud API."""
    from google.oauth2 import service_account

    return service_account.Credentials.from_service_account_file(path, scopes=[CLOUD_PLATFORM])


def for_rest(credentials: Any | None) -> Any:
    """What a REST call authorizes with: `credentials` or the application default; a service
    account's self-signing its JWTs, as the gRPC clients do."""
    if credentials is None:
        import google.auth

        credentials = google.auth.default(scopes=[CLOUD_PLATFORM])[0]
    with_jwt = getattr(credentials, "with_always_use_jwt_access", None)
    return with_jwt(True) if with_jwt is not None else credentials
