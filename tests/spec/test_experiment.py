"""ExperimentConfig: validation, expansion order and rendering, as Caliban 0.4.2 really does it.

Caliban 0.4.2's order differs from its docs: the FIRST key of a dict varies fastest. Every
expected order below was produced by running Caliban 0.4.2 (`expansion`, or
caliban.config.experiment) on the same input. tests/spec/test_expansion_vs_caliban.py compares
generated configs against Caliban itself; these are the readable examples and the properties.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caliban_flows.spec import jsonc
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.experiment import ExperimentConfig, to_argv


def expand(data) -> list[dict]:
    return list(ExperimentConfig(data).experiments())


def flags(data) -> list[str]:
    return list(ExperimentConfig(data).flag_lines())


def job_args(data) -> list[list[str]]:
    return [to_argv(e, sort_keys=True) for e in ExperimentConfig(data).experiments()]


def strict(value) -> str:
    """A comparable form that tells 1, 1.0 and true apart and keeps key order."""
    return json.dumps(value)


def invalid(data) -> str:
    with pytest.raises(SpecError) as info:
        ExperimentConfig(data)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# -- worked examples of the docs (feature inventory §3.6-§3.10, TV1-TV10) --------------------


def test_tv1_readme_learning_rate_sweep():
    config = ExperimentConfig(jsonc.loads('{"learning_rate": [0.01, 0.001, 0.0001]}'))
    assert [to_argv(e) for e in config.experiments()] == [
        ["--learning_rate", "0.01"],
        ["--learning_rate", "0.001"],
        ["--learning_rate", "0.0001"],
    ]


BROADCAST_DOC = """{
    # comments work inside the JSON file!
    "epochs": [2, 3],
    "batch_size": [64, 128], # end of line comments too.
    "constant_arg": "something"
    "important_toggle": [true, false]
}
"""
# The docs' example lacks the comma after "something"; this is what the user meant.
BROADCAST = BROADCAST_DOC.replace('"something"\n', '"something",\n')


def test_tv2_doc_example_as_printed_is_not_json():
    with pytest.raises(SpecError, match=r"line 6 column 5"):
        jsonc.loads(BROADCAST_DOC, source="experiment.json")


def test_tv2_basic_cartesian_product():
    config = ExperimentConfig(jsonc.loads(BROADCAST))
    assert len(config) == 8
    # 0.4.2 order: epochs (the first key) fastest, important_toggle slowest; strings unquoted.
    assert list(config.flag_lines()) == [
        "--epochs 2 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 3 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 2 --batch_size 128 --constant_arg something --important_toggle",
        "--epochs 3 --batch_size 128 --constant_arg something --important_toggle",
        "--epochs 2 --batch_size 64 --constant_arg something",
        "--epochs 3 --batch_size 64 --constant_arg something",
        "--epochs 2 --batch_size 128 --constant_arg something",
        "--epochs 3 --batch_size 128 --constant_arg something",
    ]


def test_tv2_job_args_sort_keys():
    # Jobs (run/cloud/cluster) render each experiment with its keys sorted.
    def args(batch: str, epochs: str, *toggle: str) -> list[str]:
        return ["--batch_size", batch, "--constant_arg", "something", "--epochs", epochs, *toggle]

    on = "--important_toggle"
    assert job_args(jsonc.loads(BROADCAST)) == [
        args("64", "2", on),
        args("64", "3", on),
        args("128", "2", on),
        args("128", "3", on),
        args("64", "2"),
        args("64", "3"),
        args("128", "2"),
        args("128", "3"),
    ]


LIST_DOC = """[
    {
        "epochs": [1,2, 3, 4],
        "batch_size": [64, 128],
        "constant_arg": "something",
        "important_toggle": [true, false]
    },
    {
        "epochs": [9, 10],
        "batch_size": [512, 1024],
        "constant_arg": "something"
    }
    {
        "epochs": 1000,
        "batch_size": 1
    }
]
"""
# The docs' example lacks the comma between the 2nd and 3rd dicts.
LIST_CONFIG = LIST_DOC.replace("    }\n    {", "    },\n    {")


def test_tv4_doc_example_as_printed_is_not_json():
    with pytest.raises(SpecError, match=r"line 13 column 5"):
        jsonc.loads(LIST_DOC)


def test_tv4_list_of_configs_gives_21_jobs():
    config = ExperimentConfig(jsonc.loads(LIST_CONFIG))
    assert len(config) == 21 == 16 + 4 + 1
    lines = list(config.flag_lines())
    assert len(lines) == 21
    assert lines[16:] == [
        "--epochs 9 --batch_size 512 --constant_arg something",
        "--epochs 10 --batch_size 512 --constant_arg something",
        "--epochs 9 --batch_size 1024 --constant_arg something",
        "--epochs 10 --batch_size 1024 --constant_arg something",
        "--epochs 1000 --batch_size 1",
    ]


EXPANSION_DOC = """[    {
        "epochs": [1,2, 3, 4],
        "batch_size": [64, 128],
        "constant_arg": "something",
        "important_toggle": [true, false]
    },
    {
        "epochs": 1000,
        "batch_size": 1
    }
]
"""


def _tv5_experiments() -> list[dict]:
    out = []
    for toggle in (True, False):
        for batch in (64, 128):
            for epochs in (1, 2, 3, 4):
                out.append(
                    {
                        "epochs": epochs,
                        "batch_size": batch,
                        "constant_arg": "something",
                        "important_toggle": toggle,
                    }
                )
    return [*out, {"epochs": 1000, "batch_size": 1}]


def test_tv5_expansion_json_line():
    config = ExperimentConfig(jsonc.loads(EXPANSION_DOC))
    expected = _tv5_experiments()
    assert strict(list(config.experiments())) == strict(expected)
    line = "[" + ", ".join(config.json_objects()) + "]"
    assert line == json.dumps(expected)
    assert line.startswith(
        '[{"epochs": 1, "batch_size": 64, "constant_arg": "something", "important_toggle": true},'
        ' {"epochs": 2, "batch_size": 64, "constant_arg": "something", "important_toggle": true},'
    )
    assert line.endswith(
        ' {"epochs": 4, "batch_size": 128, "constant_arg": "something",'
        ' "important_toggle": false}, {"epochs": 1000, "batch_size": 1}]'
    )


def test_tv6_expansion_pprint_prefix():
    experiments = list(ExperimentConfig(jsonc.loads(EXPANSION_DOC)).experiments())
    assert json.dumps(experiments, indent=2).startswith(
        "[\n"
        "  {\n"
        '    "epochs": 1,\n'
        '    "batch_size": 64,\n'
        '    "constant_arg": "something",\n'
        '    "important_toggle": true\n'
        "  },\n"
        "  {\n"
        '    "epochs": 2,\n'
    )


def test_tv7_expansion_print_flags_17_lines():
    assert flags(jsonc.loads(EXPANSION_DOC)) == [
        "--epochs 1 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 2 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 3 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 4 --batch_size 64 --constant_arg something --important_toggle",
        "--epochs 1 --batch_size 128 --constant_arg something --important_toggle",
        "--epochs 2 --batch_size 128 --constant_arg something --important_toggle",
        "--epochs 3 --batch_size 128 --constant_arg something --important_toggle",
        "--epochs 4 --batch_size 128 --constant_arg something --important_toggle",
        "--epochs 1 --batch_size 64 --constant_arg something",
        "--epochs 2 --batch_size 64 --constant_arg something",
        "--epochs 3 --batch_size 64 --constant_arg something",
        "--epochs 4 --batch_size 64 --constant_arg something",
        "--epochs 1 --batch_size 128 --constant_arg something",
        "--epochs 2 --batch_size 128 --constant_arg something",
        "--epochs 3 --batch_size 128 --constant_arg something",
        "--epochs 4 --batch_size 128 --constant_arg something",
        "--epochs 1000 --batch_size 1",
    ]


def test_tv8_two_lists_first_key_fastest():
    text = '{\n  "a": ["a1", "a2"],\n  "b": ["b1", "b2"]\n}'
    assert flags(jsonc.loads(text)) == [
        "--a a1 --b b1",
        "--a a2 --b b1",
        "--a a1 --b b2",
        "--a a2 --b b2",
    ]


def test_tv9_compound_key_ties_values_together():
    text = '{\n  "[a,b]": [["a1", "b1"], ["a2", "b2"]]\n}'
    config = ExperimentConfig(jsonc.loads(text))
    assert len(config) == 2
    assert list(config.experiments()) == [{"a": "a1", "b": "b1"}, {"a": "a2", "b": "b2"}]
    assert list(config.flag_lines()) == ["--a a1 --b b1", "--a a2 --b b2"]


def test_tv10_true_is_a_bare_flag_and_false_is_left_out():
    assert to_argv({"on": True, "off": False, "n": 1}) == ["--on", "--n", "1"]
    assert flags({"a": [True, False], "b": 1}) == ["--a --b 1", "--b 1"]
    assert flags({"a": False}) == [""]
    assert flags({"a": False, "b": [False, True]}) == ["", "--b"]


# -- vectors ported from Caliban's tests (tests/caliban/config/test_experiment.py) -----------

VALID = {"a": [1.0, 2, 3], "b": True, "c": 1, "d": "e", "f": 1.2}
INVALID = {1: "face", "2": "3"}


def test_caliban_valid_config():
    assert flags(VALID) == [
        "--a 1.0 --b --c 1 --d e --f 1.2",
        "--a 2 --b --c 1 --d e --f 1.2",
        "--a 3 --b --c 1 --d e --f 1.2",
    ]
    config = ExperimentConfig(VALID)
    assert config.data is VALID
    assert len(config) == 3


def test_caliban_lists_and_lists_of_lists_are_valid():
    assert len(ExperimentConfig([VALID, VALID])) == 6
    assert len(ExperimentConfig([VALID, [VALID]])) == 6
    assert expand([{"a": [1.0, 2, 3]}, [{"b": [1, 2]}]]) == [
        {"a": 1.0},
        {"a": 2},
        {"a": 3},
        {"b": 1},
        {"b": 2},
    ]


@pytest.mark.parametrize(
    "data",
    [
        INVALID,
        {"key": [{1: 2}, "face"]},  # a dict value is invalid even hidden in a list
        [VALID, VALID, [INVALID]],  # caught even nested in lists
    ],
)
def test_caliban_invalid_configs(data):
    invalid(data)


@pytest.mark.parametrize(
    "key",
    [
        "[",
        "eh[",
        "[test,,fail]",
        "[,test,fail]",
        "[I,will,fail,]",
        "[I,,will,fail]",
        "]I,will,fail]",
        # and more
        "[]",
        "",
        "a b",
        "a,b",
        "[a b]",
        "[a,b",
        "a,b]",
        "[[a,b]]",
        "[a,[b]]",
        " a",
        "a\n",
        "a\tb",
    ],
)
def test_invalid_keys(key):
    message = invalid({key: 0})
    assert json.dumps(key) in message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"[batch_size,learning_rate]": [0, 1]}, [{"batch_size": 0, "learning_rate": 1}]),
        (
            {"[batch_size,learning_rate,dataset_size]": [0.01, 0.02, 100]},
            [{"batch_size": 0.01, "learning_rate": 0.02, "dataset_size": 100}],
        ),
        (
            {"[batch_size,learning_rate,dataset_size]": [[0.01, 0.02, 100], [0.03, 0.05, 200]]},
            [
                {"batch_size": 0.01, "learning_rate": 0.02, "dataset_size": 100},
                {"batch_size": 0.03, "learning_rate": 0.05, "dataset_size": 200},
            ],
        ),
        (
            {"[batch_size,learning_rate]": [[0.0, 1.0], [2.0, 3.0]]},
            [
                {"batch_size": 0.0, "learning_rate": 1.0},
                {"batch_size": 2.0, "learning_rate": 3.0},
            ],
        ),
        (
            {"[batch_size,learning_rate]": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]},
            [
                {"batch_size": 0.0, "learning_rate": 1.0},
                {"batch_size": 2.0, "learning_rate": 3.0},
                {"batch_size": 4.0, "learning_rate": 5.0},
            ],
        ),
        (
            {"[batch_size, learning_rate, dataset_size]": [0.01, 0.02, 100]},
            [{"batch_size": 0.01, "learning_rate": 0.02, "dataset_size": 100}],
        ),
        (
            {"[batch_size , learning_rate,dataset_size]": [[0.01, 0.02, 100], [0.03, 0.05, 200]]},
            [
                {"batch_size": 0.01, "learning_rate": 0.02, "dataset_size": 100},
                {"batch_size": 0.03, "learning_rate": 0.05, "dataset_size": 200},
            ],
        ),
        (
            {"[batch_size, learning_rate]": [[0.0, 1.0], [2.0, 3.0]]},
            [
                {"batch_size": 0.0, "learning_rate": 1.0},
                {"batch_size": 2.0, "learning_rate": 3.0},
            ],
        ),
        (
            {"[batch_size ,learning_rate]": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]},
            [
                {"batch_size": 0.0, "learning_rate": 1.0},
                {"batch_size": 2.0, "learning_rate": 3.0},
                {"batch_size": 4.0, "learning_rate": 5.0},
            ],
        ),
        # Caliban's compound-key assembly-line vectors
        ({"[a,b]": [["c", "d"], ["e", "f"]]}, [{"a": "c", "b": "d"}, {"a": "e", "b": "f"}]),
        ({"[a,b]": ["c", "d"]}, [{"a": "c", "b": "d"}]),
        (
            {"hi": "there", "[k1,k2]": [["v1a", "v2a"], ["v1b", "v2b"]]},
            [
                {"hi": "there", "k1": "v1a", "k2": "v2a"},
                {"hi": "there", "k1": "v1b", "k2": "v2b"},
            ],
        ),
        ({"hi": "there", "[a,b]": ["c", "d"]}, [{"hi": "there", "a": "c", "b": "d"}]),
        ({"[a,b]": [0, 1]}, [{"a": 0, "b": 1}]),
        ({"[a,b]": [[0, 1]]}, [{"a": 0, "b": 1}]),
        ({"hi": "blueshift", "[a,b]": [[0, 1]]}, [{"hi": "blueshift", "a": 0, "b": 1}]),
    ],
)
def test_caliban_valid_compound_keys(data, expected):
    assert strict(expand(data)) == strict(expected)


def test_caliban_empty_config_is_one_empty_experiment():
    # So that a submission without a config still runs one job.
    config = ExperimentConfig({})
    assert len(config) == 1
    assert list(config.experiments()) == [{}]
    assert list(config.flag_lines()) == [""]
    assert list(config.json_objects()) == ["{}"]


def test_caliban_dict_product_vector_in_real_order():
    # Caliban's dict_product test lists "a" slowest; the full expansion of 0.4.2 runs "a" fastest.
    assert expand({"a": [1, 2, 3], "b": [4, 5], "c": "d"}) == [
        {"a": 1, "b": 4, "c": "d"},
        {"a": 2, "b": 4, "c": "d"},
        {"a": 3, "b": 4, "c": "d"},
        {"a": 1, "b": 5, "c": "d"},
        {"a": 2, "b": 5, "c": "d"},
        {"a": 3, "b": 5, "c": "d"},
    ]


# -- expansion rules -------------------------------------------------------------------------


def test_three_lists_first_key_fastest_last_key_slowest():
    assert flags({"a": [1, 2], "b": [3, 4], "c": [5, 6]}) == [
        "--a 1 --b 3 --c 5",
        "--a 2 --b 3 --c 5",
        "--a 1 --b 4 --c 5",
        "--a 2 --b 4 --c 5",
        "--a 1 --b 3 --c 6",
        "--a 2 --b 3 --c 6",
        "--a 1 --b 4 --c 6",
        "--a 2 --b 4 --c 6",
    ]


def test_scalars_keep_their_place_in_key_order():
    data = {"b": [1, 2], "a": "x", "c": [True, False]}
    assert flags(data) == ["--b 1 --a x --c", "--b 2 --a x --c", "--b 1 --a x", "--b 2 --a x"]
    assert job_args(data) == [
        ["--a", "x", "--b", "1", "--c"],
        ["--a", "x", "--b", "2", "--c"],
        ["--a", "x", "--b", "1"],
        ["--a", "x", "--b", "2"],
    ]


def test_compound_key_is_one_factor_among_others():
    data = {"x": [1, 2], "[a,b]": [[1, 2], [3, 4]], "y": [True, False]}
    assert flags(data) == [
        "--x 1 --a 1 --b 2 --y",
        "--x 2 --a 1 --b 2 --y",
        "--x 1 --a 3 --b 4 --y",
        "--x 2 --a 3 --b 4 --y",
        "--x 1 --a 1 --b 2",
        "--x 2 --a 1 --b 2",
        "--x 1 --a 3 --b 4",
        "--x 2 --a 3 --b 4",
    ]
    assert job_args(data)[0] == ["--a", "1", "--b", "2", "--x", "1", "--y"]


@pytest.mark.parametrize(
    ("data", "count"),
    [
        ({"a": []}, 0),
        ({"a": [1, 2], "b": []}, 0),
        ([{"a": []}, {"b": 1}], 1),
        ([], 0),
        ([{}], 1),
        ([{}, {}], 2),
        ([[], [[]]], 0),
        ([[{}], [[{"a": [1, 2]}]]], 3),
        # values in an empty product are never checked, as in Caliban
        ({"a": [None], "b": []}, 0),
    ],
)
def test_counts_with_empty_lists_and_nesting(data, count):
    config = ExperimentConfig(data)
    assert len(config) == count
    assert len(list(config.experiments())) == count
    assert len(list(config.flag_lines())) == count
    assert len(list(config.json_objects())) == count


def test_list_values_inside_a_list_are_passed_whole():
    assert flags({"a": [[1, 2], "x"]}) == ["--a [1, 2]", "--a x"]
    assert to_argv({"a": [1, "b", [True]]}) == ["--a", "[1, 'b', [True]]"]


def test_compound_rows_may_hold_lists():
    assert flags({"[a,b]": [1, [2, 3]]}) == ["--a 1 --b [2, 3]"]


def test_compound_row_given_as_a_string_of_the_right_length_is_split():
    # Caliban only checked len(row); a two-character string fills a two-name key.
    assert expand({"[a,b]": [[1, 2], "pq"]}) == [{"a": 1, "b": 2}, {"a": "p", "b": "q"}]


def test_flag_names_are_used_verbatim():
    assert flags({"-d": 1, "x.y": [1, 2]}) == ["---d 1 --x.y 1", "---d 1 --x.y 2"]


# Two keys naming the same flag: outputs are Caliban 0.4.2's.
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"a": [1, 2], "[a,b]": [[3, 4]]}, ["--a 3 --b 4", "--a 3 --b 4"]),
        ({"[a,b]": [[3, 4]], "a": [1, 2]}, ["--a 1 --b 4", "--a 2 --b 4"]),
        ({"[a,b]": [[1, 2]], "[a, b]": [[3, 4]]}, ["--a 1 --b 2"]),
        ({"[a,a]": [[1, 2]]}, ["--a 2"]),
        ({"[a,b]": [[3, 4]], "[a, b]": [[1, 2], [5, 6]]}, ["--a 3 --b 4"]),
        ({"[a,b]": [[1, 2], [5, 6]], "[a, b]": [[3, 4]]}, ["--a 1 --b 2", "--a 5 --b 6"]),
    ],
)
def test_clashing_keys(data, expected):
    config = ExperimentConfig(data)
    assert list(config.flag_lines()) == expected
    assert [" ".join(to_argv(e)) for e in config.experiments()] == expected


@pytest.mark.parametrize(
    "data",
    [
        {"[a,b]": [[3, 4]], "[a, b]": [[1, 2], [5, 6]]},
        {"[a,b]": [[1, 2], [5, 6]], "[a, b]": []},
        {"x": [1, 2], "[a,b]": [[1, 2]], "[a , b]": [[3, 4], [5, 6], [7, 8]]},
    ],
)
def test_len_counts_clashing_compound_keys_once(data):
    # Caliban merges "[a,b]" and "[a, b]" into one factor, so len() must count it once.
    config = ExperimentConfig(data)
    assert len(config) == len(list(config.experiments()))


# -- rendering -------------------------------------------------------------------------------


def test_values_are_rendered_with_str():
    experiment = {
        "a": 1e-05,
        "b": 1.0,
        "c": 12345678901234567890,
        "d": -0.0,
        "e": "sp ace",
        "f": "",
        "g": 0.1,
        "h": 0,
    }
    assert to_argv(experiment) == [
        "--a", "1e-05", "--b", "1.0", "--c", "12345678901234567890", "--d", "-0.0",
        "--e", "sp ace", "--f", "", "--g", "0.1", "--h", "0",
    ]  # fmt: skip
    assert list(ExperimentConfig(experiment).flag_lines()) == [
        "--a 1e-05 --b 1.0 --c 12345678901234567890 --d -0.0 --e sp ace --f  --g 0.1 --h 0"
    ]


def test_json_numbers_keep_their_type():
    config = ExperimentConfig(jsonc.loads('{"a": [1, 1.0, 1e2, 100]}'))
    assert list(config.flag_lines()) == ["--a 1", "--a 1.0", "--a 100.0", "--a 100"]


def test_to_argv_sort_keys():
    experiment = {"b": 1, "a": True, "c": False, "B": "x"}
    assert to_argv(experiment) == ["--b", "1", "--a", "--B", "x"]
    assert to_argv(experiment, sort_keys=True) == ["--B", "x", "--a", "--b", "1"]
    assert to_argv({}) == []


def test_json_objects_are_json_dumps_with_default_separators():
    data = {"é": ["ü", 1.5], 'q"t': [True, True], "n": 12345678901234567890}
    config = ExperimentConfig(data)
    assert list(config.json_objects()) == [json.dumps(e) for e in config.experiments()]
    assert next(config.json_objects()) == (
        '{"\\u00e9": "\\u00fc", "q\\"t": true, "n": 12345678901234567890}'
    )


def test_flag_lines_keep_unicode_unescaped():
    assert flags({"a": "é", "b": [True, False], "c": False}) == ["--a é --b", "--a é"]


def test_experiments_are_fresh_dicts():
    config = ExperimentConfig({"a": [1, 2]})
    first = next(config.experiments())
    first["a"] = 99
    assert list(config.experiments()) == [{"a": 1}, {"a": 2}]


# -- validation messages ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({1: "face"}, ["key 1"]),
        ({"a": None}, ['"a"', "null"]),
        ({"a": {"b": 1}}, ['"a"', '{"b": 1}']),
        ({"a": [1, None]}, ['"a"', "null"]),
        ({"a": [[1], {"x": 2}]}, ['"a"']),
        (5, ["5"]),
        ("stdin", ['"stdin"']),
        (None, ["null"]),
        (True, ["true"]),
        ([1], ["[0]", "1"]),
        ([{}, [{}, "x"]], ["[1][1]", '"x"']),
        ([{}, {"a b": 1}], ["[1]", '"a b"']),
        ({"[a,b]": 1}, ['"[a,b]"', "2-element"]),
        ({"[a,b]": "ab"}, ['"[a,b]"']),
        ({"[a,b]": [[1, 2, 3]]}, ['"[a,b]"', "[1, 2, 3]"]),
        ({"[a,b]": [1, 2, 3]}, ['"[a,b]"']),
        ({"[a,b]": [[1, 2], [3]]}, ['"[a,b]"', "[3]"]),
        ({"[a,b]": [[1, 2], 3]}, ['"[a,b]"']),
        ({"[a,b,c]": [[1, None, 3]]}, ["null"]),
        ({"a\nb": 1}, ['"a\\nb"']),
        ({"a": "x\ny", "b": None}, ['"b"']),
        ({"a": [1, 2], "[a,b]": [[None, 4]]}, ["null"]),
    ],
)
def test_invalid_configs_have_one_line_messages(data, needles):
    message = invalid(data)
    assert message.startswith("experiment config")
    for needle in needles:
        assert needle in message, (needle, message)


def test_long_values_are_cut_in_messages():
    message = invalid({"a": {"b": "x" * 500}})
    assert len(message) < 300


# -- properties ------------------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(exclude_categories=("Z", "C"), exclude_characters=",[]"),
    min_size=1,
    max_size=4,
).filter(lambda s: not any(c.isspace() for c in s))
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["#", "// x", "a b", ""]),
)
# A list value's items may themselves be lists (passed whole) unless only scalars are wanted.
nested = st.one_of(scalars, st.lists(scalars, max_size=2))


@st.composite
def clash_free_dicts(draw, flat: bool = False):
    """(config dict, its factors as (names, choices)), no flag named by two keys."""
    item = scalars if flat else nested
    pool = draw(st.lists(names, unique=True, max_size=5))
    config: dict = {}
    factors = []
    while pool:
        size = draw(st.integers(1, min(3, len(pool))))
        group, pool = pool[:size], pool[size:]
        if size == 1 and draw(st.booleans()):
            (key,) = group
            value = draw(st.one_of(scalars, st.lists(item, max_size=3)))
            choices = [(v,) for v in value] if isinstance(value, list) else [(value,)]
        else:
            sep = draw(st.sampled_from([",", ", ", " ,", " , "]))
            pad = draw(st.sampled_from(["", " "]))
            key = "[" + pad + sep.join(group) + pad + "]"
            row = st.tuples(scalars, *[item] * (size - 1))  # a scalar first: rows stay rows
            rows = draw(st.lists(row, max_size=3))
            if rows and draw(st.booleans()):
                value = list(rows[0])  # one flat row
                choices = [rows[0]]
            else:
                value = [list(r) for r in rows]
                choices = rows
        config[key] = value
        factors.append((tuple(group), choices))
    return config, factors


def oracle(factors) -> list[dict]:
    """Mixed-radix counting, first factor the fastest digit."""
    total = math.prod(len(c) for _, c in factors)
    out = []
    for i in range(total):
        experiment: dict = {}
        for group, choices in factors:
            i, digit = divmod(i, len(choices))
            experiment.update(zip(group, choices[digit]))
        out.append(experiment)
    return out


@settings(max_examples=300, deadline=None)
@given(clash_free_dicts())
def test_clash_free_dict_is_the_product_first_key_fastest(drawn):
    config_data, factors = drawn
    config = ExperimentConfig(config_data)
    experiments = list(config.experiments())
    assert len(config) == len(experiments) == math.prod(len(c) for _, c in factors)
    assert strict(experiments) == strict(oracle(factors))


@settings(max_examples=300, deadline=None)
@given(clash_free_dicts())
def test_flag_lines_and_json_objects_render_each_experiment(drawn):
    config = ExperimentConfig(drawn[0])
    experiments = list(config.experiments())
    assert list(config.flag_lines()) == [" ".join(to_argv(e)) for e in experiments]
    assert list(config.json_objects()) == [json.dumps(e) for e in experiments]
    for e in experiments:
        assert to_argv(e, sort_keys=True) == to_argv(dict(sorted(e.items())))


configs = st.lists(
    st.one_of(clash_free_dicts(), st.lists(clash_free_dicts(), max_size=2)), max_size=3
)


def _data(drawn):
    return [_data(x) for x in drawn] if isinstance(drawn, list) else drawn[0]


def _expected(drawn) -> list[dict]:
    if isinstance(drawn, list):
        return [e for x in drawn for e in _expected(x)]
    return oracle(drawn[1])


@settings(max_examples=200, deadline=None)
@given(configs)
def test_lists_of_dicts_concatenate(drawn):
    config = ExperimentConfig(_data(drawn))
    expected = _expected(drawn)
    assert len(config) == len(list(config.experiments())) == len(expected)
    assert strict(list(config.experiments())) == strict(expected)
    assert list(config.flag_lines()) == [" ".join(to_argv(e)) for e in expected]


@settings(max_examples=200, deadline=None)
@given(st.one_of(clash_free_dicts(flat=True), st.lists(clash_free_dicts(flat=True), max_size=3)))
def test_expanding_an_expansion_again_is_the_identity(drawn):
    data = [d for d, _ in drawn] if isinstance(drawn, list) else drawn[0]
    config = ExperimentConfig(data)
    experiments = list(config.experiments())
    # What `expansion` prints, read back the way `--experiment_config stdin` reads it.
    printed = "[" + ", ".join(config.json_objects()) + "]"
    again = ExperimentConfig(jsonc.loads(printed))
    assert strict(list(again.experiments())) == strict(experiments)
    assert list(again.flag_lines()) == list(config.flag_lines())
    assert list(again.json_objects()) == list(config.json_objects())
    # A list of scalar-valued dicts expands to itself.
    assert strict(expand(experiments)) == strict(experiments)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c, max_size=3),
        max_leaves=12,
    )
)
def test_any_data_is_valid_or_a_one_line_spec_error(data):
    try:
        config = ExperimentConfig(data)
    except SpecError as e:
        assert "\n" not in str(e)
        return
    assert len(list(config.flag_lines())) == len(list(config.experiments()))
