""".calibanconfig.json parsing: shapes, DLVM aliases, comments and one-line errors."""

from __future__ import annotations

import pytest

from caliban_flows.spec.calibanconfig import (
    DLC_REPOSITORY,
    DLVM_ALIASES,
    CalibanConfig,
    parse_calibanconfig,
)
from caliban_flows.spec.errors import SpecError

DLC = DLC_REPOSITORY + "/"


def error(text: str, **kwargs: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_calibanconfig(text, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text", [None, "", "  \n", "{}", "# only a comment\n{}\n"])
def test_absent_or_empty_means_defaults(text):
    config = parse_calibanconfig(text)
    assert isinstance(config, CalibanConfig)
    assert config.apt_packages_for(gpu=True) == []
    assert config.apt_packages_for(gpu=False) == []
    assert config.base_image_for(gpu=True) is None
    assert config.base_image_for(gpu=False) is None
    assert config.build_time_credentials is False
    assert config.ignored_keys() == ()


def test_apt_packages_list_applies_to_both_modes_sorted_and_deduplicated():
    config = parse_calibanconfig('{"apt_packages": ["libxext6", "libsm6", "libxext6", "curl"]}')
    assert config.apt_packages_for(gpu=True) == ["curl", "libsm6", "libxext6"]
    assert config.apt_packages_for(gpu=False) == ["curl", "libsm6", "libxext6"]


def test_apt_packages_dict_per_mode():
    config = parse_calibanconfig(
        '{"apt_packages": {"gpu": ["libsm6", "libxrender-dev"], "cpu": ["some-other-package"]}}'
    )
    assert config.apt_packages_for(gpu=True) == ["libsm6", "libxrender-dev"]
    assert config.apt_packages_for(gpu=False) == ["some-other-package"]


def test_apt_packages_dict_with_one_mode_left_out():
    config = parse_calibanconfig('{"apt_packages": {"gpu": ["libsm6"]}}')
    assert config.apt_packages_for(gpu=True) == ["libsm6"]
    assert config.apt_packages_for(gpu=False) == []


def test_apt_package_versions_and_arch_are_allowed():
    config = parse_calibanconfig('{"apt_packages": ["curl=7.88.1-10+deb12u5", "libc6:amd64"]}')
    assert config.apt_packages_for(gpu=False) == ["curl=7.88.1-10+deb12u5", "libc6:amd64"]


def test_base_image_string_is_used_in_both_modes():
    config = parse_calibanconfig(
        '{"base_image": "gcr.io/blueshift-playground/blueshift:gpu-ubuntu1804-py38-cuda101"}'
    )
    expected = "gcr.io/blueshift-playground/blueshift:gpu-ubuntu1804-py38-cuda101"
    assert config.base_image_for(gpu=True) == expected
    assert config.base_image_for(gpu=False) == expected


def test_base_image_format_string_gets_the_mode():
    config = parse_calibanconfig('{"base_image": "my_image-{}:latest"}')
    assert config.base_image_for(gpu=True) == "my_image-gpu:latest"
    assert config.base_image_for(gpu=False) == "my_image-cpu:latest"


def test_base_image_dict_with_both_entries_optional():
    config = parse_calibanconfig('{"base_image": {"gpu": "gcr.io/p/img:gpu"}}')
    assert config.base_image_for(gpu=True) == "gcr.io/p/img:gpu"
    assert config.base_image_for(gpu=False) is None
    config = parse_calibanconfig('{"base_image": {"cpu": "a:cpu", "gpu": "a:{}"}}')
    assert config.base_image_for(gpu=False) == "a:cpu"
    assert config.base_image_for(gpu=True) == "a:gpu"


@pytest.mark.parametrize(
    ("base_image", "gpu", "expected"),
    [
        ("dlvm:tf2-{}", False, "tf2-cpu.2-17.py310"),
        ("dlvm:tf2-{}", True, "tf2-cu123.2-17.py310"),
        ("dlvm:pytorch-gpu", True, "pytorch-cu124.2-4.py310"),
        ("dlvm:pytorch-gpu-2.3", True, "pytorch-cu121.2-3.py310"),
        ("dlvm:base-{}", False, "base-cpu.py310"),
        ("dlvm:base-{}", True, "base-cu124.py310"),
        ("dlvm:tf2-gpu-2.15", True, "tf2-cu121.2-15.py310"),
        # Caliban's own versioned aliases keep their image names, now in Artifact Registry.
        ("dlvm:pytorch-{}-1.4", False, "pytorch-cpu.1-4"),
        ("dlvm:pytorch-{}-1.4", True, "pytorch-gpu.1-4"),
        ("dlvm:tf-{}-1.15", True, "tf-gpu.1-15"),
        ("dlvm:tf2-cpu-2.1", False, "tf2-cpu.2-1"),
        ("dlvm:pytorch-cpu", False, "pytorch-cpu"),
    ],
)
def test_dlvm_aliases(base_image, gpu, expected):
    config = parse_calibanconfig(f'{{"base_image": "{base_image}"}}')
    assert config.base_image_for(gpu=gpu) == DLC + expected


def test_dlvm_alias_in_dict():
    config = parse_calibanconfig(
        '{"base_image": {"cpu": "dlvm:tf2-cpu-2.16", "gpu": "dlvm:pytorch-gpu-2.4"}}'
    )
    assert config.base_image_for(gpu=False) == DLC + "tf2-cpu.2-16.py310"
    assert config.base_image_for(gpu=True) == DLC + "pytorch-cu124.2-4.py310"


def test_every_caliban_alias_is_known():
    versions = {
        "pytorch": ["1.0", "1.1", "1.2", "1.3", "1.4"],
        "tf": ["1.0", "1.13", "1.14", "1.15"],
        "tf2": ["2.0", "2.1", "2.2"],
    }
    caliban = [
        f"dlvm:{lib}-{mode}{suffix}"
        for lib, vers in versions.items()
        for mode in ("cpu", "gpu")
        for suffix in ["", *(f"-{v}" for v in vers)]
    ]
    assert len(caliban) == 30
    assert set(caliban) <= set(DLVM_ALIASES)
    assert all(image.startswith(DLC) for image in DLVM_ALIASES.values())


def test_unknown_dlvm_alias_is_an_error_at_parse_time():
    message = error('{"base_image": "dlvm:pytorch-gpu-9.9"}')
    assert message.startswith(
        ".calibanconfig.json: 'base_image' names unknown DLVM alias 'dlvm:pytorch-gpu-9.9'"
    )
    assert "dlvm:pytorch-gpu-2.4" in message


def test_unknown_dlvm_alias_from_a_format_string_fails_in_that_mode_only():
    # There is no PyTorch 2.4 CPU image; the GPU half of the format still works.
    config = parse_calibanconfig('{"base_image": "dlvm:pytorch-{}-2.4"}')
    assert config.base_image_for(gpu=True) == DLC + "pytorch-cu124.2-4.py310"
    with pytest.raises(SpecError) as info:
        config.base_image_for(gpu=False)
    assert str(info.value).startswith(
        ".calibanconfig.json: 'base_image' names unknown DLVM alias 'dlvm:pytorch-cpu-2.4'"
    )


def test_comments_and_trailing_commas():
    text = """
    # This is a list by itself. Comments are fine, by the way.
    {
        // a C-style comment too
        "apt_packages": ["libsm6", "libxext6",],  # trailing comma
        "base_image": "my://not-a-comment-{}",
    }
    """
    config = parse_calibanconfig(text)
    assert config.apt_packages_for(gpu=True) == ["libsm6", "libxext6"]
    assert config.base_image_for(gpu=True) == "my://not-a-comment-gpu"


def test_unknown_key_suggests_the_closest():
    assert error('{"apt_pakages": ["curl"]}') == (
        ".calibanconfig.json: unknown key 'apt_pakages' (did you mean 'apt_packages'?); "
        "valid keys: apt_packages, base_image, build_time_credentials, default_mode, gcloud, "
        "julia_version, mlflow_config, uv, registry, registry_block"
    )


def test_unknown_key_without_a_close_match():
    message = error('{"zzz": 1}')
    assert message.startswith(".calibanconfig.json: unknown key 'zzz'; valid keys: ")


def test_unknown_nested_key_names_its_path():
    assert error('{"apt_packages": {"gpu": [], "tpu": []}}') == (
        ".calibanconfig.json: unknown key 'apt_packages.tpu' (did you mean "
        "'apt_packages.gpu'?); valid keys in 'apt_packages': cpu, gpu"
    )
    assert "unknown key 'uv.mlflow.pubsub_topc' (did you mean 'uv.mlflow.pubsub_topic'?)" in (
        error('{"uv": {"mlflow": {"pubsub_topc": "x"}}}')
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"apt_packages": {"gpu": 5}}',
            "'apt_packages.gpu' must be a list of package names, not 5",
        ),
        (
            '{"apt_packages": "curl"}',
            "'apt_packages' must be a list of package names or a dict with optional 'cpu' "
            "and 'gpu' lists, not \"curl\"",
        ),
        (
            '{"apt_packages": ["curl", 3]}',
            "'apt_packages[1]' must be a package name (a string), not 3",
        ),
        (
            '{"apt_packages": {"cpu": ["ok", null]}}',
            "'apt_packages.cpu[1]' must be a package name (a string), not null",
        ),
        (
            '{"apt_packages": ["curl; rm -rf /"]}',
            "'apt_packages[0]' must be a Debian package name like 'libsm6' or "
            "'curl=7.88.1-10', not \"curl; rm -rf /\"",
        ),
        ('{"base_image": {"cpu": 3}}', "'base_image.cpu' must be an image name (a string), not 3"),
        (
            '{"base_image": ["a"]}',
            "'base_image' must be an image name (a string; '{}' becomes cpu or gpu) or a dict "
            "with optional 'cpu' and 'gpu' images, not [\"a\"]",
        ),
        (
            '{"base_image": "two words"}',
            "'base_image' must be a Docker image like 'python:3.11-slim', 'my-image-{}:latest' "
            "or 'dlvm:tf2-gpu', not \"two words\"",
        ),
        ('{"build_time_credentials": "yes"}', "'build_time_credentials' must be true or false"),
        ('{"default_mode": "tpu"}', "'default_mode' must be 'cpu' or 'gpu', not \"tpu\""),
        ('{"gcloud": {"project_id": 7}}', "'gcloud.project_id' must be a non-empty string"),
        ('{"julia_version": 1.5}', "'julia_version' must be a string, not 1.5"),
        ('{"uv": {"mlflow": {"pubsub_topic": 3}}}', "'uv.mlflow.pubsub_topic' must be a string"),
        (
            '{"mlflow_config": {"project": "p"}}',
            "'mlflow_config' is missing required key 'region'",
        ),
    ],
)
def test_wrong_types_name_the_key_path(text, expected):
    assert error(text).startswith(f".calibanconfig.json: {expected}")


