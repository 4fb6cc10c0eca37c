"""Reading what the user points us at: experiment configs, .calibanconfig.json, who they are.

Everything here turns a missing or unreadable input into a one-line SpecError.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from caliban_flows.spec import jsonc
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.experiment import ExperimentConfig


def read_text(path: str, what: str) -> str:
    p = Path(path).expanduser()
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{what} {path!r} not found") from None
    except IsADirectoryError:
        raise SpecError(f"{what} {path!r} is a directory, not a file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{what} {path!r} is not UTF-8 text") from None
    except OSError as e:
        raise SpecError(f"cannot read {what} {path!r}: {e.strerror}") from None


def load_experiment_config(source: str) -> ExperimentConfig:
    """A path, or `stdin` in any case, as Caliban accepted."""
    if source.lower() == "stdin":
        if sys.stdin is None:
            raise SpecError("--experiment_config stdin, but there is no standard input")
        text, name = sys.stdin.read(), "experiment config from stdin"
    else:
        text, name = read_text(source, "experiment config"), f"experiment config {source!r}"
    if not text.strip():
        raise SpecError(f"{name} is empty")
    return ExperimentConfig(jsonc.loads(text, source=name))


def current_user() -> str:
    """Who owns the groups this process plans and lists: CALIBAN_USER (which is your Prefect
    Cloud handle when Prefect Cloud is the API: server.cloud_user), else the OS user."""
    from caliban_flows.server.cloud_user import USER_ENV

    return os.environ.get(USER_ENV, "").strip() or os_user()


def os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary uid in a container
        return f"user{os.getuid()}"


CREDENTIALS_IN_CONTAINER = "/var/run/caliban/credentials.json"


ADC_IN_CONTAINER = "/var/run/caliban/application_default_credentials.json"


def application_default_credentials() -> Path | None:
    """gcloud's application-default credentials (`gcloud auth application-default login`)
    under $CLOUDSDK_CONFIG or ~/.config/gcloud, when that file exists."""
    config = os.environ.get("CLOUDSDK_CONFIG") or Path.home() / ".config" / "gcloud"
    path = Path(config).expanduser() / "application_default_credentials.json"
    return path.resolve() if path.is_file() else None


def credential_args(cloud_key: str | None) -> list[str]:
    """Mount the service-account key read-only at run time; it never enters an image.
    Without a key, gcloud's application-default credentials, when the user has them."""
    key = cloud_key or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not key:
        adc = application_default_credentials()
        if adc is None:
            return []
        return ["-v", f"{adc}:{ADC_IN_CONTAINER}:ro",
                "-e", f"GOOGLE_APPLICATION_CREDENTIALS={ADC_IN_CONTAINER}"]  # fmt: skip
    path = Path(key).expanduser().resolve()
    if not path.is_file():
        raise SpecError(
            f"credentials {key!r} (from --cloud_key or $GOOGLE_APPLICATION_CREDENTIALS) "
            "is not a file"
        )
    return [
        "-v",
        f"{path}:{CREDENTIALS_IN_CONTAINER}:ro",
        "-e",
        f"GOOGLE_APPLICATION_CREDENTIALS={CREDENTIALS_IN_CONTAINER}",
    ]


def service_account_key(cloud_key: str) -> str:
    """The absolute path of the key file --cloud_key names, once it reads as one: a job is
    submitted with it (and a later status, stop or resubmit reads it there again)."""
    import json

    path = Path(cloud_key).expanduser().resolve()
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "not JSON"
        raise SpecError(f"--cloud_key {cloud_key!r}: {reason}") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise SpecError(f"--cloud_key {cloud_key!r} is not a service-account key file")
    return str(path)
