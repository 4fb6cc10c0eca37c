"""--docker_run_args: split without a shell, translated flag by flag, anything else refused."""

from __future__ import annotations

import pytest

from caliban_flows.spec.docker_run_args import RunOptions, parse_run_args
from caliban_flows.spec.errors import SpecError


def test_empty_means_nothing_extra():
    assert parse_run_args(None) == RunOptions()
    assert parse_run_args("   ") == RunOptions()


def test_documented_caliban_examples():
    opts = parse_run_args(
        "--volume /data:/foo --env MY_VARIABLE -e 'NAME=a b' --env-file my.env "
        "--gpus device=0 --shm-size 2g --cpus 1.5 -m 4g -p 8080:80 -w /usr/app -u 1000"
    )
    assert opts.volumes == ("/data:/foo",)
    assert opts.env == ("MY_VARIABLE", "NAME=a b")
    assert opts.env_files == ("my.env",)
    assert (opts.gpus, opts.shm_size, opts.cpus, opts.memory) == ("device=0", "2g", 1.5, "4g")
    assert (opts.publish, opts.workdir, opts.user) == (("8080:80",), "/usr/app", "1000")


def test_short_volume_flag_works_unlike_caliban():
    assert parse_run_args("-v /a:/b").volumes == ("/a:/b",)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("--privileged", "--privileged"),
        ("--env 'A=1", "cannot be split"),
        ("--volume /only-one-side", "HOST_PATH:CONTAINER_PATH"),
        ("; rm -rf /", "rm"),
        ("--cpus lots", "--cpus"),
    ],
)
def test_refused_with_one_line(text, needle):
    with pytest.raises(SpecError) as error:
        parse_run_args(text)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_split_words_keep_values_with_spaces():
    from caliban_flows.spec.docker_run_args import parse_run_words, split_run_args

    words = split_run_args("--env 'GREETING=hello world' -v '/a b:/c'")
    opts = parse_run_words(words)
    assert opts.env == ("GREETING=hello world",)
    assert opts.volumes == ("/a b:/c",)
