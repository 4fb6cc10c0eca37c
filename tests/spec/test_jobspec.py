"""job_specs: one JobSpec per experiment, numbered from 1, args and labels as Caliban built them."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from caliban_flows.spec import jsonc
from caliban_flows.spec.errors import SpecError
from caliban_flows.spec.experiment import ExperimentConfig
from caliban_flows.spec.jobspec import (
    JobSpec,
    default_job_name,
    default_xgroup,
    experiments_of,
    job_specs,
)

IMAGE = "gcr.io/my-project/caliban:abc123"
IMAGE_LABEL = "gcr_iomy-projectcalibanabc123"

BROADCAST = """{
    # comments work inside the JSON file!
    "epochs": [2, 3],
    "batch_size": [64, 128], # end of line comments too.
    "constant_arg": "something",
    "important_toggle": [true, false]
}
"""


def specs(config=None, script_args=(), **kwargs) -> list[JobSpec]:
    options = {
        "job_name": "caliban_totoro",
        "image": IMAGE,
        "gpu_enabled": True,
        "tpu_enabled": False,
    }
    options.update(kwargs)
    return job_specs(config=config, script_args=script_args, **options)


# -- names -----------------------------------------------------------------------------------


def test_tv14_default_job_name():
    assert default_job_name("totoro") == "caliban_totoro"


def test_default_xgroup():
    now = datetime(2020, 6, 15, 19, 57, 43, 123456)
    assert default_xgroup("totoro", now) == "totoro-xgroup-2020-06-15-19-57-43"
    assert default_xgroup("a", datetime(2021, 1, 2, 3, 4, 5)) == "a-xgroup-2021-01-02-03-04-05"


# -- without a config ------------------------------------------------------------------------


def test_no_config_is_one_job_without_flags():
    (job,) = specs(None, ["--foo", "3"])
    assert job.index == 1
    assert job.name == "caliban_totoro_1"
    assert job.args == ("--foo", "3")
    assert dict(job.experiment) == {}
    assert job.labels == {
        "gpu_enabled": "true",
        "tpu_enabled": "false",
        "job_name": "caliban_totoro",
        "docker_image": IMAGE_LABEL,
        "foo": "3",
    }


def test_experiments_of():
    assert list(experiments_of(None)) == [{}]
    assert list(experiments_of(ExperimentConfig({"a": [1, 2]}))) == [{"a": 1}, {"a": 2}]
    assert list(experiments_of(ExperimentConfig([]))) == []


def test_empty_config_dict_is_one_job():
    (job,) = specs(ExperimentConfig({}), ["--x"])
    assert job.args == ("--x",)


def test_config_with_no_experiments_gives_no_jobs():
    assert specs(ExperimentConfig({"a": []}), ["--x", "1"]) == []
    assert specs(ExperimentConfig([])) == []


# -- with a config ---------------------------------------------------------------------------


def test_tv3_script_args_come_first_then_sorted_experiment_flags():
    jobs = specs(ExperimentConfig(jsonc.loads(BROADCAST)), ["--key", "value"])
    assert [j.index for j in jobs] == list(range(1, 9))
    assert [j.name for j in jobs] == [f"caliban_totoro_{i}" for i in range(1, 9)]

    # Caliban 0.4.2's order of experiments (epochs fastest), each with its keys sorted.
    def args(batch: str, epochs: str, *toggle: str) -> tuple[str, ...]:
        return ("--key", "value", "--batch_size", batch, "--constant_arg", "something",
                "--epochs", epochs, *toggle)  # fmt: skip

    on = "--important_toggle"
    assert [j.args for j in jobs] == [
        args("64", "2", on),
        args("64", "3", on),
        args("128", "2", on),
        args("128", "3", on),
        args("64", "2"),
        args("64", "3"),
        args("128", "2"),
        args("128", "3"),
    ]


def test_each_job_keeps_its_experiment_in_file_order():
    jobs = specs(ExperimentConfig({"b": [1, 2], "a": "x"}))
    assert [list(j.experiment.items()) for j in jobs] == [
        [("b", 1), ("a", "x")],
        [("b", 2), ("a", "x")],
    ]
    assert [j.args for j in jobs] == [("--a", "x", "--b", "1"), ("--a", "x", "--b", "2")]


def test_tv13_labels_of_each_job():
    jobs = specs(ExperimentConfig({"learning_rate": [0.01, 0.001]}), gpu_enabled=False)
    assert [j.labels for j in jobs] == [
        {
            "gpu_enabled": "false",
            "tpu_enabled": "false",
            "job_name": "caliban_totoro",
            "docker_image": IMAGE_LABEL,
            "learning_rate": "0_01",
        },
        {
            "gpu_enabled": "false",
            "tpu_enabled": "false",
            "job_name": "caliban_totoro",
            "docker_image": IMAGE_LABEL,
            "learning_rate": "0_001",
        },
    ]


def test_labels_from_script_args_and_experiment_win_over_user_labels():
    (job,) = specs(
        ExperimentConfig({"epochs": 2, "learning_rate": 0.01}),
        ["--foo", "3"],
        tpu_enabled=True,
        user_labels=[("Team", "ML.Research"), ("epochs", "99")],
    )
    assert job.args == ("--foo", "3", "--epochs", "2", "--learning_rate", "0.01")
    assert list(job.labels.items()) == [
        ("gpu_enabled", "true"),
        ("tpu_enabled", "true"),
        ("job_name", "caliban_totoro"),
        ("docker_image", IMAGE_LABEL),
        ("team", "ml_research"),
        ("epochs", "2"),
        ("foo", "3"),
        ("learning_rate", "0_01"),
    ]


def test_boolean_flags_and_false_values_in_jobs():
    jobs = specs(ExperimentConfig({"toggle": [True, False], "z": 1}))
    assert [j.args for j in jobs] == [("--toggle", "--z", "1"), ("--z", "1")]
    assert jobs[0].labels["toggle"] == ""
    assert "toggle" not in jobs[1].labels


def test_custom_job_name_is_used_raw_in_names_and_sanitized_in_labels():
    (job,) = specs(None, job_name="My.Run")
    assert job.name == "My.Run_1"
    assert job.labels["job_name"] == "my_run"


def test_the_negative_number_quirk_reaches_job_labels():
    (job,) = specs(ExperimentConfig({"sleep": -1}))
    assert job.args == ("--sleep", "-1")
    assert job.labels["sleep"] == ""
    assert job.labels["k1"] == ""


# -- the label limit -------------------------------------------------------------------------


def test_sixty_four_labels_pass():
    config = ExperimentConfig({f"f{i:02d}": 1 for i in range(60)})
    (job,) = specs(config)
    assert len(job.labels) == 64


def test_too_many_labels_fail_the_whole_submission_with_one_line():
    # Only the second experiment has a 65th label; nothing is returned at all.
    config = ExperimentConfig([{"a": 1}, {f"f{i:02d}": 1 for i in range(61)}])
    with pytest.raises(SpecError) as info:
        specs(config)
    message = str(info.value)
    assert "\n" not in message
    assert "65" in message and "64" in message


def test_user_labels_count_toward_the_limit():
    with pytest.raises(SpecError):
        specs(None, user_labels=[(f"u{i}", "v") for i in range(61)])
    (job,) = specs(None, user_labels=[(f"u{i}", "v") for i in range(60)])
    assert len(job.labels) == 64


# -- the record ------------------------------------------------------------------------------


def test_jobspec_is_frozen():
    (job,) = specs(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.name = "other"  # type: ignore[misc]


def test_jobspec_defaults():
    job = JobSpec(1, "n_1", ("--a",))
    assert dict(job.experiment) == {}
    assert dict(job.labels) == {}
