"""Parsing and client-side validation of Vertex AI machine types, GPUs, TPUs and regions.

Everything here checks user input against the packaged catalog (:mod:`.catalog`) and raises
:class:`~caliban_flows.spec.errors.SpecError` with a one-line message when it does not fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from caliban_flows.spec.catalog import Catalog, MachineType, load_catalog
from caliban_flows.spec.errors import SpecError

__all__ = [
    "GpuSpec",
    "TpuSpec",
    "accelerator_config",
    "default_gpu_spec",
    "default_machine_type",
    "parse_gpu_spec",
    "parse_machine_type",
    "parse_region",
    "parse_tpu_spec",
    "valid_gpu_names",
    "valid_tpu_names",
    "validate_cloud_resources",
]

_NO_ACCELERATOR = "ACCELERATOR_TYPE_UNSPECIFIED"


def _did_you_mean(value: str, choices: Iterable[str]) -> str:
    """``" did you mean 'X'?"`` for the closest choice (case-insensitive), else ``""``."""
    import difflib

    by_upper = {c.upper(): c for c in choices}
    match = difflib.get_close_matches(value.upper(), list(by_upper), n=1)
    return f" did you mean '{by_upper[match[0]]}'?" if match else ""


def _q(value: object) -> str:
    """Quote user input for a message, escaping anything that could break the one line."""
    text = str(value)
    return f"'{text}'" if text.isprintable() else repr(text)


def _join(items: Iterable[object]) -> str:
    return ", ".join(str(i) for i in items)


def _check_count(count: object, what: str) -> None:
    # bool is an int subclass; True is not a GPU count.
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise SpecError(f"{what} count {count!r} must be a positive integer")


@dataclass(frozen=True)
class GpuSpec:
    """``count`` GPUs of one type; ``gpu`` is the catalog's short name (``"V100"``)."""

    count: int
    gpu: str

    def __post_init__(self) -> None:
        _check_count(self.count, "GPU")
        if self.gpu not in load_catalog().gpus:
            raise SpecError(
                f"unknown GPU type {_q(self.gpu)};{_did_you_mean(self.gpu, valid_gpu_names())}"
                f" valid GPU types: {_join(valid_gpu_names())}"
            )

    @property
    def accelerator_type(self) -> str:
        """The ``google.cloud.aiplatform_v1.AcceleratorType`` member name."""
        return load_catalog().gpus[self.gpu].accelerator_type

    def __str__(self) -> str:
        return f"{self.count}x{self.gpu}"


@dataclass(frozen=True)
class TpuSpec:
    """``count`` TPU cores/chips of one type; ``tpu`` is ``"V2"``, ``"V3"``, ``"V4_POD"``..."""

    count: int
    tpu: str

    def __post_init__(self) -> None:
        _check_count(self.count, "TPU")
        if self.tpu not in load_catalog().tpus:
            raise SpecError(
                f"unknown TPU type {_q(self.tpu)};{_did_you_mean(self.tpu, valid_tpu_names())}"
                f" valid TPU types: {_join(valid_tpu_names())}"
            )

    @property
    def accelerator_type(self) -> str:
        return load_catalog().tpus[self.tpu].accelerator_type

    def __str__(self) -> str:
        return f"{self.count}x{self.tpu}"


def valid_gpu_names() -> list[str]:
    """GPU short names Vertex AI still offers, sorted."""
    return sorted(name for name, g in load_catalog().gpus.items() if not g.retired)


def valid_tpu_names() -> list[str]:
    return sorted(load_catalog().tpus)


def _split_spec(text: str, kind: str, example: str) -> tuple[int, str]:
    if not isinstance(text, str):
        raise SpecError(f"{kind} spec {text!r} must be a string like {example}")
    cleaned = text.strip()
    at = cleaned.lower().find("x")
    if at < 0:
        raise SpecError(
            f"{kind} spec {_q(cleaned)} must look like NUMxTYPE with an 'x' between count and"
            f" type, e.g. {example}"
        )
    count_text, type_text = cleaned[:at].strip(), cleaned[at + 1 :].strip()
    if not (count_text.isascii() and count_text.isdigit()) or int(count_text) < 1:
        raise SpecError(
            f"{kind} spec {_q(cleaned)} has count {_q(count_text)}, which must be a positive"
            f" integer, e.g. {example}"
        )
    return int(count_text), type_text


