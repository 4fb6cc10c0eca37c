"""jsonc.loads: JSON plus `#` / `//` line comments and trailing commas, as commentjson took it."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caliban_flows.spec import jsonc
from caliban_flows.spec.errors import SpecError


def error(text: str, source: str = "experiment.json") -> str:
    """The SpecError message for a bad document; every one must fit on one line."""
    with pytest.raises(SpecError) as info:
        jsonc.loads(text, source=source)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


def position(message: str) -> tuple[int, int]:
    found = re.search(r"line (\d+) column (\d+)", message)
    assert found, message
    return int(found.group(1)), int(found.group(2))


# -- plain JSON ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "{}",
        "[]",
        '{"a": 1, "b": [1.5, -2, 1e-05], "c": {"d": null, "e": true, "f": false}}',
        '["\\u00e9", "\\ud83d\\ude00", "tab\\tnewline\\n", "quote\\"", "back\\\\slash"]',
        '  \n\t{"x": "y"}\r\n  ',
        "12345678901234567890",
        '"just a string"',
    ],
)
def test_plain_json_parses_like_the_stdlib(text):
    assert jsonc.loads(text) == json.loads(text)


def test_strip_comments_leaves_comment_free_json_alone():
    text = '{"a": [1, 2], "b": "c"}'
    assert jsonc.strip_comments(text) == text


# -- comments --------------------------------------------------------------------------------


def test_full_line_and_end_of_line_hash_comments():
    # TV12: both comment styles of Caliban's broadcasting docs.
    text = (
        "{\n"
        "    # comments work inside the JSON file!\n"
        '    "epochs": [2, 3],\n'
        '    "batch_size": [64, 128], # end of line comments too.\n'
        '    "constant_arg": "something"\n'
        "}\n"
    )
    assert jsonc.loads(text) == {
        "epochs": [2, 3],
        "batch_size": [64, 128],
        "constant_arg": "something",
    }


def test_double_slash_comments():
    text = '// leading\n{"a": 1, // after a value\n "b": 2} // trailing, no newline'
    assert jsonc.loads(text) == {"a": 1, "b": 2}


def test_comment_right_after_a_value_without_space():
    assert jsonc.loads('{"a": 1# c\n, "b": 2//d\n}') == {"a": 1, "b": 2}


def test_comment_holding_quotes_and_the_other_marker():
    text = '{\n  # a "quoted" word // and slashes\n  "a": 1 // it\'s # fine\n}'
    assert jsonc.loads(text) == {"a": 1}


def test_a_comment_runs_to_the_end_of_the_line_only():
    assert jsonc.loads("[1, 2 // the rest, 3\n]") == [1, 2]
    assert jsonc.loads("[1, # 9, 10\n 2]") == [1, 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": "#not a comment"}', {"a": "#not a comment"}),
        ('{"a": "//nor this"}', {"a": "//nor this"}),
        ('{"url": "http://example.com/x#frag"}', {"url": "http://example.com/x#frag"}),
        ('{"a": "x # y // z"} # real comment', {"a": "x # y // z"}),
        ('{"a": "x\\"#y"}', {"a": 'x"#y'}),  # an escaped quote does not end the string
        ('{"a": "x\\\\"} # c', {"a": "x\\"}),  # an escaped backslash does
        ('{"#": "//", "//": "#"} // both', {"#": "//", "//": "#"}),
        ('{"a": "ends with ,]"}', {"a": "ends with ,]"}),
        ('["a,]", "b,}",]', ["a,]", "b,}"]),
    ],
)
def test_comment_markers_inside_strings_are_kept(text, expected):
    assert jsonc.loads(text) == expected


def test_comment_text_that_contains_brackets():
    # A comment after a comma that mentions a bracket is still just a comment: commentjson
    # (and so Caliban 0.4.2) reads all of these.
    assert jsonc.loads('{"lr": [0.1, 0.01], # values in [0, 1]\n "b": 2}') == {
        "lr": [0.1, 0.01],
        "b": 2,
    }
    assert jsonc.loads("[1, # ]\n 2]") == [1, 2]
    assert jsonc.loads('{"a": 1, // }\n "b": 2}') == {"a": 1, "b": 2}


def test_block_comments_are_not_supported():
    message = error('{"a": 1 /* c */}')
    assert position(message) == (1, 9)


def test_a_document_of_only_comments_is_empty():
    message = error("# only a comment\n// and another\n")
    assert "Expecting value" in message


# -- trailing commas -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1,}', {"a": 1}),
        ("[1, 2,]", [1, 2]),
        ('[1, [2, 3,], {"a": [4,],},]', [1, [2, 3], {"a": [4]}]),
        ('{"a": {"b": {"c": [1,],},},}', {"a": {"b": {"c": [1]}}}),
        ("[[[],],]", [[[]]]),
        ('{\n  "a": [\n    1,\n    2,\n  ],\n}\n', {"a": [1, 2]}),
        ('{"a": 1,   \n\t  }', {"a": 1}),
        ('{"a": 1, # comment\n}', {"a": 1}),
        ('{"a": 1, // comment\n  // another\n}', {"a": 1}),
        ("[1,\f]", [1]),
        # commentjson also takes a lone comma in an empty container.
        ("[,]", []),
        ("{,}", {}),
    ],
)
def test_trailing_commas(text, expected):
    assert jsonc.loads(text) == expected


@pytest.mark.parametrize("text", ["[1,,]", "[1,,2]", '{"a": 1,,}', "[,1]", ",", "[1] ,"])
def test_only_one_trailing_comma_is_forgiven(text):
    error(text)


def test_form_feed_is_whitespace():
    assert jsonc.loads('{"a": 1}\f') == {"a": 1}
    assert jsonc.loads("\f[\f1\f]") == [1]


# -- rejected documents and their messages ---------------------------------------------------


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_rejected(constant):
    message = error(f'{{"a": {constant}}}')
    assert constant in message
    assert "experiment.json" in message


def test_nan_is_rejected_inside_lists_too():
    assert "NaN" in error('{"a": [1, NaN, 2]}')


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("", 1, 1),
        ("{", 1, 2),
        ('{"a": }', 1, 7),
        ('{\n  "a": 1\n  "b": 2\n}', 3, 3),
        ('{\n "a": 1,\n "b": }', 3, 7),
        ("{'a': 1}", 1, 2),
        ('{"a": 1} {"b": 2}', 1, 10),
        ('{"a": 01}', 1, 8),
        # comments before the error on earlier lines do not move it
        ('# one\n// two\n{"a": 1 # three\n "b"}', 4, 2),
    ],
)
def test_error_names_line_and_column(text, line, column):
    message = error(text)
    assert message.startswith("experiment.json is not valid JSON: ")
    assert position(message) == (line, column)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        # The column must be the one in the user's file, not in the text after the
        # trailing comma was dropped.
        ("[1, 2,] x", 1, 9),
        ('{"a": [1,], "b": }', 1, 18),
    ],
)
def test_error_column_counts_a_dropped_trailing_comma(text, line, column):
    assert position(error(text)) == (line, column)


def test_control_character_error_reads_cleanly():
    message = error('{"a": "tab\there"}')
    assert position(message) == (1, 11)
    assert "at at" not in message


def test_default_source_name():
    with pytest.raises(SpecError, match=r"^JSON is not valid JSON: "):
        jsonc.loads("{")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "1" * 5000,  # past Python's integer digit limit
        '{"a": "unterminated\n"}',
        '{"a": 1}\n\n\n}',
        "\n\n[1,\n\n2\n\n",
    ],
)
def test_every_error_is_one_line(text):
    assert error(text).startswith("experiment.json is not valid JSON: ")


# -- properties ------------------------------------------------------------------------------

json_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
tricky_text = st.one_of(
    json_text,
    st.sampled_from(["#", "//", "# x", "a // b", ',"', ",]", ",}", "\\", '"', "/*", "\f"]),
)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=False, allow_infinity=False),
        tricky_text,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(tricky_text, children, max_size=4),
    ),
    max_leaves=20,
)

# Comment texts free of brackets: see test_comment_text_that_contains_brackets for those.
comments = st.sampled_from(
    ["", " # note", ' // "quoted" # both', "# ,", "//,", " # a, b, c", " // 'single'"]
)


@st.composite
def commented(draw, value) -> str:
    """`value` as JSON with comments after items and a trailing comma in every container."""

    def dump(v) -> str:
        if isinstance(v, list):
            items = [dump(x) for x in v]
        elif isinstance(v, dict):
            items = [json.dumps(k) + ": " + dump(x) for k, x in v.items()]
        else:
            return json.dumps(v, ensure_ascii=draw(st.booleans()))
        if not items:
            return "[]" if isinstance(v, list) else "{}"
        body = "".join(f"{item},{draw(comments)}\n" for item in items)
        opening, closing = ("[", "]") if isinstance(v, list) else ("{", "}")
        return opening + "\n" + body + closing

    return draw(comments) + "\n" + dump(value) + draw(comments)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from([None, 0, 2]))
def test_any_json_document_round_trips(value, indent):
    assert jsonc.loads(json.dumps(value, indent=indent)) == value


@settings(max_examples=300, deadline=None)
@given(st.data(), json_values)
def test_comments_and_trailing_commas_change_nothing(data, value):
    assert jsonc.loads(data.draw(commented(value))) == value


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_any_text_parses_or_fails_with_a_one_line_spec_error(text):
    try:
        jsonc.loads(text, source="x.json")
    except SpecError as e:
        assert "\n" not in str(e)
