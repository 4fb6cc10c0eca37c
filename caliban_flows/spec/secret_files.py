"""Which files of a project folder are credentials, and so never go into an image.

Pure: the caller reads each file's first bytes (HEAD_BYTES) and asks. A key file that sits in
the project folder is the common case (`GOOGLE_APPLICATION_CREDENTIALS=$PWD/key.json`), and
a whole-folder COPY would otherwise carry it into the image and on to a registry.
"""

from __future__ import annotations

import json
import re

HEAD_BYTES = 4096  # a service-account key is about 2.3 KB; a PEM header is in its first line
ALWAYS_LEFT_OUT = {
    "application_default_credentials.json": "gcloud's application-default credentials"
}
_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# Google's credential files, by their "type"; each holds a private key or a refresh token.
_CREDENTIAL_TYPES = {
    "service_account": "a service-account key",
    "authorized_user": "a user's OAuth credentials",
    "external_account": "workload identity federation credentials",
    "external_account_authorized_user": "workload identity federation credentials",
    "impersonated_service_account": "service-account impersonation credentials",
}


def secret_kind(rel: str, head: bytes, named: frozenset[str] = frozenset()) -> str | None:
    """Why the file at `rel` (relative, POSIX) must stay out of an image, or None.

    `named` holds the relative paths the environment or the command line names as
    credentials ($GOOGLE_APPLICATION_CREDENTIALS, --cloud_key): left out whatever they hold.
    """
    if rel in named:
        return "the credentials file caliban was given"
    name = rel.rsplit("/", 1)[-1]
    if name in ALWAYS_LEFT_OUT:
        return ALWAYS_LEFT_OUT[name]
    if b'"type"' in head and head.lstrip().startswith(b"{"):
        kind = _credential_json(head)
        if kind is not None:
            return kind
    return "a private key" if b"PRIVATE KEY-----" in head and _PRIVATE_KEY.search(head) else None


def _credential_json(head: bytes) -> str | None:
    try:
        data = json.loads(head)
    except ValueError:  # longer than the head, or not JSON: look at the type by pattern
        found = re.search(rb'"type"\s*:\s*"([a-z_]+)"', head)
        kind = found.group(1).decode() if found else ""
        keyed = b'"private_key"' in head or b'"refresh_token"' in head
        return _CREDENTIAL_TYPES.get(kind) if keyed or kind == "external_account" else None
    if not isinstance(data, dict):
        return None
    return _CREDENTIAL_TYPES.get(str(data.get("type")))
