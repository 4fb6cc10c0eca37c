# ruff: noqa: F811 (the fixtures imported below are used by name, as pytest passes them)
"""One experiment group, several entry points and platforms, as Caliban allowed.

An experiment is what runs (the project folder or image, and the entry point) with its args;
a job is one run of an experiment on one platform. Submissions of different modules or
platforms into one group never replace each other, and resubmit reruns each job by its own
recipe, on its own platform. Local jobs run on the real dockerd; Vertex jobs on the emulator,
which pulls the pushed image and runs it there too.
"""

from __future__ import annotations

import json
import uuid

from tests.conftest import wait_for
from tests.e2e.test_vertex_e2e import project, real, simulated, status  # noqa: F401

SCRIPT = """\
import sys
args = sys.argv[1:]
print("{name} with", args, flush=True)
sys.exit(int(args[args.index("--exit") + 1]) if "--exit" in args else 0)
"""
FIXED = "import sys\nprint('{name} fixed', sys.argv[1:], flush=True)\n"


def _write_scripts(project, text: str) -> None:
    (project / "a.py").write_text(text.format(name="a.py"))
    (project / "trainer" / "train.py").write_text(text.format(name="trainer.train"))


def _submit_three_ways(cli, xgroup: str) -> list[int]:
    sweep = ("--xgroup", xgroup, "--experiment_config", "exp.json")
    return [
        cli("run", "--nogpu", *sweep, "a.py").returncode,
        cli("run", "--nogpu", *sweep, "trainer.train").returncode,
        cli("cloud", "--nogpu", *sweep, "trainer.train").returncode,
    ]


def test_a_group_keeps_every_module_and_platform_submitted_to_it(simulated, project):
    _, cli = simulated
    xgroup = f"mix-{uuid.uuid4().hex[:8]}"
    _write_scripts(project, SCRIPT)
    (project / "exp.json").write_text('{"lr": [0.1, 0.01]}')
    assert _submit_three_ways(cli, xgroup) == [0, 0, 0]

    rows = status(cli, xgroup)
    assert len(rows) == 6
    assert sorted(r["platform"] for r in rows) == ["local"] * 4 + ["vertex"] * 2
    experiments: dict[str, set[str]] = {}
    for r in rows:
        experiments.setdefault(r["experiment"], set()).add(r["platform"])
    assert len(experiments) == 4
    # The two trainer.train experiments each ran locally and on Vertex; a.py's only locally.
    assert sorted(map(sorted, experiments.values())) == [
        ["local"],
        ["local"],
        ["local", "vertex"],
        ["local", "vertex"],
    ]
    commands = {" ".join(r["command"]) for r in rows}
    assert len(commands) == 2 and any("a.py" in c for c in commands)

    text = cli("status", "--xgroup", xgroup)
    assert text.returncode == 0, text.stderr
    assert text.stdout.count("  experiment ") == 4
    assert text.stdout.count("    job ") == 6


def test_resubmit_reruns_each_job_by_its_own_recipe_on_its_own_platform(
    real, project, docker_client
):
    emulator, cli = real
    xgroup = f"remix-{uuid.uuid4().hex[:8]}"
    _write_scripts(project, SCRIPT)
    (project / "exp.json").write_text('{"exit": [0, 3]}')
    assert _submit_three_ways(cli, xgroup) == [1, 1, 0]  # local runs end with their jobs
    rows = wait_for(lambda: (r := status(cli, xgroup)) and len(r) == 6 and all(
        x["state"] in ("SUCCEEDED", "FAILED") for x in r) and r)  # fmt: skip
    failed = {r["key"]: r for r in rows if r["state"] == "FAILED"}
    assert sorted(r["platform"] for r in failed.values()) == ["local", "local", "vertex"]
    assert all(r["args"] == ["--exit", "3"] for r in failed.values())

    _write_scripts(project, FIXED)
    redo = cli("resubmit", "--xgroup", xgroup, "--yes")
    assert redo.returncode == 0, redo.stdout + redo.stderr

    rows = wait_for(lambda: (r := status(cli, xgroup)) and all(
        x["state"] == "SUCCEEDED" for x in r) and r)  # fmt: skip
    assert len(rows) == 6
    for r in rows:
        before = failed.get(r["key"])
        assert (r["attempt"], r["attempts"]) == ((2, 2) if before else (1, 1)), r
        if before:  # the same command and platform as the failed attempt
            assert (r["command"], r["platform"]) == (before["command"], before["platform"])
    vertex_key = next(k for k, r in failed.items() if r["platform"] == "vertex")
    # The Vertex job reran as a new CustomJob on the emulator, never as a local container.
    attempts = sorted(
        int(j.labels["caliban_attempt"])
        for j in emulator.jobs()
        if j.labels.get("caliban_job_key") == vertex_key
    )
    assert attempts == [1, 2]
    local = docker_client.containers.list(
        all=True, filters={"label": [f"caliban.job_key={vertex_key}"]}
    )
    assert local == []
    # Each local rerun ran its own script.
    for key, before in failed.items():
        if before["platform"] != "local":
            continue
        [container] = docker_client.containers.list(
            all=True, filters={"label": [f"caliban.job_key={key}", "caliban.attempt=2"]}
        )
        name = "a.py" if "a.py" in " ".join(before["command"]) else "trainer.train"
        assert f"{name} fixed" in container.logs().decode()
    assert json.loads(json.dumps(rows))  # plain JSON, as printed
