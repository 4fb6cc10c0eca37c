"""Defaults from the environment and the user's own gcloud configuration (read, never written)."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

from caliban_flows.plan.project import env_default
from caliban_flows.spec.errors import SpecError

DEFAULT_REGION = "us-central1"


def _gcloud_setting(section: str, key: str) -> str | None:
    root = Path(os.environ.get("CLOUDSDK_CONFIG", Path.home() / ".config" / "gcloud"))
    try:
        active = (root / "active_config").read_text().strip() or "default"
    except OSError:
        active = "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(root / "configurations" / f"config_{active}")
    except configparser.Error:
        return None
    return parser.get(section, key, fallback=None) or None


def project_id(flag: str | None) -> str:
    project = (
        flag
        or env_default("PROJECT_ID", "CLOUDSDK_CORE_PROJECT")
        or _gcloud_setting("core", "project")
    )
    if not project:
        raise SpecError(
            "no Google Cloud project: pass --project_id, set $PROJECT_ID, "
            "or run 'gcloud config set project PROJECT_ID'"
        )
    return project


def region(flag: str | None) -> str:
    return (
        flag
        or env_default("REGION", "CLOUDSDK_AI_REGION")
        or _gcloud_setting("ai", "region")
        or DEFAULT_REGION
    )
