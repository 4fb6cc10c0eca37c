"""Images and local jobs on a real Docker engine and a real registry (devtools/engine.py)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from caliban_flows.platforms.base import JobRequest, JobState
from caliban_flows.platforms.images import ImageError, build_image, push_image
from caliban_flows.platforms.local.adapter import LocalDocker
from caliban_flows.spec.dockerfile import DockerfileInputs, render_dockerfile
from caliban_flows.spec.entrypoint import Entrypoint
from caliban_flows.spec.jobspec import job_key
from tests.conftest import wait_for

REGISTRY = "127.0.0.1:5000"


def dockerfile(requirements: bool = True, entry=("python", "-m"), target="trainer.train") -> str:
    return render_dockerfile(
        DockerfileInputs(
            base_image="python:3.11-slim",
            uid=1000,
            gid=1000,
            user="tester",
            requirements_txt=requirements,
            entrypoint=Entrypoint(tuple(entry), target, "trainer"),
        )
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "train.py").write_text(
        "import sys, time\n"
        "args = sys.argv[1:]\n"
        "print('args', args, flush=True)\n"
        "if '--sleep' in args: time.sleep(float(args[args.index('--sleep') + 1]))\n"
        "sys.exit(int(args[args.index('--exit') + 1]) if '--exit' in args else 0)\n"
        f"# {uuid.uuid4()}: new content, so the engine's earlier images never match\n"
    )
    (tmp_path / "requirements.txt").write_text("six\n")
    (tmp_path / "secret.key").write_text("do not ship\n")
    (tmp_path / ".dockerignore").write_text("*.key\n")
    return tmp_path


def test_build_is_content_addressed_and_code_change_keeps_dependency_layers(docker_client, project):
    first = build_image(docker_client, project, dockerfile())
    again = build_image(docker_client, project, dockerfile())
    assert again.tag == first.tag and again.built is False

    (project / "secret.key").write_text("changed, but ignored by .dockerignore\n")
    assert build_image(docker_client, project, dockerfile()).tag == first.tag

    (project / "trainer" / "train.py").write_text(f"print('v2') # {uuid.uuid4()}\n")
    log: list[str] = []
    second = build_image(docker_client, project, dockerfile(), on_log=log.append)
    assert second.tag != first.tag and second.built is True
    text = "\n".join(log)
    assert "pip install" in text  # the step is listed...
    assert text.count("Using cache") >= 3  # ...but user, requirements and pip layers are cached
    files = docker_client.containers.run(
        second.tag, entrypoint=["ls", "-a", "/usr/app"], remove=True
    ).decode()
    assert "secret.key" not in files and "trainer" in files


def test_failed_build_carries_the_step_output(docker_client, project):
    broken = dockerfile().replace("RUN pip install", "RUN echo boom-here && false && pip install")
    with pytest.raises(ImageError) as error:
        build_image(docker_client, project, broken)
    assert "boom-here" in str(error.value)


def test_push_then_unchanged_push_uploads_nothing(docker_client, project):
    built = build_image(docker_client, project, dockerfile())
    first = push_image(docker_client, built.tag, REGISTRY)
    second = push_image(docker_client, built.tag, REGISTRY)  # its time: bench/push_unchanged.py
    assert second.reference == first.reference
    assert second.pushed is False


def test_local_jobs_run_poll_and_stay_idempotent(docker_client, project):
    image = build_image(docker_client, project, dockerfile()).tag
    local = LocalDocker(docker_client)
    xgroup = f"it-{time.time_ns()}"

    def request(args, attempt=1):
        return JobRequest(xgroup, job_key(xgroup, args), attempt, "job", image, tuple(args))

    ok, bad = request(["--exit", "0"]), request(["--exit", "3"])
    first = local.submit(ok)
    assert local.submit(ok).remote_id == first.remote_id  # same key and attempt: no new job
    local.submit(bad)
    assert local.wait(first.remote_id) == 0
    wait_for(lambda: len([j for j in local.poll(xgroup) if j.state.terminal]) == 2)
    states = {j.key: j for j in local.poll(xgroup)}
    assert states[ok.key].state is JobState.SUCCEEDED and states[ok.key].exit_code == 0
    assert states[bad.key].state is JobState.FAILED and states[bad.key].exit_code == 3
    assert b"args ['--exit', '0']" in b"".join(local.logs(first.remote_id))


def test_cancel_stops_a_long_job(docker_client, project):
    image = build_image(docker_client, project, dockerfile()).tag
    local = LocalDocker(docker_client)
    xgroup = f"it-{time.time_ns()}"
    args = ("--sleep", "300")
    job = local.submit(JobRequest(xgroup, job_key(xgroup, args), 1, "long", image, args))
    wait_for(lambda: local.poll(xgroup)[0].state is JobState.RUNNING)
    local.cancel([job.remote_id])
    assert local.poll(xgroup)[0].state.terminal


def test_docker_run_args_with_spaces_reach_the_container(docker_client, project):
    (project / "trainer" / "train.py").write_text(
        f"import os\nprint('greeting=' + os.environ['GREETING']) # {uuid.uuid4()}\n"
    )
    image = build_image(docker_client, project, dockerfile()).tag
    local = LocalDocker(docker_client)
    xgroup = f"it-{time.time_ns()}"
    run_args = ("--env", "GREETING=hello world")
    job = local.submit(
        JobRequest(xgroup, job_key(xgroup, ()), 1, "env", image, (), run_args=run_args)
    )
    assert local.wait(job.remote_id) == 0
    assert b"greeting=hello world" in b"".join(local.logs(job.remote_id))
