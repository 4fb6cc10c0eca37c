"""TPUs on GKE as TPU VM slice nodes: `--tpu_spec NUMxTYPE` becomes `google.com/tpu` chips and
the node selectors GKE's TPU node pools carry (accelerator and topology).

A job's pod runs on one node, so the catalog holds the single-host slices: a pod asks for every
chip of its node. Multi-host slices need one pod per host (a JobSet), which caliban does not make.
The legacy form (`--tpu_legacy`) is Caliban's Cloud TPU Node request for v2/v3.
"""

from __future__ import annotations

from dataclasses import dataclass

from caliban_flows.spec.errors import SpecError

# Compiled by hand on this date from Google's GKE and Cloud TPU pages (below); Google adds TPU
# types and shapes often, so --force passes a count this table does not list.
GKE_TPU_CATALOG_AS_OF = "2026-12-07"
GKE_TPU_SOURCES = (
    "https://cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus",
    "https://cloud.google.com/kubernetes-engine/docs/how-to/tpus",
    "https://cloud.google.com/tpu/docs/v4",
    "https://cloud.google.com/tpu/docs/v5e",
    "https://cloud.google.com/tpu/docs/v5p",
    "https://cloud.google.com/tpu/docs/v6e",
)
TPU_RESOURCE = "google.com/tpu"
ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
# Caliban's Cloud TPU Node form: a resource per version, the TF version as an annotation.
LEGACY_RESOURCES = {"V2": "v2", "V3": "v3"}
LEGACY_VERSION_ANNOTATION = "tf-version.cloud-tpus.google.com"


@dataclass(frozen=True)
class Slice:
    """One single-host slice shape: `chips` on one node of `machine_type`."""

    chips: int
    topology: str
    machine_type: str


@dataclass(frozen=True)
class GkeTpuType:
    name: str  # what --tpu_spec says: V4, V5E, V5P, V6E
    accelerator: str  # the cloud.google.com/gke-tpu-accelerator value (and NAP resource type)
    slices: tuple[Slice, ...]
    aliases: tuple[str, ...] = ()
    quota_metrics: tuple[str, ...] = ()  # Compute Engine regional quota metrics, in chips

    def slice_for(self, chips: int) -> Slice | None:
        return next((s for s in self.slices if s.chips == chips), None)


GKE_TPUS: dict[str, GkeTpuType] = {
    t.name: t
    for t in (
        GkeTpuType(
            "V4",
            "tpu-v4-podslice",
            (Slice(4, "2x2x1", "ct4p-hightpu-4t"),),
            aliases=("V4_POD", "V4POD", "TPU_V4_POD"),
        ),
        GkeTpuType(
            "V5E",
            "tpu-v5-lite-podslice",
            (
                Slice(1, "1x1", "ct5lp-hightpu-1t"),
                Slice(4, "2x2", "ct5lp-hightpu-4t"),
                Slice(8, "2x4", "ct5lp-hightpu-8t"),
            ),
            aliases=("V5_LITEPOD", "V5LITEPOD", "V5_LITE", "TPU_V5_LITEPOD"),
            quota_metrics=("TPU_LITE_PODSLICE_V5", "PREEMPTIBLE_TPU_LITE_PODSLICE_V5"),
        ),
        GkeTpuType("V5P", "tpu-v5p-slice", (Slice(4, "2x2x1", "ct5p-hightpu-4t"),)),
        GkeTpuType(
            "V6E",
            "tpu-v6e-slice",
            (
                Slice(1, "1x1", "ct6e-standard-1t"),
                Slice(4, "2x2", "ct6e-standard-4t"),
                Slice(8, "2x4", "ct6e-standard-8t"),
            ),
            aliases=("TRILLIUM",),
        ),
    )
}


@dataclass(frozen=True)
class ClusterTpu:
    """What a cluster job asks for: `count` chips of `tpu` (a GKE_TPUS name, or V2/V3 legacy)."""

    count: int
    tpu: str
    legacy: bool = False
    topology: str | None = None  # None under --force for a count the catalog does not list

    def __str__(self) -> str:
        return f"{self.count}x{self.tpu}"


def _key(name: str) -> str:
    return name.strip().upper().replace("-", "_")


