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


def test_the_planner_records_references_and_keeps_the_values(tmp_path, monkeypatch):
    """The plan's jobs hold references; its keys and the values' names are those of the
    values, so the same command planned again is the same job and finds the same block."""
    from caliban_flows.plan.group import GroupRequest, plan_group

    (tmp_path / "train.py").write_text("")
    monkeypatch.chdir(tmp_path)
    request = GroupRequest(platform="local", module="train.py", options={"nogpu": True},
                           script_args=["--api_key", "s3cret", "--lr", "0.1"], xgroup="g",
                           root=str(tmp_path))  # fmt: skip
    first, second = (plan_group(request, probe=False) for _ in range(2))
    [job] = first.jobs
    assert "s3cret" not in repr(first.jobs) and "s3cret" not in first.model_dump_json()
    [name] = references(job["args"])
    assert job["args"] == ["--api_key", f"{REFERENCE}{name}", "--lr", "0.1"]
    assert {n: v.get_secret_value() for n, v in first.secrets.items()} == {name: "s3cret"}
    assert "s3cret" not in repr(first.secrets)
    assert first.specs[0].args == tuple(job["args"])  # what a dry run prints
    assert second.jobs[0]["key"] == job["key"] and second.jobs[0]["args"] == job["args"]
    other = plan_group(GroupRequest(**{**request.__dict__, "script_args": ["--api_key", "x"]}),
                       probe=False)  # fmt: skip
    assert other.jobs[0]["key"] != job["key"]