def test_several_problems_are_counted_on_the_same_line():
    message = error('{"apt_packages": [1, 2, 3]}')
    assert message.endswith("(and 2 more problems)")


def test_top_level_must_be_an_object():
    assert error("[1, 2]").startswith(".calibanconfig.json must hold a JSON object")


def test_invalid_json_names_the_file():
    assert error('{"apt_packages": [}', source="proj/.calibanconfig.json").startswith(
        "proj/.calibanconfig.json is not valid JSON"
    )


def test_source_name_prefixes_errors():
    assert error('{"nope": 1}', source="/x/.calibanconfig.json").startswith(
        "/x/.calibanconfig.json: unknown key 'nope'"
    )


def test_caliban_only_keys_are_accepted_and_reported_as_ignored():
    config = parse_calibanconfig(
        """{
          "build_time_credentials": true,
          "default_mode": " GPU ",
          "julia_version": " 1.5.2 ",
          "gcloud": {"project_id": "my-project", "cloud_key": "/keys/key.json"},
          "mlflow_config": {"project": "p", "region": "r", "db": "d", "user": "u",
                            "password": "pw", "artifact_root": "gs://b", "debug": true},
          "uv": {"mlflow": {"pubsub_project": "p"}}
        }"""
    )
    assert config.build_time_credentials is True
    assert config.default_mode == "gpu"
    assert config.julia_version == "1.5.2"
    assert config.gcloud.project_id == "my-project"
    assert config.mlflow_config is not None and config.mlflow_config.debug is True
    assert config.uv.mlflow is not None and config.uv.mlflow.pubsub_topic == "mlflow"
    assert config.ignored_keys() == (
        "build_time_credentials",
        "default_mode",
        "gcloud",
        "julia_version",
        "mlflow_config",
        "uv",
    )
    # They change nothing about the image.
    assert config.apt_packages_for(gpu=True) == []
    assert config.base_image_for(gpu=True) is None


def test_config_is_immutable():
    config = parse_calibanconfig('{"apt_packages": ["curl"]}')
    with pytest.raises(ValueError):
        config.build_time_credentials = True  # type: ignore[misc]


def test_dump_round_trips_through_the_parser():
    text = '{"apt_packages": {"gpu": ["libsm6"]}, "base_image": {"cpu": "dlvm:tf2-cpu"}}'
    config = parse_calibanconfig(text)
    again = parse_calibanconfig(config.model_dump_json())
    assert again.apt_packages_for(gpu=True) == ["libsm6"]
    assert again.base_image_for(gpu=False) == config.base_image_for(gpu=False)
