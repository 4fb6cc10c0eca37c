"""`caliban --help`, `expansion` and every --dry_run must not load the heavy packages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# `google` and `google.cloud` themselves are namespace packages that site's .pth files load in
# every interpreter; the cost is in the client libraries below them.
HEAVY = (
    "prefect", "docker", "kubernetes", "pandas", "grpc", "fastapi", "sqlalchemy",
    "google.cloud.aiplatform", "google.cloud.aiplatform_v1", "google.api_core", "google.auth",
    "google.protobuf",
)  # fmt: skip

# Runs a console entry point in-process, then reports which heavy top-level packages loaded.
PROBE = """
import contextlib, io, json, sys
from caliban_flows.cli import expansion, main
entry = {"caliban": main.main, "expansion": expansion.main}[sys.argv[1]]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = entry(sys.argv[2:])
    except SystemExit as e:
        code = e.code
wanted = json.loads(sys.argv[0])
heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in wanted))
print(json.dumps({"code": code, "heavy": heavy}))
"""

COMMANDS = [
    ["caliban", "--help"],
    ["caliban", "cloud", "--help"],
    ["expansion", "exp.json", "--print_flags"],
    ["caliban", "run", "--dry_run", "--experiment_config", "exp.json", "trainer.train"],
    ["caliban", "cloud", "--dry_run", "--project_id", "p", "--experiment_config", "exp.json",
     "--gpu_spec", "2xV100", "trainer.train", "--", "--x", "1"],
    ["caliban", "cluster", "job", "submit", "--dry_run", "--experiment_config", "exp.json",
     "trainer.train"],
]  # fmt: skip


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_no_heavy_imports(project, argv):
    (project / "exp.json").write_text('{"lr": [0.1, 0.01], "[a,b]": [[1, 2]]}')
    (project / ".calibanconfig.json").write_text('{"apt_packages": ["curl"]}')
    done = subprocess.run(
        [sys.executable, "-c", PROBE.replace("sys.argv[0]", repr(json.dumps(HEAVY))), *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["code"] in (0, None)
    assert report["heavy"] == []
