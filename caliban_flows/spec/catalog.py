"""The Vertex AI compute catalog: machine types, GPUs, TPUs and regions for custom training.

The data lives in ``data/vertex_catalog.json`` (hand-compiled from Google's docs, see its
``sources`` and ``notes``). It is read once, on the first call to :func:`load_catalog`, so that
importing this module stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_DATA_PACKAGE = "caliban_flows.spec"
_DATA_FILE = "data/vertex_catalog.json"


@dataclass(frozen=True)
class FixedAccelerator:
    """The accelerator a machine type always comes with (A2/A3/G2..., ct5lp-hightpu-*)."""

    name: str  # a GPU or TPU short name from the catalog
    count: int


@dataclass(frozen=True)
class MachineType:
    name: str
    vcpus: int | None
    memory_gb: float | None
    # Attachable GPUs and their allowed counts (N1 machines only).
    gpu_counts: Mapping[str, tuple[int, ...]] = field(hash=False)
    # TPUs hosted by this machine type and their allowed counts (cloud-tpu only).
    tpu_counts: Mapping[str, tuple[int, ...]] = field(hash=False)
    fixed_accelerator: FixedAccelerator | None = None
    arch: str = "x86_64"
    note: str | None = None

    @property
    def family(self) -> str:
        """The series prefix: ``n1``, ``a2``, ``ct5lp``..."""
        return self.name.split("-", 1)[0]

    @property
    def needs_accelerator(self) -> bool:
        """True when Vertex AI refuses this machine type without an accelerator."""
        return self.fixed_accelerator is not None or bool(self.tpu_counts)


@dataclass(frozen=True)
class GpuType:
    name: str
    accelerator_type: str  # google.cloud.aiplatform_v1.AcceleratorType member name
    regions: tuple[str, ...]
    retired: bool = False
    replacement: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class TpuType:
    name: str
    accelerator_type: str
    counts: tuple[int, ...]
    machine_types: tuple[str, ...]
    regions: tuple[str, ...]
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Defaults:
    gpu_spec: str
    cpu_machine_type: str
    gpu_machine_type: str


@dataclass(frozen=True)
class Catalog:
    as_of: str
    sources: tuple[str, ...]
    notes: tuple[str, ...]
    defaults: Defaults
    regions: tuple[str, ...]
    gpus: Mapping[str, GpuType] = field(hash=False)
    tpus: Mapping[str, TpuType] = field(hash=False)
    machine_types: Mapping[str, MachineType] = field(hash=False)

    def gpu_counts(self, gpu: str) -> tuple[int, ...]:
        """Every count of ``gpu`` that at least one machine type accepts, ascending."""
        return self._gpu_count_table.get(gpu, ())

    @functools.cached_property
    def _gpu_count_table(self) -> dict[str, tuple[int, ...]]:
        counts: dict[str, set[int]] = {name: set() for name in self.gpus}
        for mt in self.machine_types.values():
            for gpu, allowed in mt.gpu_counts.items():
                counts[gpu].update(allowed)
            fixed = mt.fixed_accelerator
            if fixed is not None and fixed.name in counts:
                counts[fixed.name].add(fixed.count)
        return {name: tuple(sorted(c)) for name, c in counts.items()}

    def machine_types_for_gpu(self, gpu: str, count: int) -> list[str]:
        """Names of the machine types that accept ``count`` x ``gpu``, sorted alphabetically."""
        return sorted(
            mt.name
            for mt in self.machine_types.values()
            if count in mt.gpu_counts.get(gpu, ())
            or mt.fixed_accelerator == FixedAccelerator(gpu, count)
        )

    def machine_types_for_tpu(self, tpu: str, count: int) -> list[str]:
        """Names of the machine types that host ``count`` x ``tpu``, sorted alphabetically."""
        return sorted(
            mt.name
            for mt in self.machine_types.values()
            if count in mt.tpu_counts.get(tpu, ())
            or mt.fixed_accelerator == FixedAccelerator(tpu, count)
        )


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _counts(raw: Mapping[str, list[int]] | None) -> Mapping[str, tuple[int, ...]]:
    return _frozen({k: tuple(v) for k, v in (raw or {}).items()})


def _build(raw: Mapping[str, Any]) -> Catalog:
    machine_types = {}
    for name, m in raw["machine_types"].items():
        fixed = m.get("fixed_accelerator")
        machine_types[name] = MachineType(
            name=name,
            vcpus=m.get("vcpus"),
            memory_gb=m.get("memory_gb"),
            gpu_counts=_counts(m.get("gpus")),
            tpu_counts=_counts(m.get("tpus")),
            fixed_accelerator=FixedAccelerator(fixed["type"], fixed["count"]) if fixed else None,
            arch=m.get("arch", "x86_64"),
            note=m.get("note"),
        )
    gpus = {
        name: GpuType(
            name=name,
            accelerator_type=g["accelerator_type"],
            regions=tuple(g["regions"]),
            retired=g.get("retired", False),
            replacement=g.get("replacement"),
            aliases=tuple(g.get("aliases", ())),
        )
        for name, g in raw["gpus"].items()
    }
    tpus = {
        name: TpuType(
            name=name,
            accelerator_type=t["accelerator_type"],
            counts=tuple(t["counts"]),
            machine_types=tuple(t["machine_types"]),
            regions=tuple(t["regions"]),
            aliases=tuple(t.get("aliases", ())),
        )
        for name, t in raw["tpus"].items()
    }
    return Catalog(
        as_of=raw["as_of"],
        sources=tuple(raw["sources"]),
        notes=tuple(raw.get("notes", ())),
        defaults=Defaults(**raw["defaults"]),
        regions=tuple(raw["regions"]),
        gpus=_frozen(gpus),
        tpus=_frozen(tpus),
        machine_types=_frozen(machine_types),
    )


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalog, parsed on first use and shared afterwards."""
    import json
    from importlib import resources

    text = resources.files(_DATA_PACKAGE).joinpath(_DATA_FILE).read_text(encoding="utf-8")
    return _build(json.loads(text))
