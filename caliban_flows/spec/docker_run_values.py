"""The values of `docker run` flags with a syntax of their own (--gpus, --mount, --ulimit,
--device, --tmpfs, --add-host), parsed the way the docker CLI reads them, into plain data.

Each parser raises ValueError with the reason; the caller names the flag.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

_TRUE = ("", "1", "true", "yes")
_FALSE = ("0", "false", "no")


@dataclass(frozen=True)
class GpuRequest:
    """`--gpus`: a count (-1: all) or device ids, as one docker DeviceRequest."""

    count: int | None = None
    device_ids: tuple[str, ...] | None = None
    driver: str | None = None
    capabilities: tuple[str, ...] = ("gpu",)


@dataclass(frozen=True)
class Ulimit:
    name: str
    soft: int
    hard: int


@dataclass(frozen=True)
class Mount:
    """`--mount`, in the docker SDK's Mount terms."""

    target: str
    source: str | None = None
    type: str = "volume"
    read_only: bool = False
    consistency: str | None = None
    propagation: str | None = None
    no_copy: bool = False
    labels: tuple[tuple[str, str], ...] = ()
    driver: str | None = None
    driver_options: tuple[tuple[str, str], ...] = ()
    tmpfs_size: int | str | None = None
    tmpfs_mode: int | None = None
    subpath: str | None = None


def _csv_fields(text: str) -> list[str]:
    """Docker reads --gpus and --mount as one CSV record: a quoted field may hold commas."""
    rows = list(csv.reader([text]))
    return [f.strip() for f in rows[0]] if rows else []


def _count(text: str) -> int:
    if text == "all":
        return -1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a GPU count (a number, or all)")
    return int(text)


def parse_gpus(text: str) -> GpuRequest:
    """`all`, `2` (two GPUs), `device=2`, `device=0,2` or `"device=0,2"` (those GPUs), and
    docker's `count=`, `driver=`, `capabilities=` keys.

    Docker's own CLI reads an unquoted `device=0,2` as device 0 plus a count of 2, which the
    engine then refuses; here the ids after `device=` all belong to it, as the user meant.
    """
    fields = _csv_fields(text.strip())
    if not fields:
        raise ValueError("needs a value: all, a count, or device=IDS")
    count: int | None = None
    devices: list[str] | None = None
    driver = None
    capabilities: list[str] = []
    last = None
    seen: set[str] = set()
    for field in fields:
        key, sep, value = field.partition("=")
        if not sep and last == "device":
            assert devices is not None
            devices.append(field)
            continue
        if not sep:
            key, value = "count", key
        if key in seen:
            raise ValueError(f"{key!r} is given twice")
        seen.add(key)
        if key == "count":
            count = _count(value)
        elif key == "device":
            devices = [d for d in value.split(",") if d]
            if not devices:
                raise ValueError("device= needs GPU ids or UUIDs, e.g. device=0,2")
        elif key == "driver":
            driver = value
        elif key == "capabilities":
            capabilities = [c for c in value.split(",") if c]
        else:
            raise ValueError(f"unknown key {key!r} in {field!r} (count, device, driver, "
                             "capabilities)")  # fmt: skip
        last = key
    if count is not None and devices is not None:
        raise ValueError("give a count or device ids, not both")
    if count is None and devices is None:
        count = 1
    caps = tuple(dict.fromkeys([*capabilities, "gpu"]))
    return GpuRequest(count, tuple(devices) if devices else None, driver, caps)


