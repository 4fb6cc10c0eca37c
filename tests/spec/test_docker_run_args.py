"""--docker_run_args: split without a shell, translated flag by flag, anything else refused."""

from __future__ import annotations

import pytest

from caliban_flows.spec.docker_run_args import RunOptions, parse_run_args
from caliban_flows.spec.docker_run_values import GpuRequest, Mount, Ulimit
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
    assert (opts.shm_size, opts.cpus, opts.memory) == ("2g", 1.5, "4g")
    assert opts.gpus == GpuRequest(device_ids=("0",))
    assert (opts.publish, opts.workdir, opts.user) == (("8080:80",), "/usr/app", "1000")


def test_short_volume_flag_works_unlike_caliban():
    assert parse_run_args("-v /a:/b").volumes == ("/a:/b",)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("--oom-kill-disable", "--oom-kill-disable"),
        ("--privileged=maybe", "--privileged"),
        ("--gpus 2,device=1", "not both"),
        ("--gpus count=2,count=3", "twice"),
        ("--gpus none", "GPU count"),
        ("--ulimit nofile", "NAME=SOFT[:HARD]"),
        ("--ulimit nofile=2048:1024", "soft limit"),
        ("--mount type=bind,target=/b", "source=HOST_PATH"),
        ("--mount source=v", "target=CONTAINER_PATH"),
        ("--mount type=nfs,target=/b", "nfs"),
        ("--mount target=/b,bogus=1", "'bogus'"),
        ("--device sda", "/dev/HOST_PATH"),
        ("--tmpfs scratch", "CONTAINER_PATH"),
        ("--add-host foo", "HOST:IP"),
        ("--pids-limit many", "--pids-limit"),
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


def test_flags_people_use_on_their_own_machine():
    opts = parse_run_args(
        "--ulimit nofile=1024:2048 --ulimit=core=-1 --device /dev/fuse --device=/dev/a:/dev/b:r "
        "--device /dev/c:rw --mount type=bind,src=/a,dst=/b,ro "
        "--mount 'type=volume,source=v,target=/v,\"volume-opt=o=addr=1,nfsvers=4\"' "
        "--mount type=tmpfs,target=/t,tmpfs-size=64m,tmpfs-mode=1770 "
        "--cap-add SYS_PTRACE --cap-add=NET_ADMIN --cap-drop ALL --security-opt seccomp=unconfined "
        "--tmpfs /scratch --tmpfs=/run:rw,size=64m --add-host foo:1.2.3.4 --add-host=v6=::1 "
        "--ipc=private --privileged --init=true --pids-limit 100 --group-add video"
    )
    assert opts.ulimits == (Ulimit("nofile", 1024, 2048), Ulimit("core", -1, -1))
    assert opts.devices == ("/dev/fuse:/dev/fuse:rwm", "/dev/a:/dev/b:r", "/dev/c:/dev/c:rw")
    bind, volume, tmpfs = opts.mounts
    assert bind == Mount(target="/b", source="/a", type="bind", read_only=True)
    assert volume.driver_options == (("o", "addr=1,nfsvers=4"),)
    assert (tmpfs.tmpfs_size, tmpfs.tmpfs_mode) == ("64m", 0o1770)
    assert opts.cap_add == ("SYS_PTRACE", "NET_ADMIN") and opts.cap_drop == ("ALL",)
    assert opts.security_opt == ("seccomp=unconfined",)
    assert opts.tmpfs == (("/scratch", ""), ("/run", "rw,size=64m"))
    assert opts.extra_hosts == ("foo:1.2.3.4", "v6:::1")
    assert (opts.ipc, opts.privileged, opts.init, opts.pids_limit) == ("private", True, True, 100)
    assert opts.group_add == ("video",)


def test_switches_take_docker_booleans_and_the_last_wins():
    assert parse_run_args("--privileged --privileged=false").privileged is False
    assert parse_run_args("--init=false --init").init is True


@pytest.mark.parametrize(
    "text, gpus",
    [
        ("--gpus 2", GpuRequest(count=2)),
        ("--gpus all", GpuRequest(count=-1)),
        ("--gpus=device=2", GpuRequest(device_ids=("2",))),
        ("--gpus device=0,2", GpuRequest(device_ids=("0", "2"))),
        ("--gpus '\"device=0,2\"'", GpuRequest(device_ids=("0", "2"))),
        (
            "--gpus 'count=1,driver=nvidia,capabilities=compute'",
            GpuRequest(count=1, driver="nvidia", capabilities=("compute", "gpu")),
        ),
    ],
)
def test_gpus_as_docker_means_them(text, gpus):
    assert parse_run_args(text).gpus == gpus


def test_gpus_rewritten_for_the_docker_cli_keep_their_meaning():
    from caliban_flows.spec.docker_run_args import cli_words

    words = ["--gpus", "device=0,2", "--gpus=2", "--gpus", "all", "-v", "/a:/b"]
    assert cli_words(words) == [
        "--gpus", '"device=0,2"', "--gpus=count=2", "--gpus", "count=all", "-v", "/a:/b",
    ]  # fmt: skip
