"""The parsed `--docker_run_args` as keyword arguments of the docker SDK's containers.run."""

from __future__ import annotations

from pathlib import Path

from caliban_flows.spec.docker_run_args import RunOptions
from caliban_flows.spec.docker_run_values import GpuRequest, Mount
from caliban_flows.spec.errors import SpecError

# Same names in RunOptions and in containers.run.
_SAME = ("network", "shm_size", "runtime", "user", "cap_add", "cap_drop", "group_add",
         "extra_hosts", "devices", "pids_limit")  # fmt: skip
_SECCOMP_BUILTIN = ("unconfined", "builtin")


def _device_request(gpus: GpuRequest):
    import docker.types

    return docker.types.DeviceRequest(
        driver=gpus.driver or "",
        count=gpus.count or 0,
        device_ids=list(gpus.device_ids or ()),
        capabilities=[list(gpus.capabilities)],
    )


def _mount(mount: Mount):
    import docker.types

    driver = None
    if mount.driver or mount.driver_options:
        driver = docker.types.DriverConfig(mount.driver or "local", dict(mount.driver_options))
    return docker.types.Mount(
        target=mount.target,
        source=mount.source,
        type=mount.type,
        read_only=mount.read_only,
        consistency=mount.consistency,
        propagation=mount.propagation,
        no_copy=mount.no_copy,
        labels=dict(mount.labels) or None,
        driver_config=driver,
        tmpfs_size=mount.tmpfs_size,
        tmpfs_mode=mount.tmpfs_mode,
        subpath=mount.subpath,
    )


def _security_opt(option: str) -> str:
    """The docker CLI sends a seccomp profile's contents, not its path: so do we."""
    key, sep, value = option.partition("=")
    if key != "seccomp" or not sep or value in _SECCOMP_BUILTIN:
        return option
    try:
        return f"seccomp={Path(value).expanduser().read_text(encoding='utf-8')}"
    except OSError as e:
        raise SpecError(f"--docker_run_args: --security-opt seccomp profile: {e}") from None


def run_kwargs(opts: RunOptions) -> dict:
    """Every set option of `opts`, in containers.run's terms (environment and ports aside)."""
    kwargs: dict = {name: getattr(opts, name) for name in _SAME if getattr(opts, name)}
    for name in ("extra_hosts", "devices", "cap_add", "cap_drop", "group_add"):
        if name in kwargs:
            kwargs[name] = list(kwargs[name])
    if opts.gpus is not None:
        kwargs["device_requests"] = [_device_request(opts.gpus)]
    if opts.workdir is not None:
        kwargs["working_dir"] = opts.workdir
    if opts.cpus is not None:
        kwargs["nano_cpus"] = int(opts.cpus * 1e9)
    if opts.memory is not None:
        kwargs["mem_limit"] = opts.memory
    if opts.volumes:
        kwargs["volumes"] = list(opts.volumes)
    if opts.mounts:
        kwargs["mounts"] = [_mount(m) for m in opts.mounts]
    if opts.tmpfs:
        kwargs["tmpfs"] = dict(opts.tmpfs)
    if opts.ulimits:
        import docker.types

        kwargs["ulimits"] = [docker.types.Ulimit(name=u.name, soft=u.soft, hard=u.hard)
                             for u in opts.ulimits]  # fmt: skip
    if opts.security_opt:
        kwargs["security_opt"] = [_security_opt(o) for o in opts.security_opt]
    if opts.privileged:
        kwargs["privileged"] = True
    if opts.init:
        kwargs["init"] = True
    kwargs["ipc_mode"] = opts.ipc or "host"  # Caliban ran every job with --ipc host
    return kwargs