def _limit(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None


def parse_ulimit(text: str) -> Ulimit:
    """`NAME=SOFT[:HARD]`, e.g. nofile=1024:2048; -1 means unlimited."""
    name, sep, values = text.partition("=")
    if not sep or not name or not values:
        raise ValueError(f"{text!r} must be NAME=SOFT[:HARD], e.g. nofile=1024:2048")
    soft, _, hard = values.partition(":")
    ulimit = Ulimit(name, _limit(soft), _limit(hard or soft))
    if -1 not in (ulimit.soft, ulimit.hard) and ulimit.soft > ulimit.hard:
        raise ValueError(f"{text!r}: the soft limit is above the hard one")
    return ulimit


_DEVICE_MODES = set("rwm")


def parse_device(text: str) -> str:
    """`HOST[:CONTAINER][:PERMISSIONS]` as the SDK's `HOST:CONTAINER:PERMISSIONS`."""
    parts = text.split(":")
    if len(parts) > 3 or not parts[0].startswith("/"):
        raise ValueError(f"{text!r} must be /dev/HOST_PATH[:CONTAINER_PATH][:rwm]")
    if len(parts) == 2 and not parts[1].startswith("/"):  # /dev/x:rw
        parts = [parts[0], parts[0], parts[1]]
    host = parts[0]
    container = parts[1] if len(parts) > 1 else host
    mode = parts[2] if len(parts) > 2 else "rwm"
    if not mode or not set(mode) <= _DEVICE_MODES or not container.startswith("/"):
        raise ValueError(f"{text!r} must be /dev/HOST_PATH[:CONTAINER_PATH][:rwm]")
    return f"{host}:{container}:{mode}"


def parse_tmpfs(text: str) -> tuple[str, str]:
    """`PATH[:OPTIONS]`, e.g. /scratch or /scratch:rw,size=64m."""
    path, _, options = text.partition(":")
    if not path.startswith("/"):
        raise ValueError(f"{text!r} must be an absolute CONTAINER_PATH[:OPTIONS]")
    return path, options


def parse_host(text: str) -> str:
    """`NAME:IP` or `NAME=IP` (docker's newer spelling, for IPv6) as the engine's NAME:IP."""
    sep = "=" if "=" in text else ":"
    name, found, address = text.partition(sep)
    if not found or not name or not address:
        raise ValueError(f"{text!r} must be HOST:IP (or HOST=IP)")
    return f"{name}:{address}"


_MOUNT_TYPES = ("bind", "volume", "tmpfs")
_MOUNT_KEYS = {
    "src": "source",
    "source": "source",
    "dst": "target",
    "destination": "target",
    "target": "target",
    "ro": "read_only",
    "readonly": "read_only",
}


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{key}={value!r} must be true or false")


def _pair(key: str, value: str) -> tuple[str, str]:
    name, sep, inner = value.partition("=")
    if not sep or not name:
        raise ValueError(f"{key}={value!r} must be {key}=NAME=VALUE")
    return name, inner


def _size(value: str) -> int | str:
    return int(value) if value.isdigit() else value  # the SDK reads "64m" itself


def parse_mount(text: str) -> Mount:
    """Docker's `--mount type=bind,source=/a,target=/b,readonly`, key by key."""
    values: dict = {"type": "volume"}
    labels: list[tuple[str, str]] = []
    options: list[tuple[str, str]] = []
    for field in _csv_fields(text):
        key, sep, value = field.partition("=")
        key = key.lower()
        name = _MOUNT_KEYS.get(key, key)
        if name == "read_only" or key == "volume-nocopy":
            values["read_only" if name == "read_only" else "no_copy"] = _flag(key, value)
        elif not sep:
            raise ValueError(f"{field!r} needs a value ({field}=...)")
        elif name in ("source", "target", "consistency", "type"):
            values[name] = value
        elif key == "bind-propagation":
            values["propagation"] = value
        elif key == "volume-label":
            labels.append(_pair(key, value))
        elif key == "volume-driver":
            values["driver"] = value
        elif key == "volume-opt":
            options.append(_pair(key, value))
        elif key == "volume-subpath":
            values["subpath"] = value
        elif key == "tmpfs-size":
            values["tmpfs_size"] = _size(value)
        elif key == "tmpfs-mode":
            values["tmpfs_mode"] = _octal(value)
        else:
            raise ValueError(f"unknown key {key!r} (type, source, target, readonly, "
                             "bind-propagation, volume-*, tmpfs-size, tmpfs-mode)")  # fmt: skip
    if values["type"] not in _MOUNT_TYPES:
        raise ValueError(f"type={values['type']!r} is not one of {', '.join(_MOUNT_TYPES)}")
    if not values.get("target"):
        raise ValueError(f"{text!r} needs a target=CONTAINER_PATH")
    if values["type"] == "bind" and not values.get("source"):
        raise ValueError(f"{text!r}: a bind mount needs source=HOST_PATH")
    return Mount(**values, labels=tuple(labels), driver_options=tuple(options))


def _octal(value: str) -> int:
    try:
        return int(value, 8)
    except ValueError:
        raise ValueError(f"tmpfs-mode={value!r} must be an octal mode like 1770") from None
