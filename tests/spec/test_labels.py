"""Label sanitizing as Caliban 0.4.2 did it, and the Vertex AI limit of 64 labels per job.

Expected values were checked against caliban.platform.cloud.util of Caliban 0.4.2; the first
vectors of each group are ported from Caliban's own unit tests.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.labels import (
    MAX_LABELS,
    job_labels,
    key_label,
    parse_label,
    sanitize_labels,
    script_args_to_labels,
    value_label,
)

KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# -- key_label / value_label -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        # Caliban's own vectors
        ("--face", "face", "face"),
        ("------fA.!! ce", "fa_ce", "fa_ce"),
        ("", "", ""),
        ("--0helper", "k0helper", "0helper"),
        ("--_helper", "k_helper", "_helper"),
        # periods become underscores before anything is dropped
        ("0.01", "k0_01", "0_01"),
        ("x.y.z", "x_y_z", "x_y_z"),
        ("--.5", "k_5", "_5"),
        ("..", "k__", "__"),
        ("1e-05", "k1e-05", "1e-05"),
        ("-1", "k1", "1"),
        # lowercase; anything outside [a-z0-9_-] disappears; leading dashes go
        ("LR", "lr", "lr"),
        ("A-B_C", "a-b_c", "a-b_c"),
        ("--lr=0.1", "lr0_1", "lr0_1"),
        ("ÉCOLE", "cole", "cole"),
        ("İstanbul", "istanbul", "istanbul"),
        ("ß", "", ""),
        ("１２", "", ""),
        ("-----", "", ""),
        ("-_x", "k_x", "_x"),
        ("a-", "a-", "a-"),
        ("gcr.io/my-project/caliban:abc123", "gcr_iomy-projectcalibanabc123", None),
    ],
)
def test_key_and_value_labels(text, key, value):
    assert key_label(text) == key
    if value is not None:
        assert value_label(text) == value


def test_none_is_the_empty_label():
    assert key_label(None) == ""
    assert value_label(None) == ""


def test_labels_are_cut_to_63_characters():
    assert key_label("a" * 70) == "a" * 63
    assert value_label("a" * 70) == "a" * 63
    assert value_label("9" * 70) == "9" * 63
    # The 'k' is added before the cut, so the key keeps only 62 of the digits.
    assert key_label("--" + "9" * 70) == "k" + "9" * 62
    assert key_label("0" * 63) == "k" + "0" * 62
    # Characters are dropped before the cut, so 63 usable ones survive.
    assert key_label("--" + "a" * 62 + ".b") == "a" * 62 + "_"
    assert value_label("!" * 10 + "b" * 63) == "b" * 63


# -- script_args_to_labels -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Caliban's own vectors (argv split on single spaces)
        ("--lr 1 --!!! 2 --face 3", {"lr": "1", "face": "3"}),
        ("--lr 1 --lr 2", {"lr": "2"}),
        (
            "--LR 1 --item-label --fa!!ce cake --a",
            {"lr": "1", "item-label": "", "face": "cake", "a": ""},
        ),
        (
            "--lr 1 2 3 --item_underscoRE!! --face cake --a",
            {"lr": "1", "item_underscore": "", "face": "cake", "a": ""},
        ),
        ("--face", {"face": ""}),
        ("face", {}),
        # more
        ("--learning_rate 0.01", {"learning_rate": "0_01"}),
        ("--a.b 1.5 --c", {"a_b": "1_5", "c": ""}),
        ("--a --b c --d", {"a": "", "b": "c", "d": ""}),
        ("-x", {"x": ""}),
        ("--lr 1 --lr", {"lr": ""}),
        ("--  x", {}),
        ("--epochs 2 --Name My.Run", {"epochs": "2", "name": "my_run"}),
    ],
)
def test_script_args_to_labels(argv, expected):
    assert script_args_to_labels(argv.split(" ")) == expected


def test_negative_number_after_a_flag_is_taken_for_a_flag():
    # Caliban's quirk, kept on purpose: "-1" starts with '-', so it is a key ("k1"), and
    # --sleep gets an empty value.
    assert script_args_to_labels(["--sleep", "-1"]) == {"sleep": "", "k1": ""}
    assert script_args_to_labels(["--lr", "-0.5", "--b", "2"]) == {"lr": "", "k0_5": "", "b": "2"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {}),
        (["--a", ""], {"a": ""}),
        (["", "--a"], {"a": ""}),
        (["--a", "-"], {"a": ""}),
        (["-", "x"], {}),
        (["--a", "x y"], {"a": "xy"}),
        (("--a", "1"), {"a": "1"}),
    ],
)
def test_script_args_to_labels_edges(argv, expected):
    assert script_args_to_labels(argv) == expected


def test_script_args_keep_first_seen_order():
    labels = script_args_to_labels(["--b", "1", "--a", "2", "--b", "3"])
    assert list(labels.items()) == [("b", "3"), ("a", "2")]


# -- sanitize_labels -------------------------------------------------------------------------


def test_sanitize_labels_drops_keys_that_clean_to_nothing():
    assert sanitize_labels([("--!!", "face")]) == {}
    assert sanitize_labels({"": "v", "!!": "w"}) == {}


def test_sanitize_labels_takes_dicts_and_pairs():
    pairs = [("A.B", "C.D"), ("1x", "Y"), ("--!!", "face")]
    assert sanitize_labels(pairs) == {"a_b": "c_d", "k1x": "y"}
    assert sanitize_labels(dict(pairs)) == {"a_b": "c_d", "k1x": "y"}


def test_sanitize_labels_later_pair_wins_after_cleaning():
    assert sanitize_labels([("Team", "a"), ("team", "b"), ("TEAM!", "c")]) == {"team": "c"}


# -- parse_label -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("epochs=2", ("epochs", "2")),
        ("key=", ("key", "")),
        ("a=b=c", ("a", "b=c")),  # everything after the first '=' is the value
        ("  spaced  =value ", ("spaced", "value ")),  # only the key is stripped
        ("Team=ML.Research", ("Team", "ML.Research")),  # sanitized later, not here
        # the colon form of Caliban's labels page, when there is no '='
        ("key:value", ("key", "value")),
        ("another_k:my_value", ("another_k", "my_value")),
        ("a:b=c", ("a:b", "c")),
        ("a=b:c", ("a", "b:c")),
    ],
)
def test_parse_label(text, expected):
    assert parse_label(text) == expected


@pytest.mark.parametrize("text", ["novalue", "", "=v", "  =v", ":v", "multi\nline"])
def test_parse_label_needs_key_and_separator(text):
    message = one_line_error(parse_label, text)
    assert "KEY=VALUE" in message


@pytest.mark.parametrize("text", ["!!=x", "---=x", "ÉÉ:x"])
def test_parse_label_key_needs_usable_characters(text):
    message = one_line_error(parse_label, text)
    assert "no usable characters" in message


# -- job_labels ------------------------------------------------------------------------------

IMAGE = "gcr.io/my-project/caliban:abc123"


def test_job_labels_tv13():
    labels = job_labels(
        job_name="caliban_totoro",
        image=IMAGE,
        gpu_enabled=True,
        tpu_enabled=False,
        args=["--learning_rate", "0.01"],
    )
    assert labels == {
        "gpu_enabled": "true",
        "tpu_enabled": "false",
        "job_name": "caliban_totoro",
        "docker_image": "gcr_iomy-projectcalibanabc123",
        "learning_rate": "0_01",
    }


def test_job_labels_order_and_precedence_match_caliban():
    labels = job_labels(
        job_name="caliban_totoro",
        image=IMAGE,
        gpu_enabled=True,
        tpu_enabled=False,
        user_labels=[("Team", "ML.Research"), ("epochs", "99")],
        args=["--learning_rate", "0.01", "--epochs", "2"],
    )
    # Caliban 0.4.2: base labels, then user labels, then argv labels, which win.
    assert list(labels.items()) == [
        ("gpu_enabled", "true"),
        ("tpu_enabled", "false"),
        ("job_name", "caliban_totoro"),
        ("docker_image", "gcr_iomy-projectcalibanabc123"),
        ("team", "ml_research"),
        ("epochs", "2"),
        ("learning_rate", "0_01"),
    ]


def test_user_labels_may_override_base_labels():
    labels = job_labels(
        job_name="x",
        image="img",
        gpu_enabled=False,
        tpu_enabled=False,
        user_labels=[("JOB_NAME", "mine")],
    )
    assert labels["job_name"] == "mine"
    assert list(labels)[:4] == ["gpu_enabled", "tpu_enabled", "job_name", "docker_image"]


def test_job_name_label_is_sanitized():
    # Caliban 0.1.7 fixed upper-case job names breaking submission.
    labels = job_labels(job_name="My.Job", image="img", gpu_enabled=False, tpu_enabled=False)
    assert labels == {
        "gpu_enabled": "false",
        "tpu_enabled": "false",
        "job_name": "my_job",
        "docker_image": "img",
    }


def test_extra_labels_win_over_everything():
    labels = job_labels(
        job_name="n",
        image="img",
        gpu_enabled=False,
        tpu_enabled=True,
        user_labels=[("xgroup", "user")],
        args=["--xgroup", "argv"],
        extra={"XGroup": "Ours.1"},
    )
    assert labels["xgroup"] == "ours_1"
    assert labels["tpu_enabled"] == "true"


def many_flags(n: int) -> list[str]:
    return [f"--flag{i}" for i in range(n)]


def test_sixty_four_labels_are_allowed():
    assert MAX_LABELS == 64
    labels = job_labels(
        job_name="n", image="i", gpu_enabled=False, tpu_enabled=False, args=many_flags(60)
    )
    assert len(labels) == 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"args": many_flags(61)},
        {"user_labels": [(f"u{i}", "v") for i in range(61)]},
        {"args": many_flags(30), "user_labels": [(f"u{i}", "v") for i in range(31)]},
        {"extra": {f"e{i}": "v" for i in range(61)}},
    ],
)
def test_sixty_five_labels_are_refused(kwargs):
    message = one_line_error(
        job_labels, job_name="n", image="i", gpu_enabled=False, tpu_enabled=False, **kwargs
    )
    assert "65" in message and "64" in message


def test_duplicate_labels_count_once():
    args = many_flags(60) + many_flags(60)
    labels = job_labels(job_name="n", image="i", gpu_enabled=False, tpu_enabled=False, args=args)
    assert len(labels) == 64


# -- properties ------------------------------------------------------------------------------

any_text = st.text(max_size=80)
labelish = st.text(alphabet="aZ09._-!. Éé", max_size=80)
texts = st.one_of(any_text, labelish)


@given(texts)
def test_key_label_is_valid_and_idempotent(s):
    k = key_label(s)
    assert k == "" or KEY_RE.match(k)
    assert key_label(k) == k


@given(texts)
def test_value_label_is_valid_and_idempotent(s):
    v = value_label(s)
    assert VALUE_RE.match(v)
    assert value_label(v) == v


@given(texts)
def test_value_label_is_key_label_without_the_k(s):
    k, v = key_label(s), value_label(s)
    assert k == v or k == ("k" + v)[:63]


@given(st.one_of(st.dictionaries(texts, texts), st.lists(st.tuples(texts, texts))))
def test_sanitize_labels_output_is_valid_and_stable(pairs):
    once = sanitize_labels(pairs)
    for k, v in once.items():
        assert KEY_RE.match(k)
        assert VALUE_RE.match(v)
    assert sanitize_labels(once) == once
    assert sanitize_labels(list(once.items())) == once


@settings(max_examples=200)
@given(st.lists(st.one_of(texts, st.sampled_from(["--a", "-1", "--", "-", "x"])), max_size=12))
def test_script_args_labels_are_valid(argv):
    labels = script_args_to_labels(argv)
    for k, v in labels.items():
        assert KEY_RE.match(k)
        assert VALUE_RE.match(v)
    # Every key comes from an argument that starts with '-'.
    assert set(labels) <= {key_label(a) for a in argv if a.startswith("-")}
