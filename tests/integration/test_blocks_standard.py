"""Prefect's own standard checks for our blocks, and their registration by module."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest
from prefect.testing.standard_test_suites import BlockStandardTestSuite

from caliban_flows.blocks import ClusterSettings, VertexSettings
from tests.conftest import BIN
from tests.prefect_http import auth_env, auth_headers


class TestVertexSettings(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return VertexSettings

    def test_has_a_valid_image(self, block) -> None:
        # Prefect's version downloads the logo; nothing can be downloaded here, and we ship
        # no logo, so the UI shows its default one.
        assert block._logo_url is None


class TestClusterSettings(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return ClusterSettings

    def test_has_a_valid_image(self, block) -> None:
        assert block._logo_url is None  # as above: no download, no logo of ours


def test_prefect_block_register_finds_our_blocks(tmp_path):
    env = {**os.environ, "CALIBAN_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    start = "from caliban_flows.server import backend; print(backend.use_backend())"
    url = subprocess.run([str(BIN / "python"), "-c", start], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()  # fmt: skip
    try:
        env["PREFECT_API_URL"] = url
        env.update(auth_env(env))  # Prefect's CLI, given the URL, needs the home's secret too
        registered = subprocess.run(
            [str(BIN / "prefect"), "block", "register", "-m", "caliban_flows.blocks"],
            env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert registered.returncode == 0, registered.stdout + registered.stderr
        types = httpx.post(
            f"{url}/block_types/filter", json={}, timeout=10, headers=auth_headers(env)
        ).json()
        assert {"caliban-vertex-settings", "caliban-cluster-settings"} <= {t["slug"] for t in types}
    finally:
        subprocess.run([str(BIN / "python"), "-m", "caliban_flows.server.backend", "stop"], env=env,
                       timeout=60)  # fmt: skip