def _resolve(name: str) -> str | None:
    key = _key(name)
    for tpu in GKE_TPUS.values():
        if key in (tpu.name, *tpu.aliases) or key == _key(tpu.accelerator):
            return tpu.name
    return None


def spec_summary() -> str:
    """`4xV5E (2x2)`-style list of every single-host slice, for messages and --help."""
    return ", ".join(
        f"{s.chips}x{t.name} ({s.topology})" for t in GKE_TPUS.values() for s in t.slices
    )


def parse_cluster_tpu(text: str, *, legacy: bool = False, force: bool = False) -> ClusterTpu:
    """`--tpu_spec NUMxTYPE` for `caliban cluster job submit`; topology chosen from NUM."""
    from caliban_flows.spec.accelerators import _split_spec

    count, type_text = _split_spec(text, "TPU", "4xV5E or 8xV6E")
    if legacy:
        key = _key(type_text)
        if key not in LEGACY_RESOURCES and key not in ("TPU_V2", "TPU_V3"):
            raise SpecError(
                f"--tpu_spec {text.strip()}: --tpu_legacy (Cloud TPU Nodes) takes V2 or V3 only;"
                f" without it, clusters take {', '.join(GKE_TPUS)}"
            )
        return ClusterTpu(count, key.removeprefix("TPU_"), legacy=True)
    name = _resolve(type_text)
    if name is None:
        if _key(type_text).removeprefix("TPU_") in LEGACY_RESOURCES:
            raise SpecError(
                f"--tpu_spec {text.strip()}: GKE runs {type_text.upper()} only as deprecated Cloud"
                " TPU Nodes: add --tpu_legacy for such a cluster, or use V4, V5E, V5P or V6E"
            )
        raise SpecError(
            f"unknown TPU type {type_text.strip()!r} in {text.strip()!r}: GKE clusters take "
            f"{', '.join(GKE_TPUS)} (e.g. {spec_summary()})"
        )
    found = GKE_TPUS[name].slice_for(count)
    if found is None and not force:
        offered = ", ".join(f"{s.chips}x{name}" for s in GKE_TPUS[name].slices)
        raise SpecError(
            f"--tpu_spec {text.strip()}: a job's pod takes one single-host {name} slice: "
            f"{offered} (GKE TPU catalog of {GKE_TPU_CATALOG_AS_OF}; --force to send it anyway)"
        )
    return ClusterTpu(count, name, topology=found.topology if found else None)


def node_request(tpu: ClusterTpu) -> tuple[dict[str, str], dict[str, str]]:
    """(resource limits, node selector) of a pod on a TPU slice node."""
    kind = GKE_TPUS[tpu.tpu]
    selector = {ACCELERATOR_LABEL: kind.accelerator}
    if tpu.topology:
        selector[TOPOLOGY_LABEL] = tpu.topology
    return {TPU_RESOURCE: str(tpu.count)}, selector


def legacy_resource(tpu: str, *, preemptible: bool) -> str:
    return f"cloud-tpus.google.com/{'preemptible-' if preemptible else ''}{LEGACY_RESOURCES[tpu]}"


def autoprovisioning_limits(quotas: dict[str, float], given: dict[str, int]) -> list[dict]:
    """Node autoprovisioning maxima (in chips) per TPU accelerator: `given` (--tpu_limit) first,
    else the region's quota where Compute Engine reports one (v5e); maxima under 1 are left out."""
    limits = []
    for tpu in GKE_TPUS.values():
        chips = given.get(tpu.name)
        if chips is None:
            chips = int(max((quotas.get(m, 0) for m in tpu.quota_metrics), default=0))
        if chips >= 1:
            limits.append({"resource_type": tpu.accelerator, "maximum": chips})
    return limits


def parse_tpu_limits(items: list[str] | None) -> dict[str, int]:
    """`--tpu_limit V6E=32` (repeatable) as {V6E: 32}."""
    out: dict[str, int] = {}
    for item in items or []:
        name, _, number = item.partition("=")
        tpu = _resolve(name) if name.strip() else None
        if tpu is None or not number.strip().isdigit():
            raise SpecError(
                f"--tpu_limit {item!r}: give TYPE=CHIPS with TYPE one of {', '.join(GKE_TPUS)},"
                " e.g. V5E=32"
            )
        out[tpu] = int(number)
    return out