def _normalize(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def _resolve_gpu(name: str, spec: str, catalog: Catalog, *, retired_ok: bool = False) -> str:
    key = _normalize(name)
    for gpu in catalog.gpus.values():
        if key == gpu.name or key == gpu.accelerator_type or key in gpu.aliases:
            if gpu.retired and not retired_ok:
                hint = f"; use {gpu.replacement} instead" if gpu.replacement else ""
                raise SpecError(
                    f"GPU type {_q(name)} in {_q(spec)} is retired on Vertex AI{hint}"
                    f" (valid GPU types: {_join(valid_gpu_names())}); a cluster of your own"
                    " still takes it with caliban cluster job submit"
                )
            return gpu.name
    choices = valid_gpu_names()
    raise SpecError(
        f"unknown GPU type {_q(name)} in {_q(spec)};{_did_you_mean(name, choices)}"
        f" valid GPU types: {_join(choices)}"
    )


def _resolve_tpu(name: str, spec: str, catalog: Catalog) -> str:
    key = _normalize(name)
    for tpu in catalog.tpus.values():
        if key == tpu.name or key == tpu.accelerator_type or key in tpu.aliases:
            return tpu.name
    choices = valid_tpu_names()
    raise SpecError(
        f"unknown TPU type {_q(name)} in {_q(spec)};{_did_you_mean(name, choices)}"
        f" valid TPU types: {_join(choices)}"
    )


def parse_gpu_spec(text: str, *, validate_count: bool = True, retired_ok: bool = False) -> GpuSpec:
    """Parse Caliban's ``NUMxTYPE`` GPU syntax, e.g. ``"2xV100"`` or ``"1xNVIDIA_TESLA_T4"``.

    With ``validate_count``, the count must be one that some machine type offers for that GPU.
    ``retired_ok`` takes GPUs Vertex AI retired (K80): a cluster's own nodes may still have them.
    """
    catalog = load_catalog()
    count, type_text = _split_spec(text, "GPU", "1xT4 or 2xV100")
    gpu = _resolve_gpu(type_text, text.strip(), catalog, retired_ok=retired_ok)
    if validate_count:
        allowed = catalog.gpu_counts(gpu)
        if count not in allowed:
            raise SpecError(
                f"{count} GPUs of type {gpu} aren't available for any machine type;"
                f" try one of: {_join(allowed)}"
            )
    return GpuSpec(count=count, gpu=gpu)


def parse_tpu_spec(text: str, *, validate_count: bool = True) -> TpuSpec:
    """Parse ``NUMxTYPE`` for TPUs, e.g. ``"8xV3"``; accepts V4, V5E and V5LITEPOD aliases."""
    catalog = load_catalog()
    count, type_text = _split_spec(text, "TPU", "8xV3")
    tpu = _resolve_tpu(type_text, text.strip(), catalog)
    if validate_count:
        allowed = catalog.tpus[tpu].counts
        if count not in allowed:
            raise SpecError(
                f"{count} TPUs of type {tpu} aren't available on Vertex AI;"
                f" try one of: {_join(allowed)}"
            )
    return TpuSpec(count=count, tpu=tpu)


def _summarize_machine_types(names: Iterable[str]) -> str:
    """Compact listing: ``n1-standard-{4,8,16}, cloud-tpu, ...`` in sorted prefix order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        prefix, _, suffix = name.rpartition("-")
        groups.setdefault(prefix, []).append(suffix)

    def size(suffix: str) -> tuple[int, str]:
        digits = "".join(ch for ch in suffix if ch.isdigit())
        return (int(digits) if digits else 0, suffix)

    parts = []
    for prefix in sorted(groups):
        suffixes = sorted(groups[prefix], key=size)
        if len(suffixes) == 1:
            parts.append(f"{prefix}-{suffixes[0]}")
        else:
            parts.append(f"{prefix}-{{{','.join(suffixes)}}}")
    return ", ".join(parts)


def parse_machine_type(text: str) -> str:
    """Return ``text`` as a known Vertex AI training machine type (lower-cased)."""
    catalog = load_catalog()
    name = text.strip().lower() if isinstance(text, str) else text
    if isinstance(name, str) and name in catalog.machine_types:
        return name
    raise SpecError(
        f"unknown machine type {_q(text)};{_did_you_mean(str(name), catalog.machine_types)}"
        f" valid machine types: {_summarize_machine_types(catalog.machine_types)}"
    )


def parse_region(text: str) -> str:
    """Return ``text`` as a known Vertex AI region (lower-cased)."""
    catalog = load_catalog()
    name = text.strip().lower() if isinstance(text, str) else text
    if isinstance(name, str) and name in catalog.regions:
        return name
    raise SpecError(
        f"unknown region {_q(text)};{_did_you_mean(str(name), catalog.regions)}"
        f" valid regions: {_join(catalog.regions)}"
    )


def default_gpu_spec() -> GpuSpec:
    """Caliban's default GPU spec (1xP100), read from the catalog's defaults."""
    return parse_gpu_spec(load_catalog().defaults.gpu_spec)


def _smallest(machines: Iterable[MachineType]) -> MachineType | None:
    return min(
        machines,
        key=lambda m: (m.vcpus or 0, m.memory_gb or 0, m.name),
        default=None,
    )


def default_machine_type(*, gpu: GpuSpec | None, tpu: TpuSpec | None) -> str:
    """The machine type Caliban would pick for these accelerators.

    CPU-only: n1-highcpu-32. GPUs that attach to N1: n1-standard-8 (or the smallest N1 machine
    that takes the count). GPUs with their own family: the smallest machine of that family with
    exactly ``gpu.count``. TPU without GPU: the machine type that hosts it.
    """
    catalog = load_catalog()
    machines = catalog.machine_types
    if gpu is not None:
        attachable = [m for m in machines.values() if gpu.gpu in m.gpu_counts]
        if attachable:
            preferred = machines.get(catalog.defaults.gpu_machine_type)
            if preferred is not None and gpu.count in preferred.gpu_counts.get(gpu.gpu, ()):
                return preferred.name
            candidates = [m for m in attachable if gpu.count in m.gpu_counts[gpu.gpu]]
        else:
            candidates = [
                m
                for m in machines.values()
                if m.fixed_accelerator is not None
                and (m.fixed_accelerator.name, m.fixed_accelerator.count) == (gpu.gpu, gpu.count)
            ]
        best = _smallest(candidates)
        if best is None:
            raise SpecError(
                f"no machine type takes {gpu}; counts available for {gpu.gpu}:"
                f" {_join(catalog.gpu_counts(gpu.gpu)) or 'none'}"
            )
        return best.name
    if tpu is not None:
        names = catalog.machine_types_for_tpu(tpu.tpu, tpu.count)
        best = _smallest(machines[n] for n in names)
        if best is None:
            raise SpecError(
                f"no machine type hosts {tpu}; counts available for {tpu.tpu}:"
                f" {_join(catalog.tpus[tpu.tpu].counts)}"
            )
        return best.name
    return catalog.defaults.cpu_machine_type


def _machines_for_spec(spec: GpuSpec | TpuSpec, catalog: Catalog) -> list[str]:
    if isinstance(spec, GpuSpec):
        return catalog.machine_types_for_gpu(spec.gpu, spec.count)
    return catalog.machine_types_for_tpu(spec.tpu, spec.count)


def _spec_name(spec: GpuSpec | TpuSpec) -> str:
    return spec.gpu if isinstance(spec, GpuSpec) else spec.tpu


def _check_fixed(machine: MachineType, spec: GpuSpec | TpuSpec | None, catalog: Catalog) -> None:
    fixed = machine.fixed_accelerator
    assert fixed is not None
    expected = f"{fixed.count}x{fixed.name}"
    if spec is not None and (_spec_name(spec), spec.count) == (fixed.name, fixed.count):
        return
    if spec is None:
        kind = "GPU" if fixed.name in catalog.gpus else "TPU"
        raise SpecError(
            f"machine type {machine.name} always comes with {expected}, so it needs the"
            f" {kind} spec {expected}; got no accelerator spec"
        )
    others = _machines_for_spec(spec, catalog)
    hint = f"; machine types for {spec}: {_join(others)}" if others else ""
    raise SpecError(f"machine type {machine.name} comes with exactly {expected}, not {spec}{hint}")


def _check_gpu_on_machine(machine: MachineType, gpu: GpuSpec, catalog: Catalog) -> None:
    if gpu.count in machine.gpu_counts.get(gpu.gpu, ()):
        return
    valid = catalog.machine_types_for_gpu(gpu.gpu, gpu.count)
    if not valid:
        raise SpecError(
            f"{gpu.count} GPUs of type {gpu.gpu} aren't available for any machine type;"
            f" try one of: {_join(catalog.gpu_counts(gpu.gpu))}"
        )
    raise SpecError(
        f"{gpu} isn't available on machine type {machine.name};"
        f" valid machine types for {gpu}: {_join(valid)}"
    )


def _check_tpu_on_machine(machine: MachineType, tpu: TpuSpec, catalog: Catalog) -> None:
    if tpu.count in machine.tpu_counts.get(tpu.tpu, ()):
        return
    valid = catalog.machine_types_for_tpu(tpu.tpu, tpu.count)
    raise SpecError(
        f"{tpu} isn't available on machine type {machine.name};"
        f" valid machine types for {tpu}: {_join(valid) or 'none'}"
    )


def _check_region(name: str, kind: str, region: str, catalog: Catalog) -> None:
    table = catalog.gpus if kind == "GPU" else catalog.tpus
    regions = table[name].regions
    if region in regions:
        return
    if regions:
        where = f"valid regions for {name}: {_join(sorted(regions))}"
    else:
        where = f"no region offers {name} (catalog as of {catalog.as_of})"
    here = sorted(n for n, t in table.items() if region in t.regions)
    raise SpecError(
        f"{kind} type {name} isn't offered for Vertex AI training in region {region}; {where};"
        f" {kind} types offered in {region}: {_join(here) or 'none'}"
    )


def validate_cloud_resources(
    *, machine_type: str, gpu: GpuSpec | None, tpu: TpuSpec | None, region: str
) -> None:
    """Raise SpecError unless Vertex AI can run this machine/accelerator mix in ``region``.

    Purely client-side (the catalog may lag Google); callers skip it for ``--force``.
    """
    catalog = load_catalog()
    machine = catalog.machine_types[parse_machine_type(machine_type)]
    region = parse_region(region)
    if gpu is not None and tpu is not None:
        raise SpecError(
            f"a Vertex AI worker pool takes one accelerator type, got both {gpu} and {tpu};"
            " drop one of them"
        )
    spec: GpuSpec | TpuSpec | None = gpu if gpu is not None else tpu

    if gpu is not None:
        gpu_type = catalog.gpus[gpu.gpu]
        if gpu_type.retired:
            hint = f"; use {gpu_type.replacement} instead" if gpu_type.replacement else ""
            raise SpecError(f"GPU type {gpu.gpu} is retired on Vertex AI{hint}")
    if tpu is not None and tpu.count not in catalog.tpus[tpu.tpu].counts:
        raise SpecError(
            f"{tpu.count} TPUs of type {tpu.tpu} aren't available on Vertex AI;"
            f" try one of: {_join(catalog.tpus[tpu.tpu].counts)}"
        )

    if machine.fixed_accelerator is not None:
        _check_fixed(machine, spec, catalog)
    elif gpu is not None:
        _check_gpu_on_machine(machine, gpu, catalog)
    elif tpu is not None:
        _check_tpu_on_machine(machine, tpu, catalog)
    elif machine.needs_accelerator:
        hosted = ", ".join(
            f"{c}x{t}" for t, counts in sorted(machine.tpu_counts.items()) for c in counts
        )
        raise SpecError(
            f"machine type {machine.name} only runs with a TPU spec ({hosted}); got none"
        )

    if gpu is not None:
        _check_region(gpu.gpu, "GPU", region, catalog)
    if tpu is not None:
        _check_region(tpu.tpu, "TPU", region, catalog)


def accelerator_config(gpu: GpuSpec | TpuSpec | None) -> dict:
    """Vertex ``MachineSpec`` accelerator fields as ``{"count": n, "type": enum name}``.

    Takes a TpuSpec too, since a worker pool carries TPUs in the same two fields.
    """
    if gpu is None:
        return {"count": 0, "type": _NO_ACCELERATOR}
    return {"count": gpu.count, "type": gpu.accelerator_type}
