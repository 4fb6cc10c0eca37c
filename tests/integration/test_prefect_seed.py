"""The seed database shipped for the embedded Prefect server must match the pinned Prefect."""

from __future__ import annotations

import gzip
import sqlite3
from importlib.metadata import version
from pathlib import Path

import prefect
import pytest
from alembic.script import ScriptDirectory

from caliban_flows.server import backend
from devtools.prefect_template import template_path
from tests.prefect_http import auth_headers

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
        # Seeded for this Prefect, the start skips re-checking migrations and block types, yet
        # every core block type is there (the UI's block catalogue needs them).
        marker = tmp_path / "home" / "prefect" / "caliban-seeded-for"
        assert marker.read_text() == version("prefect")
        auth = auth_headers(tmp_path / "home")
        types = httpx.post(f"{url}/block_types/filter", json={}, timeout=10, headers=auth).json()
        assert {"secret", "webhook", "docker-registry-credentials"} <= {t["slug"] for t in types}
    finally:
        backend.stop()


def test_after_a_prefect_upgrade_the_server_migrates_again(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBAN_HOME", str(tmp_path / "home"))
    paths = backend._Paths(tmp_path / "home")
    paths.prefect_home.mkdir(parents=True)
    backend._seed_marker(paths).write_text("3.0.0")  # made by an older Prefect
    env = backend._server_env(paths)
    assert "PREFECT_API_DATABASE_MIGRATE_ON_START" not in env
    backend._seed_marker(paths).write_text(version("prefect"))
    assert backend._server_env(paths)["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"


@pytest.fixture(autouse=True)
def _no_profile_api_url(monkeypatch, tmp_path):
    # A user's Prefect profile could point elsewhere; these tests need the local server.
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))


def test_a_database_of_the_users_own_is_neither_seeded_nor_left_unmigrated(tmp_path, monkeypatch):
    monkeypatch.setenv("CALIBAN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://x@h/db")
    paths = backend._Paths(tmp_path / "home")
    assert backend._seed_database(paths) is False
    assert not (paths.prefect_home / "prefect.db").exists()
    paths.prefect_home.mkdir(parents=True)
    backend._seed_marker(paths).write_text(version("prefect"))
    assert "PREFECT_API_DATABASE_MIGRATE_ON_START" not in backend._server_env(paths)
