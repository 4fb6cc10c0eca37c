"""Secret script-argument values leave the recorded args and come back at run time."""

from __future__ import annotations

import pytest

from caliban_flows.spec.secret_args import REFERENCE, hide, references, reveal


def _names(value: str) -> str:
    return f"n{len(value)}"


@pytest.mark.parametrize(
    ("args", "recorded"),
    [
        (["--api_key", "k3y", "--lr", "0.1"], ["--api_key", f"{REFERENCE}n3", "--lr", "0.1"]),
        (["--hf-token=abcd"], [f"--hf-token={REFERENCE}n4"]),
        (["--db_password", "pw", "x"], ["--db_password", f"{REFERENCE}n2", "x"]),
        (["--api_key", "--lr", "1"], ["--api_key", "--lr", "1"]),  # a flag has no value
        (["--api_key"], ["--api_key"]),
        (["--monkey", "banana"], ["--monkey", "banana"]),  # 'monkey' names no secret
        (["--lr", "0.1", "positional"], ["--lr", "0.1", "positional"]),
    ],
)
def test_secret_values_are_recorded_as_references(args, recorded):
    hidden, kept = hide(args, _names)
    assert hidden == recorded
    assert reveal(hidden, kept.__getitem__) == args
    assert set(references(hidden)) == set(kept)
    for value in kept.values():
        assert not any(value in a for a in hidden)


def test_a_reference_is_left_as_it_is_and_found_again():
    recorded = ["--api_key", f"{REFERENCE}kept", f"--token={REFERENCE}other"]
    hidden, kept = hide(recorded, _names)
    assert (hidden, kept) == (recorded, {})
    assert references(hidden) == ["kept", "other"]
    assert reveal(hidden, {"kept": "v1", "other": "v2"}.__getitem__) == [
        "--api_key", "v1", "--token=v2"
    ]  # fmt: skip


def test_a_missing_value_fails_loudly():
    with pytest.raises(KeyError):
        reveal(["--api_key", f"{REFERENCE}gone"], {}.__getitem__)
