"""Differential tests: our expansion against Caliban 0.4.2 itself, on generated configs."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caliban_flows.spec import jsonc
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.experiment import ExperimentConfig, to_argv
from devtools import caliban_ref

# Few names, so keys often clash ("a" and "[a,b]"); spacing variants of compound keys.
NAMES = ["a", "b", "c", "lr", "x.y", "é", "-d"]
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6),
)
values = st.one_of(
    scalars,
    st.lists(st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=3),
    st.none(),  # invalid at top level; valid nowhere
)


@st.composite
def compound(draw):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
    sep = draw(st.sampled_from([",", ", ", " ,", " , "]))
    pad = draw(st.sampled_from(["", " "]))
    key = "[" + pad + sep.join(names) + pad + "]"
    width = draw(st.sampled_from([len(names), len(names), len(names) + 1]))
    row = st.lists(
        st.one_of(scalars, st.lists(scalars, max_size=2)), min_size=width, max_size=width
    )
    value = draw(st.one_of(st.lists(row, min_size=0, max_size=3), row, scalars))
    return key, value


@st.composite
def dicts(draw):
    out = {}
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            k, v = draw(compound())
        else:
            k, v = draw(st.sampled_from(NAMES)), draw(values)
        out[k] = v
    return out


configs = st.one_of(
    dicts(), st.lists(st.one_of(dicts(), st.lists(dicts(), max_size=2)), max_size=3)
)


def decorate(text: str, rng: random.Random) -> str:
    """Add comments (with brackets in them) and trailing commas, the way users write them."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        closing = i + 1 < len(lines) and lines[i + 1].strip()[:1] in ("]", "}")
        if closing and not line.rstrip().endswith(("[", "{", ",")) and rng.random() < 0.5:
            line += ","
        if rng.random() < 0.3:
            out.append('# a full-line comment: "quotes", // slashes, [brackets], {braces},')
        out.append(
            line + (rng.choice([" // trailing ]", " # }, [", " //"]) if rng.random() < 0.3 else "")
        )
    return "\n".join(out)


def ours(text: str) -> dict:
    try:
        cfg = ExperimentConfig(jsonc.loads(text))
    except SpecError as e:
        assert "\n" not in str(e)
        return {"ok": False}
    return {
        "ok": True,
        "json": "[" + ", ".join(cfg.json_objects()) + "]",
        "flags": list(cfg.flag_lines()),
        "job_args": [to_argv(e, sort_keys=True) for e in cfg.experiments()],
    }


def _extension(text: str) -> bool:
    """Inputs Caliban crashes on where we deliberately answer: a compound key with []."""
    return ']": []' in text


@pytest.fixture(scope="module")
def caliban_042():
    worker = caliban_ref.Worker()
    yield worker
    worker.close()


def compare(worker: caliban_ref.Worker, text: str) -> None:
    ref, got = worker.expand(text), ours(text)
    if not ref["ok"] and got["ok"] and _extension(text):
        return
    assert got["ok"] == ref["ok"], (text, ref)
    if ref["ok"]:
        assert got["json"] == ref["json"], text
        assert got["flags"] == ref["flags"], text
        assert got["job_args"] == ref["job_args"], text


@pytest.mark.slow
@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(configs, st.randoms(use_true_random=False))
def test_generated_configs_match_caliban(caliban_042, cfg, rng):
    indent = rng.choice([None, 2, 4])
    text = json.dumps(cfg, indent=indent, ensure_ascii=rng.random() < 0.5)
    compare(caliban_042, decorate(text, rng) if indent else text)


HANDWRITTEN = [
    "{}",
    "[]",
    "[{}]",
    '{"a": []}',
    '[{"a": []}, {"b": 1}]',
    '{"a": [1, 2], "b": [3, 4], "c": [true, false]}',
    '{"[a,b]": [[1, 2], [3, 4]], "c": [5, 6]}',
    '{"[a, b]": [1, 2]}',
    '{"[a,b]": [[1, 2], "pq"]}',
    '{"[a,b]": [[1, 2]], "a": 9}',
    '{"a": 9, "[a,b]": [[1, 2]]}',
    '{"[a,b]": [[1, 2]], "[a, b]": [[3, 4]]}',
    '{"[a,a]": [[1, 2]]}',
    '{"a": [null], "b": []}',
    '{"a": [[1, [2]], []]}',
    '{"a": 1e400, "b": -0.0, "c": 1E5, "d": 12345678901234567890}',
    '{"a": "sp ace", "b": "q\\"uote", "c": "#not a comment", "d": "//nor this"}',
    '{"a": 1,}',
    "[1, 2,]",
    "[,]",
    '{"a": [1,,2]}',
    '{"a": 1 # comment\n}',
    '{"a": 1 // comment\n, "b": 2}',
    '{"a": NaN}',
    '{"a": +1}',
    '{"a": .5}',
    '{"a": 01}',
    '{"a": {"b": 1}}',
    '{"a": null}',
    '{"a b": 1}',
    '{"[a,b": [[1, 2]]}',
    '{"[a,b]": 1}',
    '{"[a,b]": [[1, 2, 3]]}',
    '{"[a,b]": [[1, 2], 3]}',
    '{"[]": 1}',
    '{"": 1}',
    "5",
    '"str"',
    "[1]",
    '[[{}], [[{"a": [1, 2]}]]]',
    '{"a": "\\u00e9\\ud83d\\ude00"}',
    '{"a": 1}\f',
    '{"dup": 1, "dup": [2, 3]}',
]


@pytest.mark.slow
def test_handwritten_edge_cases_match_caliban(caliban_042):
    for text in HANDWRITTEN:
        compare(caliban_042, text)
