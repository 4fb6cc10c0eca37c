"""The packaged Vertex AI catalog: loading, provenance and internal consistency."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import pytest

from caliban_flows.spec.catalog import Catalog, FixedAccelerator, load_catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_load_catalog_is_cached(catalog: Catalog) -> None:
    assert load_catalog() is catalog


def test_provenance(catalog: Catalog) -> None:
    assert catalog.as_of == "2026-11-22"
    assert all(url.startswith("https://cloud.google.com/") for url in catalog.sources)
    for page in (
        "https://cloud.google.com/vertex-ai/docs/training/configure-compute",
        "https://cloud.google.com/vertex-ai/docs/general/locations#accelerators",
        "https://cloud.google.com/vertex-ai/docs/training/training-with-tpu-vm",
    ):
        assert page in catalog.sources
    assert catalog.notes, "unconfirmed facts must be recorded in the notes"


def test_json_is_package_data() -> None:
    raw = json.loads(
        resources.files("caliban_flows.spec").joinpath("data/vertex_catalog.json").read_text()
    )
    assert set(raw) >= {"as_of", "sources", "machine_types", "gpus", "tpus", "regions"}


def test_every_accelerator_type_is_a_real_aiplatform_enum_member(catalog: Catalog) -> None:
    from google.cloud import aiplatform_v1

    members = set(aiplatform_v1.AcceleratorType.__members__)
    used = [g.accelerator_type for g in catalog.gpus.values()]
    used += [t.accelerator_type for t in catalog.tpus.values()]
    assert len(used) == len(set(used)), "two catalog entries share one enum member"
    assert set(used) <= members, sorted(set(used) - members)


def test_expected_gpu_and_tpu_names(catalog: Catalog) -> None:
    assert set(catalog.gpus) == {
        "K80", "P4", "P100", "V100", "T4", "A100", "A100_80GB", "L4", "H100_80GB",
        "H100_MEGA_80GB", "H200_141GB", "B200", "GB200", "RTX_PRO_6000",
    }  # fmt: skip
    assert set(catalog.tpus) == {"V2", "V3", "V4_POD", "V5_LITEPOD"}
    assert catalog.gpus["V100"].accelerator_type == "NVIDIA_TESLA_V100"
    assert catalog.gpus["A100_80GB"].accelerator_type == "NVIDIA_A100_80GB"
    assert catalog.tpus["V5_LITEPOD"].accelerator_type == "TPU_V5_LITEPOD"


def test_regions_are_sorted_unique_and_cover_accelerator_regions(catalog: Catalog) -> None:
    assert list(catalog.regions) == sorted(set(catalog.regions))
    assert "global" not in catalog.regions
    assert {"us-central1", "europe-west4", "asia-east1"} <= set(catalog.regions)
    for table in (catalog.gpus, catalog.tpus):
        for name, acc in table.items():
            assert list(acc.regions) == sorted(set(acc.regions)), name
            assert set(acc.regions) <= set(catalog.regions), name


def test_machine_types_reference_known_accelerators(catalog: Catalog) -> None:
    for mt in catalog.machine_types.values():
        assert mt.name == mt.name.lower()
        assert set(mt.gpu_counts) <= set(catalog.gpus), mt.name
        assert set(mt.tpu_counts) <= set(catalog.tpus), mt.name
        for counts in (*mt.gpu_counts.values(), *mt.tpu_counts.values()):
            assert counts and list(counts) == sorted(set(counts)) and counts[0] >= 1
        if mt.fixed_accelerator is not None:
            assert not mt.gpu_counts and not mt.tpu_counts, mt.name
            assert mt.fixed_accelerator.name in {*catalog.gpus, *catalog.tpus}, mt.name
            assert mt.fixed_accelerator.count >= 1


def test_only_n1_machines_take_attachable_gpus(catalog: Catalog) -> None:
    families = {mt.family for mt in catalog.machine_types.values() if mt.gpu_counts}
    assert families == {"n1"}


def test_tpu_machine_types_host_their_tpu(catalog: Catalog) -> None:
    for tpu in catalog.tpus.values():
        assert tpu.machine_types
        hosted: set[int] = set()
        for name in tpu.machine_types:
            mt = catalog.machine_types[name]
            hosted.update(mt.tpu_counts.get(tpu.name, ()))
            if mt.fixed_accelerator is not None:
                assert mt.fixed_accelerator.name == tpu.name
                hosted.add(mt.fixed_accelerator.count)
        assert hosted == set(tpu.counts), tpu.name


def test_tpu_machine_layout(catalog: Catalog) -> None:
    assert catalog.tpus["V2"].machine_types == ("cloud-tpu",)
    assert catalog.tpus["V3"].counts == (8,)
    assert catalog.machine_types["cloud-tpu"].tpu_counts == {"V2": (8,), "V3": (8,)}
    for n in (1, 4, 8):
        mt = catalog.machine_types[f"ct5lp-hightpu-{n}t"]
        assert mt.fixed_accelerator == FixedAccelerator("V5_LITEPOD", n)
    # v4 lives only in us-central2, which Vertex AI training doesn't offer.
    assert catalog.tpus["V4_POD"].regions == ()


def test_every_live_gpu_has_machines_and_regions(catalog: Catalog) -> None:
    for gpu in catalog.gpus.values():
        if gpu.retired:
            assert catalog.gpu_counts(gpu.name) == ()
            assert gpu.replacement in catalog.gpus
            assert not catalog.gpus[gpu.replacement].retired
        else:
            assert catalog.gpu_counts(gpu.name), gpu.name
            assert gpu.regions, gpu.name


def test_k80_is_retired(catalog: Catalog) -> None:
    k80 = catalog.gpus["K80"]
    assert k80.retired and k80.replacement == "T4" and k80.regions == ()


def test_n1_gpu_table_matches_caliban_examples(catalog: Catalog) -> None:
    assert catalog.gpu_counts("V100") == (1, 2, 4, 8)
    assert catalog.machine_types_for_gpu("V100", 2) == [
        "n1-highcpu-16", "n1-highmem-16", "n1-highmem-2", "n1-highmem-4", "n1-highmem-8",
        "n1-standard-16", "n1-standard-4", "n1-standard-8",
    ]  # fmt: skip
    assert "n1-highcpu-96" in catalog.machine_types_for_gpu("V100", 8)
    assert "n1-standard-96" in catalog.machine_types_for_gpu("V100", 8)
    assert catalog.machine_types["n1-standard-96"].gpu_counts["V100"] == (8,)


def test_n1_vcpus_and_memory(catalog: Catalog) -> None:
    for mt in catalog.machine_types.values():
        if mt.family == "n1":
            assert mt.vcpus == int(mt.name.rsplit("-", 1)[1])
            assert mt.memory_gb is not None and mt.memory_gb > 0
    assert catalog.machine_types["n1-standard-8"].memory_gb == 30


def test_fixed_gpu_families(catalog: Catalog) -> None:
    mts = catalog.machine_types
    assert mts["a2-highgpu-2g"].fixed_accelerator == FixedAccelerator("A100", 2)
    assert mts["a2-megagpu-16g"].fixed_accelerator == FixedAccelerator("A100", 16)
    assert mts["a2-ultragpu-1g"].fixed_accelerator == FixedAccelerator("A100_80GB", 1)
    assert mts["g2-standard-24"].fixed_accelerator == FixedAccelerator("L4", 2)
    assert mts["a3-highgpu-8g"].fixed_accelerator == FixedAccelerator("H100_80GB", 8)
    assert mts["a3-megagpu-8g"].fixed_accelerator == FixedAccelerator("H100_MEGA_80GB", 8)
    assert mts["a3-ultragpu-8g"].fixed_accelerator == FixedAccelerator("H200_141GB", 8)
    assert mts["a4-highgpu-8g"].fixed_accelerator == FixedAccelerator("B200", 8)
    assert mts["a4x-highgpu-4g"].fixed_accelerator == FixedAccelerator("GB200", 4)
    assert mts["a4x-highgpu-4g"].arch == "arm64"
    assert all(mt.needs_accelerator for mt in mts.values() if mt.fixed_accelerator)
    assert not mts["n1-standard-8"].needs_accelerator
    assert mts["cloud-tpu"].needs_accelerator


def test_defaults_name_real_entries(catalog: Catalog) -> None:
    d = catalog.defaults
    assert d.gpu_spec == "1xP100"
    assert d.cpu_machine_type == "n1-highcpu-32"
    assert d.gpu_machine_type == "n1-standard-8"
    # n1-standard-8 takes every count of every N1 GPU, so it's always a valid default there.
    n1_gpus = {g for mt in catalog.machine_types.values() for g in mt.gpu_counts}
    default = catalog.machine_types[d.gpu_machine_type]
    for gpu in n1_gpus:
        assert default.gpu_counts[gpu] == catalog.gpu_counts(gpu)


def test_catalog_values_are_read_only(catalog: Catalog) -> None:
    with pytest.raises(TypeError):
        catalog.gpus["X"] = catalog.gpus["T4"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        catalog.as_of = "never"  # type: ignore[misc]


def test_import_is_light_and_lazy() -> None:
    # Compare against a baseline: namespace-package .pth files pre-register 'google'.
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import caliban_flows.spec.accelerators\n"
        "from caliban_flows.spec import catalog\n"
        "heavy = {'pydantic', 'google', 'prefect', 'docker', 'kubernetes'}\n"
        "loaded = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy)\n"
        "print(loaded, catalog.load_catalog.cache_info().currsize)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[] 0"
