"""Make caliban's seed database for the embedded Prefect server.

A fresh Prefect home spends most of its first start (about 8 of 12 s here) running Prefect's
database migrations and registering block types. The result is the same on every machine
for a given Prefect version, so we ship it, gzipped, and seed new homes with it
(`caliban_flows.server.backend`). Run this again whenever the pinned Prefect version changes:

    .venv/bin/python -m devtools.prefect_template
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "caliban_flows" / "data"


def template_path(prefect_version: str) -> Path:
    return DATA / f"prefect-{prefect_version}.db.gz"


def make() -> Path:
    prefect_version = version("prefect")
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("PREFECT_API_URL", None)
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", "4399"],
            env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get("http://127.0.0.1:4399/api/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("the Prefect server did not become healthy")
        finally:
            server.terminate()
            server.wait(timeout=60)
        source = sqlite3.connect(home / "prefect.db")
        packed = home / "packed.db"
        target = sqlite3.connect(packed)
        source.backup(target)
        source.close()
        target.execute("PRAGMA journal_mode=DELETE")
        target.execute("VACUUM")
        target.close()
        out = template_path(prefect_version)
        out.parent.mkdir(parents=True, exist_ok=True)
        for old in out.parent.glob("prefect-*.db.gz"):
            old.unlink()
        with open(packed, "rb") as f, gzip.GzipFile(out, "wb", mtime=0) as gz:
            gz.write(f.read())
    return out


if __name__ == "__main__":
    print(make())
