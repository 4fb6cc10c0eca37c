"""The seed database shipped for the embedded Prefect server must match the pinned Prefect."""

from __future__ import annotations

import gzip
import sqlite3
from importlib.metadata import version
from pathlib import Path

import prefect
import pytest
from alembic.script import ScriptDirectory

from caliban_flows import backend
from devtools.prefect_template import template_path

MIGRATIONS = Path(prefect.__file__).parent / "server" / "database" / "_migrations"


def seed_revision(tmp_path: Path) -> str:
    db = tmp_path / "seed.db"
    db.write_bytes(gzip.decompress(template_path(version("prefect")).read_bytes()))
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def test_a_seed_ships_for_the_installed_prefect():
    # Fails after a Prefect upgrade until `python -m devtools.prefect_template` is rerun.
    assert template_path(version("prefect")).is_file()


def test_seed_is_at_the_head_of_prefects_sqlite_migrations(tmp_path):
    scripts = ScriptDirectory(
        str(MIGRATIONS), version_locations=[str(MIGRATIONS / "versions" / "sqlite")]
    )
    assert seed_revision(tmp_path) in scripts.get_heads()


def test_a_new_home_is_seeded_before_its_first_start(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBAN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    try:
        url = backend.api_url()
        import httpx

        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        with sqlite3.connect(tmp_path / "home" / "prefect" / "prefect.db") as conn:
            rev = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
        assert rev == seed_revision(tmp_path)
    finally:
        backend.stop()


@pytest.fixture(autouse=True)
def _no_profile_api_url(monkeypatch, tmp_path):
    # A user's Prefect profile could point elsewhere; these tests need the local server.
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
