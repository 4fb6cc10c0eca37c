"""Habits a Caliban user brings: Abseil flagfiles and general flags, `.calibanconfig.json`
keys with no effect, and help texts that say what each command's flags do."""

from __future__ import annotations

import re

import pytest

INERT = ("build_time_credentials", "default_mode", "gcloud", "julia_version", "mlflow_config", "uv")


def docker_line(out: str) -> str:
    [line] = [x for x in out.splitlines() if x.startswith("Job 1 - Docker: ")]
    return line


def test_abseil_flag_equals_value_line_stays_one_argument(caliban, project):
    (project / "caliban.flags").write_text(
        "# written for Caliban, read by Abseil\n"
        "--docker_run_args=--volume /a:/b --env X=1 --ulimit nofile=1024:2048\n"
        "\n"
        "// the group, with a space, as Abseil kept it\n"
        "--xgroup=my group\n"
        "--flagfile=cpu.flags\n"
    )
    (project / "cpu.flags").write_text("--nogpu\n")
    got = caliban("run", "--dry_run", "--flagfile", "caliban.flags", "trainer.train")
    assert got.code == 0, got.err
    assert "in xgroup 'my group', CPU mode" in got.out
    assert "--volume /a:/b --env X --ulimit nofile=1024:2048 dry_run_tag" in docker_line(got.out)


def test_split_flag_value_lines_keep_working(caliban, project):
    (project / "split.flags").write_text(
        '--docker_run_args "--volume /a:/b --env X=1"\n--xgroup g2\n--nogpu\n'
    )
    got = caliban("run", "-flagfile=split.flags", "--dry_run", "trainer.train")
    assert got.code == 0, got.err
    assert "in xgroup 'g2', CPU mode" in got.out
    assert "--volume /a:/b --env X dry_run_tag" in docker_line(got.out)


COMMANDS = [
    ("shell",), ("notebook",), ("build",), ("run",), ("cloud",), ("status",), ("stop",),
    ("resubmit",), ("serve",), ("deploy",), ("cluster",), ("cluster", "ls"),
    ("cluster", "create"), ("cluster", "delete"), ("cluster", "job", "submit"),
    ("cluster", "job", "submit_file"), ("cluster", "job", "logs"), (),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "caliban")
def test_general_flags_are_listed_by_every_command(caliban, command):
    got = caliban(*command, "--help")
    assert got.code == 0, got.err
    assert re.search(r"^\s+-v, --verbosity N\s", got.out, re.M), got.out
    assert re.search(r"^\s+--flagfile FILE\s", got.out, re.M), got.out


def test_general_flags_are_accepted_anywhere_a_caliban_user_put_them(caliban, project):
    (project / "v.flags").write_text("--verbosity=1\n--nogpu\n")
    for args in (
        ["-v", "1", "run", "--dry_run", "--nogpu", "trainer.train"],
        ["run", "--verbosity", "-1", "--dry_run", "--nogpu", "trainer.train"],
        ["run", "--flagfile", "v.flags", "--dry_run", "trainer.train"],
        ["cloud", "-v", "0", "--dry_run", "--nogpu", "--project_id", "p", "trainer.train"],
    ):
        got = caliban(*args)
        assert got.code == 0, (args, got.err)
        assert "Dry run:" in got.out
    bad = caliban("run", "-v", "loud", "--dry_run", "trainer.train")
    assert bad.code == 2 and "--verbosity" in bad.err and bad.err.count("\n") == 1


def test_each_key_with_no_effect_gets_one_warning_line(caliban, project):
    (project / ".calibanconfig.json").write_text(
        '{"apt_packages": ["curl"], "build_time_credentials": true, "default_mode": "cpu",'
        ' "gcloud": {"project_id": "p"}, "julia_version": "1.5", "uv": {},'
        ' "mlflow_config": {"project": "p", "region": "r", "db": "d", "user": "u",'
        ' "password": "pw", "artifact_root": "a"}}'
    )
    for args in (
        ["run", "--dry_run", "--nogpu", "trainer.train"],
        ["cloud", "--dry_run", "--nogpu", "--project_id", "p", "trainer.train"],
    ):
        got = caliban(*args)
        assert got.code == 0, got.err
        warnings = [line for line in got.err.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == len(INERT), got.err
        for key, line in zip(INERT, warnings):
            assert f".calibanconfig.json: '{key}' has no effect" in line
        assert "curl" not in got.err  # a key that works is not warned about


def test_no_warning_without_such_keys(caliban, project):
    (project / ".calibanconfig.json").write_text('{"apt_packages": ["curl"]}')
    got = caliban("run", "--dry_run", "--nogpu", "trainer.train")
    assert got.code == 0 and "warning" not in got.err, got.err


def _option_help(out: str, flag: str) -> str:
    """The help text of `flag` in a command's --help, joined onto one line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(flag))
    text = [lines[start]]
    for line in lines[start + 1 :]:
        if line.strip().startswith("-"):
            break
        text.append(line)
    return " ".join(" ".join(text).split())


@pytest.mark.parametrize(
    "command, flag, says",
    [
        (("status",), "--xgroup", "Show this experiment group only"),
        (("stop",), "--dry_run", "List the jobs it would stop; stop nothing."),
        (("resubmit",), "--dry_run", "List the jobs it would rerun"),
        (("resubmit",), "--xgroup", "whose jobs to rerun"),
        (("resubmit",), "--project_id", "rerun in the project it ran in"),
        (("cluster", "job", "submit_file"), "--dry_run", "submit nothing"),
        (("run",), "--cloud_key", "mounted read-only into the container"),
        (("build",), "--cloud_key", "left out of the image"),
    ],
)
def test_help_says_what_the_flag_does_there(caliban, command, flag, says):
    got = caliban(*command, "--help")
    assert got.code == 0, got.err
    assert says in _option_help(got.out, flag)


@pytest.mark.parametrize("command", [("status",), ("stop",), ("resubmit",),
                                     ("cluster", "job", "submit_file")])  # fmt: skip
def test_no_submit_command_help_where_nothing_is_submitted(caliban, command):
    text = " ".join(caliban(*command, "--help").out.split())
    assert "to add these jobs to" not in text
    if command != ("resubmit",):  # resubmit does rebuild and submit
        assert "build and submit" not in text
