"""`expansion` as a user runs it, against golden files produced by Caliban 0.4.2 itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
CONFIGS = ["doc_expansion", "broadcast", "list_of_configs", "compound"]
MODES = {"json.out": [], "pprint.out": ["--pprint"], "flags.out": ["--print_flags"]}


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("suffix", list(MODES))
def test_output_equals_caliban_042(expansion, project, name, suffix):
    shutil.copy(GOLDEN / f"{name}.json", project / "exp.json")
    got = expansion("exp.json", *MODES[suffix])
    assert got.code == 0, got.err
    assert got.out == (GOLDEN / f"{name}.{suffix}").read_text()


@pytest.mark.parametrize("word", ["stdin", "STDIN", "StdIn"])
def test_reads_stdin_in_any_case(expansion, word):
    text = (GOLDEN / "broadcast.json").read_text()
    got = expansion(word, "--print_flags", stdin=text)
    assert got.code == 0, got.err
    assert got.out == (GOLDEN / "broadcast.flags.out").read_text()


def test_first_key_varies_fastest_as_in_caliban_042(expansion, project):
    (project / "e.json").write_text('{"a": [1, 2], "b": [3, 4]}')
    got = expansion("e.json", "--print_flags")
    assert got.out.splitlines() == ["--a 1 --b 3", "--a 2 --b 3", "--a 1 --b 4", "--a 2 --b 4"]


def test_output_pipes_back_into_itself(expansion, project):
    first = expansion(str(GOLDEN / "list_of_configs.json"))
    again = expansion("stdin", stdin=first.out)
    assert again.code == 0
    assert again.out == first.out


def test_flagfile_sets_expansion_flags(expansion, project):
    (project / "inner.flags").write_text("# print flags, not JSON\n--print_flags\n")
    (project / "outer.flags").write_text("--flagfile inner.flags\n")
    shutil.copy(GOLDEN / "broadcast.json", project / "exp.json")
    got = expansion("--flagfile=outer.flags", "exp.json")
    assert got.code == 0, got.err
    assert got.out == (GOLDEN / "broadcast.flags.out").read_text()


def test_empty_list_config_prints_nothing_but_valid_json(expansion, project):
    (project / "e.json").write_text("[]")
    assert expansion("e.json").out == "[]\n"
    assert expansion("e.json", "--print_flags").out == ""


def test_version_and_helpfull(expansion):
    assert expansion("--version").out.startswith("expansion ")
    helpfull = expansion("--helpfull")
    assert helpfull.code == 0
    assert "--print_flags" in helpfull.out and "--pprint" in helpfull.out


BAD = {
    "malformed.json": ('{"a": [1, 2', "not valid JSON"),
    "trailing_garbage.json": ('{"a": 1} x', "not valid JSON"),
    "bad_compound.json": ('{"[a,b": [[1, 2]]}', "[a,b"),
    "arity.json": ('{"[a,b]": [[1, 2, 3]]}', "2 elements"),
    "null.json": ('{"a": null}', "null"),
    "nested.json": ('{"a": {"b": 1}}', "invalid"),
    "nested_in_list.json": ('{"a": [1, {"b": 2}]}', "invalid"),
    "scalar.json": ("42", "dict or a list"),
    "nan.json": ('{"a": NaN}', "NaN"),
    "empty.json": ("   \n", "empty"),
    "space_key.json": ('{"learning rate": 1}', "learning rate"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_is_one_line_exit_2(expansion, project, name):
    text, needle = BAD[name]
    (project / name).write_text(text)
    got = expansion(name)
    assert got.code == 2
    assert got.out == ""
    assert got.err.count("\n") == 1 and "Traceback" not in got.err
    assert got.err.startswith("expansion: error: ")
    assert needle in got.err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["missing.json"], "not found"),
        (["."], "directory"),
        ([], "experiment_config"),
        (["--bogus", "x.json"], "--bogus"),
        (["--flagfile", "nope.flags", "x.json"], "nope.flags"),
    ],
)
def test_bad_command_line_is_one_line_exit_2(expansion, args, needle):
    got = expansion(*args)
    assert got.code == 2
    assert got.err.count("\n") == 1 and "Traceback" not in got.err
    assert needle in got.err
