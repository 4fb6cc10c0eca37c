"""Caliban's rules for the `module` argument, checked against real files in a temp dir."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from caliban_flows.spec.entrypoint import Entrypoint, resolve_entrypoint
from caliban_flows.spec.errors import SpecError

FILES = (
    "trainer/__init__.py",
    "trainer/train.py",
    "mycode.py",
    "run.sh",
    "scripts/go.sh",
    "pkg/sub/mod.py",
    "Makefile",
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in FILES:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# test file\n")
    return tmp_path


def resolve(project: Path, module: str) -> Entrypoint:
    return resolve_entrypoint(module, is_file=lambda p: (project / p).is_file(), cwd=str(project))


@pytest.mark.parametrize(
    ("module", "executable", "target", "package_path"),
    [
        ("trainer.train", ("python", "-m"), "trainer.train", "trainer"),
        ("trainer/train.py", ("python",), "trainer/train.py", "trainer"),
        ("./trainer/train.py", ("python",), "trainer/train.py", "trainer"),
        ("trainer//train.py", ("python",), "trainer/train.py", "trainer"),
        ("mycode", ("python", "-m"), "mycode", "."),
        ("mycode.py", ("python",), "mycode.py", "."),
        ("./mycode.py", ("python",), "mycode.py", "."),
        ("run.sh", ("/bin/bash",), "run.sh", "."),
        ("scripts/go.sh", ("/bin/bash",), "scripts/go.sh", "scripts"),
        ("Makefile", ("/bin/bash",), "Makefile", "."),
        ("pkg.sub.mod", ("python", "-m"), "pkg.sub.mod", "pkg"),
        ("pkg/sub/mod.py", ("python",), "pkg/sub/mod.py", "pkg"),
    ],
)
def test_resolves_like_caliban(project, module, executable, target, package_path):
    ep = resolve(project, module)
    assert ep == Entrypoint(executable, target, package_path)


def test_command_appends_args(project):
    assert resolve(project, "trainer.train").command(["--lr", "0.1"]) == [
        "python",
        "-m",
        "trainer.train",
        "--lr",
        "0.1",
    ]
    assert resolve(project, "trainer/train.py").command() == ["python", "trainer/train.py"]
    assert resolve(project, "run.sh").command(("--x",)) == ["/bin/bash", "run.sh", "--x"]


def test_script_path(project):
    assert resolve(project, "pkg.sub.mod").script_path == "pkg/sub/mod.py"
    assert resolve(project, "mycode").script_path == "mycode.py"
    assert resolve(project, "run.sh").script_path == "run.sh"


def test_existing_file_wins_over_module_reading(project):
    # A file whose name looks dotted runs as that file, as in Caliban.
    (project / "job.v2").write_text("echo hi\n")
    assert resolve(project, "job.v2") == Entrypoint(("/bin/bash",), "job.v2", ".")


def test_entrypoint_is_frozen(project):
    ep = resolve(project, "trainer.train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ep.target = "x"  # type: ignore[misc]


def test_missing_module_names_both_candidates(project):
    with pytest.raises(SpecError) as info:
        resolve(project, "trainer.trian")
    assert str(info.value).startswith(
        f"module 'trainer.trian' not found: neither 'trainer.trian' nor 'trainer/trian.py' "
        f"exists in {project}"
    )


def test_missing_file_path(project):
    with pytest.raises(SpecError) as info:
        resolve(project, "trainer/trian.py")
    assert str(info.value).startswith(
        f"module 'trainer/trian.py' not found: 'trainer/trian.py' does not exist in {project}"
    )


def test_dotted_name_ending_in_py_is_not_converted(project):
    # "trainer.train.py" must not become trainer/train/py.py.
    with pytest.raises(SpecError, match=re.escape("'trainer.train.py' does not exist")):
        resolve(project, "trainer.train.py")


def test_directory_is_not_a_module(project):
    with pytest.raises(SpecError, match="module 'trainer' not found"):
        resolve(project, "trainer")


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        ("/etc/passwd", "absolute path"),
        ("../other/train.py", "outside"),
        ("trainer/../mycode.py", "outside"),
        ("..", "outside"),
        ("", "empty"),
        ("   ", "empty"),
        (".", "directory"),
        ("./", "directory"),
    ],
)
def test_rejects_paths_outside_the_project(project, module, reason):
    with pytest.raises(SpecError, match=reason) as info:
        resolve(project, module)
    assert "\n" not in str(info.value)


def test_errors_are_one_line(project):
    for module in ("nope", "a/b/c.py", "x.y.z"):
        with pytest.raises(SpecError) as info:
            resolve(project, module)
        assert "\n" not in str(info.value)
        assert "trainer.train" in str(info.value)  # says what a valid argument looks like
