"""The built wheel, installed into a fresh venv outside the checkout, runs `caliban` for a
user's own folder: `--help`, `expansion`, a `cloud --dry_run`, the demo sweep on the real
engine and `caliban ui`. It proves that the package's data ships: the seeded Prefect
database, the Vertex catalog, the entry points.

The wheel is built from a copy of only what `pyproject.toml` packages. The venv gets the
wheel alone (`--no-deps`); the dependencies are the ones `make venv` installed from the
package index, seen through a `.pth` file, and `pip check` proves they satisfy what the
wheel's metadata requires. Installing them again from the index took 2 min 42 s here, most
of this test's budget; the checkout's own copy of caliban_flows is never importable there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

from tests.conftest import BIN

CHECKOUT = Path(__file__).resolve().parents[2]
DEMO_JOBS = 6  # demo/experiment.json: 3 x 2


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's bin/ with the wheel's `caliban` and `expansion` in it."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(CHECKOUT / "caliban_flows", source / "caliban_flows", ignore=ignore)
    pip = [str(BIN / "python"), "-m", "pip"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(root / "dist"),
                    str(source)], check=True, timeout=300)  # fmt: skip
    (wheel,) = (root / "dist").glob("caliban_flows-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, timeout=300)  # fmt: skip
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    deps = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}  # this .venv's
    (Path(purelib) / "caliban-deps.pth").write_text("".join(f"{d}\n" for d in sorted(deps)))
    checked = subprocess.run([*pip, "--python", str(python), "check"], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return venv / "bin"


@pytest.fixture(scope="module")
def user(installed: Path, tmp_path_factory, docker_client):
    """`caliban ...` of the wheel, typed in a copy of demo/ outside the checkout."""
    root = tmp_path_factory.mktemp("wheel-user")
    folder = root / "demo"
    shutil.copytree(CHECKOUT / "demo", folder)
    env = {**os.environ, "CALIBAN_HOME": str(root / "home"), "HOME": str(root / "user"),
           "PROJECT_ID": "", "REGION": "", "CLOUDSDK_CONFIG": str(root / "gcloud")}  # fmt: skip
    for name in ("PREFECT_API_URL", "PYTHONPATH", "VIRTUAL_ENV", "DISPLAY", "WAYLAND_DISPLAY"):
        env.pop(name, None)

    def run(program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        done = subprocess.run([str(installed / program), *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        assert done.returncode == 0, f"{program} {args}: {done.stdout}{done.stderr}"
        return done

    run.env = env
    try:
        yield run
    finally:
        subprocess.run([str(installed / "caliban"), "server", "stop"], env=env, timeout=60)


def test_the_wheel_alone_provides_caliban(installed, user):
    where = "import caliban_flows; print(caliban_flows.__file__)"
    module = user("python", "-c", where).stdout.strip()
    assert module.startswith(str(installed.parent)) and not module.startswith(str(CHECKOUT))
    assert "reproducible Docker image" in user("caliban", "--help").stdout
    expanded = user("expansion", "experiment.json").stdout
    assert len(json.loads(expanded)) == DEMO_JOBS


def test_a_cloud_dry_run_from_the_wheel(user):
    done = user("caliban", "cloud", "--dry_run", "--nogpu", "--project_id", "my-proj",
                "--experiment_config", "experiment.json", "trainer.train")  # fmt: skip
    assert done.stdout.count("Experiment arguments:") == DEMO_JOBS
    assert "n1-highcpu-32" in done.stdout  # the Vertex catalog shipped


def test_the_demo_sweep_from_the_wheel(user):
    done = user("caliban", "run", "--nogpu", "--parallel", "2", "--xgroup", "demo",
                "--experiment_config", "experiment.json", "trainer.train", timeout=280)  # fmt: skip
    assert f"xgroup 'demo': {DEMO_JOBS} jobs succeeded" in done.stderr, done.stderr
    rows = json.loads(user("caliban", "status", "--xgroup", "demo", "--format", "json").stdout)
    assert [r["state"] for r in rows] == ["SUCCEEDED"] * DEMO_JOBS

    home = Path(user.env["CALIBAN_HOME"])
    assert (home / "prefect" / "caliban-seeded-for").is_file()  # the seed database shipped
    page = user("caliban", "ui", "--xgroup", "demo").stdout.strip()
    assert f"/v2/runs/flow-run/{rows[0]['flow_run_id']}" in page
    assert httpx.get(page, headers={"Accept": "text/html"}, timeout=30).status_code == 200

    # What `make demo` ends with: the sweep's args and the accuracy each job wrote.
    table = user("caliban", "results", "--xgroup", "demo", "--sort", "accuracy")
    lines = table.stdout.splitlines()
    assert lines[0].split()[:8] == ["name", "state", "attempt", "metrics", "C", "max_iter",
                                    "seed", "accuracy"], table.stdout  # fmt: skip
    assert len(lines) == 1 + DEMO_JOBS
    results = json.loads(user("caliban", "results", "--xgroup", "demo", "--sort", "accuracy",
                              "--format", "json").stdout)  # fmt: skip
    assert sorted((r["C"], r["seed"]) for r in results) == [
        (c, s) for c in (0.01, 0.1, 1.0) for s in (0, 1)
    ]
    accuracies = [r["accuracy"] for r in results]
    assert accuracies == sorted(accuracies, reverse=True)
    assert all(0.5 < a <= 1.0 for a in accuracies)  # a real classifier's score on digits
    assert {r["metrics"] for r in results} == {"final"}
