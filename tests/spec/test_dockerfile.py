"""Dockerfile rendering: exact snapshots plus properties that must hold for every input.

Snapshots live in tests/spec/snapshots/dockerfile/; regenerate them with
`UPDATE_SNAPSHOTS=1 pytest tests/spec/test_dockerfile.py` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from caliban_flows.spec.dockerfile import (
    DEFAULT_CPU_BASE_IMAGE,
    DEFAULT_GPU_BASE_IMAGE,
    DockerfileInputs,
    JupyterSpec,
    default_base_image,
    render_dockerfile,
    setup_extras,
)
from caliban_flows.spec.entrypoint import Entrypoint
from caliban_flows.spec.errors import SpecError

SNAPSHOTS = Path(__file__).parent / "snapshots" / "dockerfile"

MODULE = Entrypoint(("python", "-m"), "trainer.train", "trainer")
SCRIPT = Entrypoint(("python",), "trainer/train.py", "trainer")
ROOT_SCRIPT = Entrypoint(("python",), "mycode.py", ".")
BASH = Entrypoint(("/bin/bash",), "scripts/run.sh", "scripts")
CONDA_BASE = "us-docker.pkg.dev/deeplearning-platform-release/gcr.io/base-cpu.py310"


def inputs(gpu: bool = False, **kwargs) -> DockerfileInputs:
    kwargs.setdefault("base_image", default_base_image(gpu))
    kwargs.setdefault("uid", 1000)
    kwargs.setdefault("gid", 1000)
    kwargs.setdefault("user", "alice")
    return DockerfileInputs(**kwargs)


CASES: dict[str, DockerfileInputs] = {
    "cpu_module_bare": inputs(entrypoint=MODULE),
    "cpu_module_requirements": inputs(requirements_txt=True, entrypoint=MODULE),
    "gpu_module_requirements": inputs(gpu=True, requirements_txt=True, entrypoint=MODULE),
    "cpu_script_in_folder": inputs(requirements_txt=True, entrypoint=SCRIPT),
    "cpu_script_at_root": inputs(requirements_txt=True, entrypoint=ROOT_SCRIPT),
    "cpu_bash_script": inputs(entrypoint=BASH),
    "cpu_setup_py": inputs(setup_py=True, entrypoint=MODULE),
    "cpu_setup_py_extras": inputs(
        setup_py=True, setup_extras=setup_extras(False, ["tf", "logging"]), entrypoint=MODULE
    ),
    "gpu_setup_py_extras": inputs(
        gpu=True, setup_py=True, setup_extras=setup_extras(True, ["tf"]), entrypoint=MODULE
    ),
    "cpu_pyproject_setup_cfg": inputs(
        pyproject_toml=True,
        setup_cfg=True,
        setup_py=True,
        setup_extras=("cpu",),
        entrypoint=MODULE,
    ),
    "cpu_requirements_and_setup_py": inputs(
        requirements_txt=True, setup_py=True, setup_extras=("cpu",), entrypoint=MODULE
    ),
    "conda_environment_yml": inputs(
        base_image=CONDA_BASE, environment_yml=True, requirements_txt=True, entrypoint=MODULE
    ),
    "cpu_extra_dirs": inputs(
        requirements_txt=True,
        extra_dirs=("data/large", "./models/", "my data", "data/large"),
        entrypoint=MODULE,
    ),
    "cpu_apt_packages": inputs(
        apt_packages=("libxext6", "curl", "libsm6", "curl"), entrypoint=MODULE
    ),
    "custom_base_image": inputs(
        base_image="gcr.io/my-project/my-image:gpu-cuda12", requirements_txt=True, entrypoint=MODULE
    ),
    "large_uid": inputs(uid=735994, gid=89939, user="totoro", entrypoint=BASH),
    "shell_bash": inputs(requirements_txt=True),
    "shell_zsh": inputs(shell="zsh", apt_packages=("curl",), requirements_txt=True),
    "shell_gpu": inputs(gpu=True, requirements_txt=True),
    "notebook_jupyter": inputs(requirements_txt=True, jupyter=JupyterSpec()),
    "notebook_lab_version_gpu": inputs(
        gpu=True, requirements_txt=True, jupyter=JupyterSpec(lab=True, version="4.2.5")
    ),
    "gpu_everything": inputs(
        gpu=True,
        base_image="us-docker.pkg.dev/deeplearning-platform-release/gcr.io/base-cu124.py310",
        apt_packages=("libsm6", "libxext6"),
        environment_yml=True,
        requirements_txt=True,
        setup_py=True,
        setup_extras=setup_extras(True, ["tf", "logging_extras"]),
        extra_dirs=("data", "configs"),
        entrypoint=MODULE,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_snapshot(name):
    text = render_dockerfile(CASES[name])
    path = SNAPSHOTS / f"{name}.Dockerfile"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no snapshot {path}; run with UPDATE_SNAPSHOTS=1 and review it"
    assert text == path.read_text()


def test_no_stale_snapshots():
    names = {p.stem for p in SNAPSHOTS.glob("*.Dockerfile")}
    assert names == set(CASES)


# --- properties of every rendered Dockerfile ------------------------------------------------

DEPENDENCY_FILES = {
    "requirements.txt",
    "setup.py",
    "setup.cfg",
    "pyproject.toml",
    "environment.yml",
}


def lines_of(text: str) -> list[str]:
    return text.splitlines()


def copy_sources(line: str) -> list[str]:
    args = line.split(None, 1)[1]
    args = re.sub(r"^--chown=\S+\s+", "", args)
    if args.startswith("["):
        return json.loads(args)[:-1]
    return args.split()[:-1]


def is_install(line: str) -> bool:
    return line.startswith("RUN ") and any(
        word in line for word in ("pip install", "conda env update", "apt-get")
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_dependencies_install_before_any_code_is_copied(name):
    lines = lines_of(render_dockerfile(CASES[name]))
    code_copies = [
        i
        for i, line in enumerate(lines)
        if line.startswith("COPY ") and not set(copy_sources(line)) <= DEPENDENCY_FILES
    ]
    installs = [i for i, line in enumerate(lines) if is_install(line)]
    if code_copies and installs:
        assert max(installs) < min(code_copies)


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_credentials_in_the_image(name):
    text = render_dockerfile(CASES[name])
    for line in lines_of(text):
        lowered = line.lower()
        assert "credential" not in lowered
        assert "google_application" not in lowered
        assert ".json" not in lowered
        assert "gcloud" not in lowered
        assert ".creds" not in lowered
        assert "adc" not in lowered.split()


@pytest.mark.parametrize("name", sorted(CASES))
def test_user_ids_and_order(name):
    inp = CASES[name]
    text = render_dockerfile(inp)
    lines = lines_of(text)
    assert lines[0] == f"FROM {inp.base_image}"
    assert f"--uid {inp.uid} --gid {inp.gid}" in text
    assert f"groupadd --gid {inp.gid}" in text
    assert "useradd" in text and "--no-log-init" in text
    assert f"ENV HOME=/home/{inp.user}" in lines
    assert "WORKDIR /usr/app" in lines
    user = lines.index(f"USER {inp.uid}:{inp.gid}")
    # Everything is installed as root; the switch to the caller's ids comes last.
    assert all(not line.startswith(("RUN ", "COPY ")) for line in lines[user:])
    assert lines.count(f"USER {inp.uid}:{inp.gid}") == 1
    assert "ENV PYTHONUNBUFFERED=1" in lines[user:]
    for line in lines:
        if line.startswith("COPY "):
            assert line.startswith(f"COPY --chown={inp.uid}:{inp.gid} ")


@pytest.mark.parametrize("name", sorted(CASES))
def test_entrypoint_and_code_copy(name):
    inp = CASES[name]
    lines = lines_of(render_dockerfile(inp))
    entrypoints = [line for line in lines if line.startswith("ENTRYPOINT")]
    if inp.entrypoint is None:
        assert entrypoints == []
        assert not any(
            line.startswith("COPY ") and not set(copy_sources(line)) <= DEPENDENCY_FILES
            for line in lines
        )
    else:
        assert entrypoints == [f"ENTRYPOINT {json.dumps(inp.entrypoint.command())}"]
        assert lines[-1] == entrypoints[0]
        code = [line for line in lines if line.startswith("COPY ")][-1]
        assert copy_sources(code) == [inp.entrypoint.package_path]


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic(name):
    inp = CASES[name]
    text = render_dockerfile(inp)
    assert text == render_dockerfile(DockerfileInputs(**vars(inp)))
    assert text.endswith("\n") and not text.endswith("\n\n")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX sh")
@pytest.mark.parametrize("name", sorted(CASES))
def test_run_commands_are_valid_shell(name):
    text = render_dockerfile(CASES[name]).replace("\\\n", " ")
    for line in text.splitlines():
        if line.startswith("RUN "):
            result = subprocess.run(["sh", "-n", "-c", line[4:]], capture_output=True, text=True)
            assert result.returncode == 0, f"{line}: {result.stderr}"


# --- specific behaviour -----------------------------------------------------------------------


def test_default_base_images():
    assert default_base_image(False) == DEFAULT_CPU_BASE_IMAGE == "python:3.11-slim"
    assert default_base_image(True) == DEFAULT_GPU_BASE_IMAGE
    assert DEFAULT_GPU_BASE_IMAGE.startswith("nvidia/cuda:")


def test_gpu_default_gets_python_and_cpu_default_does_not():
    gpu = render_dockerfile(inputs(gpu=True, entrypoint=MODULE))
    cpu = render_dockerfile(inputs(entrypoint=MODULE))
    assert "python3 -m venv /opt/venv" in gpu
    assert "ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH" in gpu
    assert "venv" not in cpu
    custom = render_dockerfile(inputs(base_image="nvidia/cuda:12.4.1-runtime-ubuntu22.04"))
    assert "venv" not in custom  # a custom base is taken as is


def test_setup_extras_mode_first_without_duplicates():
    assert setup_extras(True, []) == ("gpu",)
    assert setup_extras(False, ["tf"]) == ("cpu", "tf")
    assert setup_extras(True, ["tf", "gpu", "logging", "tf"]) == ("gpu", "tf", "logging")


@pytest.mark.parametrize("bad", ["", "a b", "x]", "-x", "tf,gpu"])
def test_setup_extras_rejects_bad_names(bad):
    with pytest.raises(SpecError, match="extra"):
        setup_extras(False, [bad])


def test_setup_install_line():
    text = render_dockerfile(inputs(setup_py=True, setup_extras=("gpu", "tf")))
    assert 'RUN pip install --no-cache-dir ".[gpu,tf]" \\' in text
    plain = render_dockerfile(inputs(setup_py=True))
    assert "RUN pip install --no-cache-dir . \\" in plain


def test_pyproject_alone_triggers_the_package_install():
    text = render_dockerfile(inputs(pyproject_toml=True, setup_extras=("cpu",)))
    assert "COPY --chown=1000:1000 pyproject.toml /usr/app/" in text
    assert '".[cpu]"' in text


def test_apt_packages_are_sorted_so_order_does_not_change_the_text():
    a = render_dockerfile(inputs(apt_packages=("libsm6", "curl")))
    b = render_dockerfile(inputs(apt_packages=("curl", "libsm6", "curl")))
    assert a == b
    assert "        curl libsm6 \\" in a
    assert "DEBIAN_FRONTEND=noninteractive" in a and "--no-install-recommends" in a
    assert "rm -rf /var/lib/apt/lists/*" in a


def test_zsh_is_installed_once():
    text = render_dockerfile(inputs(shell="zsh", apt_packages=("zsh", "curl")))
    assert "        curl zsh \\" in text
    assert "zsh" not in render_dockerfile(inputs(shell="bash"))


def test_extra_dirs_keep_their_order_and_appear_once():
    text = render_dockerfile(inputs(extra_dirs=("b", "a", "./b/", "c/d"), entrypoint=MODULE))
    copies = [line for line in lines_of(text) if line.startswith("COPY ")]
    assert copies == [
        "COPY --chown=1000:1000 b /usr/app/b",
        "COPY --chown=1000:1000 a /usr/app/a",
        "COPY --chown=1000:1000 c/d /usr/app/c/d",
        "COPY --chown=1000:1000 trainer /usr/app/trainer",
    ]


def test_dir_with_a_space_uses_the_json_form():
    text = render_dockerfile(inputs(extra_dirs=("my data",)))
    assert 'COPY --chown=1000:1000 ["my data", "/usr/app/my data"]' in text


def test_root_level_code_copies_the_whole_project():
    text = render_dockerfile(inputs(entrypoint=ROOT_SCRIPT))
    assert "COPY --chown=1000:1000 . /usr/app/" in lines_of(text)


def test_environment_yml_needs_a_conda_base():
    for gpu in (False, True):
        with pytest.raises(SpecError) as info:
            render_dockerfile(inputs(gpu=gpu, environment_yml=True))
        message = str(info.value)
        assert "\n" not in message
        assert "conda" in message and default_base_image(gpu) in message
    text = render_dockerfile(inputs(base_image=CONDA_BASE, environment_yml=True))
    assert "RUN conda env update --quiet --name base --file environment.yml \\" in text


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"base_image": "two words"}, "base image"),
        ({"base_image": ""}, "base image"),
        ({"base_image": "img-{}"}, "base image"),
        ({"uid": -1}, "uid"),
        ({"gid": 2**32}, "gid"),
        ({"uid": True}, "uid"),
        ({"user": "a b"}, "user name"),
        ({"user": ""}, "user name"),
        ({"user": "x;rm"}, "user name"),
        ({"apt_packages": ("curl; rm -rf /",)}, "apt package"),
        ({"apt_packages": ("$(id)",)}, "apt package"),
        ({"setup_extras": ("a b",)}, "extra"),
        ({"shell": "fish"}, "shell 'fish'"),
        ({"jupyter": JupyterSpec(version="1; rm")}, "jupyter version"),
        ({"extra_dirs": ("/abs",)}, "relative"),
        ({"extra_dirs": ("../up",)}, "relative"),
        ({"extra_dirs": ("a/../../b",)}, "relative"),
        ({"extra_dirs": ("$HOME",)}, "COPY"),
        ({"extra_dirs": ("data*",)}, "COPY"),
        ({"entrypoint": Entrypoint(("python",), "x.py", "../x")}, "code directory"),
    ],
)
def test_bad_inputs_are_one_line_spec_errors(changes, match):
    with pytest.raises(SpecError, match=re.escape(match)) as info:
        render_dockerfile(inputs(**changes))
    assert "\n" not in str(info.value)


def test_jupyter_requirement():
    assert JupyterSpec().requirement == "jupyter"
    assert JupyterSpec(lab=True).requirement == "jupyterlab"
    assert JupyterSpec(version="1.0.0").requirement == "jupyter==1.0.0"
    text = render_dockerfile(inputs(jupyter=JupyterSpec(lab=True, version="4.2.5")))
    assert "RUN pip install --no-cache-dir jupyterlab==4.2.5" in lines_of(text)


def test_root_user_is_fine():
    text = render_dockerfile(inputs(uid=0, gid=0, user="root"))
    assert "USER 0:0" in text and "ENV HOME=/home/root" in text
