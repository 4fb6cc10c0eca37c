"""GPU/TPU spec parsing and Vertex AI client-side validation (Caliban's vectors and more)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caliban_flows.spec.accelerators import (
    GpuSpec,
    TpuSpec,
    accelerator_config,
    default_gpu_spec,
    default_machine_type,
    parse_gpu_spec,
    parse_machine_type,
    parse_region,
    parse_tpu_spec,
    valid_gpu_names,
    valid_tpu_names,
    validate_cloud_resources,
)
from caliban_flows.spec.catalog import load_catalog
from caliban_flows.spec.errors import SpecError


@contextlib.contextmanager
def spec_error(*fragments: str) -> Iterator[pytest.ExceptionInfo[SpecError]]:
    """Expect a one-line SpecError whose message contains every fragment."""
    with pytest.raises(SpecError) as info:
        yield info
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def validate(
    machine_type: str, gpu: str | None = None, tpu: str | None = None, region="us-central1"
):
    return validate_cloud_resources(
        machine_type=machine_type,
        gpu=parse_gpu_spec(gpu) if gpu else None,
        tpu=parse_tpu_spec(tpu) if tpu else None,
        region=region,
    )


# --- GPU specs ---------------------------------------------------------------------------


def test_parse_gpu_spec() -> None:
    spec = parse_gpu_spec("8xV100")
    assert spec == GpuSpec(count=8, gpu="V100")
    assert str(spec) == "8xV100"
    assert spec.accelerator_type == "NVIDIA_TESLA_V100"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2xv100", GpuSpec(2, "V100")),
        (" 1xt4 ", GpuSpec(1, "T4")),
        ("4XP4", GpuSpec(4, "P4")),
        ("1xNVIDIA_TESLA_T4", GpuSpec(1, "T4")),
        ("2xnvidia_tesla_a100", GpuSpec(2, "A100")),
        ("1xa100_80gb", GpuSpec(1, "A100_80GB")),
        ("1xA100-80GB", GpuSpec(1, "A100_80GB")),
        ("8xH100", GpuSpec(8, "H100_80GB")),
        ("8xh100_mega", GpuSpec(8, "H100_MEGA_80GB")),
        ("8xH200", GpuSpec(8, "H200_141GB")),
        ("1xrtx_pro_6000", GpuSpec(1, "RTX_PRO_6000")),
        ("2XRTX_PRO_6000", GpuSpec(2, "RTX_PRO_6000")),
        ("4xGB200", GpuSpec(4, "GB200")),
        ("16xA100", GpuSpec(16, "A100")),
    ],
)
def test_parse_gpu_spec_normalizes(text: str, expected: GpuSpec) -> None:
    assert parse_gpu_spec(text) == expected


def test_gpu_spec_needs_x_separator() -> None:
    with spec_error("'V100'", "NUMxTYPE", "2xV100"):
        parse_gpu_spec("V100")


@pytest.mark.parametrize("text", ["ax V100", "axV100", "xV100", "0xV100", "-1xV100", "1.5xV100"])
def test_gpu_spec_count_must_be_positive_integer(text: str) -> None:
    with spec_error(f"'{text}'", "positive integer"):
        parse_gpu_spec(text)


def test_unknown_gpu_type_suggests_and_lists() -> None:
    with spec_error("'Z100'", "did you mean", "valid GPU types: ", "V100", "T4") as info:
        parse_gpu_spec("1xZ100")
    suggestion = str(info.value).split("did you mean '")[1].split("'")[0]
    assert suggestion in {"A100", "P100", "V100"}


def test_unknown_gpu_type_without_close_match_still_lists_valid_types() -> None:
    with spec_error("'QUANTUM'", "valid GPU types: A100, A100_80GB") as info:
        parse_gpu_spec("1xQUANTUM")
    assert "did you mean" not in str(info.value)


def test_retired_gpu_is_rejected_with_replacement() -> None:
    with spec_error("'K80'", "retired", "use T4 instead"):
        parse_gpu_spec("1xK80")
    with spec_error("retired"):
        parse_gpu_spec("1xNVIDIA_TESLA_K80")
    assert "K80" not in valid_gpu_names()


def test_impossible_gpu_count() -> None:
    with spec_error(
        "3 GPUs of type V100 aren't available for any machine type; try one of: 1, 2, 4, 8"
    ):
        parse_gpu_spec("3xV100")


def test_impossible_count_can_be_skipped() -> None:
    assert parse_gpu_spec("3xV100", validate_count=False) == GpuSpec(3, "V100")


def test_gpu_spec_constructor_validates() -> None:
    with spec_error("positive integer"):
        GpuSpec(0, "V100")
    with spec_error("positive integer"):
        GpuSpec(True, "V100")  # type: ignore[arg-type]
    with spec_error("'v100'", "did you mean 'V100'?"):
        GpuSpec(1, "v100")


def test_valid_gpu_names() -> None:
    names = valid_gpu_names()
    assert names == sorted(names)
    assert {"P100", "V100", "T4", "A100", "L4", "H100_80GB", "RTX_PRO_6000"} <= set(names)


# --- TPU specs ---------------------------------------------------------------------------


def test_parse_tpu_spec() -> None:
    spec = parse_tpu_spec("8xV3")
    assert spec == TpuSpec(8, "V3")
    assert str(spec) == "8xV3"
    assert spec.accelerator_type == "TPU_V3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8xv2", TpuSpec(8, "V2")),
        ("8xTPU_V3", TpuSpec(8, "V3")),
        ("4xV4", TpuSpec(4, "V4_POD")),
        ("4xv4_pod", TpuSpec(4, "V4_POD")),
        ("4xV5E", TpuSpec(4, "V5_LITEPOD")),
        ("1xv5e", TpuSpec(1, "V5_LITEPOD")),
        ("8xV5LITEPOD", TpuSpec(8, "V5_LITEPOD")),
        ("8xv5_litepod", TpuSpec(8, "V5_LITEPOD")),
    ],
)
def test_parse_tpu_spec_aliases(text: str, expected: TpuSpec) -> None:
    assert parse_tpu_spec(text) == expected


def test_impossible_tpu_count() -> None:
    with spec_error("7 TPUs of type V3", "try one of: 8"):
        parse_tpu_spec("7xV3")
    assert parse_tpu_spec("7xV3", validate_count=False) == TpuSpec(7, "V3")


def test_bad_tpu_specs() -> None:
    with spec_error("'V3'", "NUMxTYPE"):
        parse_tpu_spec("V3")
    with spec_error("'V7'", "valid TPU types: V2, V3, V4_POD, V5_LITEPOD"):
        parse_tpu_spec("8xV7")
    with spec_error("'V33'", "did you mean 'V3'?"):
        parse_tpu_spec("8xV33")


def test_valid_tpu_names() -> None:
    assert valid_tpu_names() == ["V2", "V3", "V4_POD", "V5_LITEPOD"]


# --- machine types and regions -----------------------------------------------------------


def test_parse_machine_type() -> None:
    assert parse_machine_type("n1-standard-8") == "n1-standard-8"
    assert parse_machine_type(" N1-Highcpu-96 ") == "n1-highcpu-96"
    assert parse_machine_type("a2-ultragpu-8g") == "a2-ultragpu-8g"


def test_machine_type_did_you_mean() -> None:
    with spec_error("'n1-standrd-8'", "did you mean 'n1-standard-8'?", "n1-standard-{4,8,"):
        parse_machine_type("n1-standrd-8")


def test_unknown_machine_type_lists_families() -> None:
    with spec_error("'n1-standard-2'", "valid machine types: ", "cloud-tpu", "g2-standard-{"):
        parse_machine_type("n1-standard-2")


def test_parse_region() -> None:
    assert parse_region("us-central1") == "us-central1"
    assert parse_region("Europe-West4") == "europe-west4"
    with spec_error("'us-centrl1'", "did you mean 'us-central1'?", "valid regions: "):
        parse_region("us-centrl1")
    with spec_error("'global'"):
        parse_region("global")


# --- validate_cloud_resources ------------------------------------------------------------


def test_v100_on_n1_standard_96_is_invalid() -> None:
    expected = (
        "valid machine types for 2xV100: n1-highcpu-16, n1-highmem-16, n1-highmem-2,"
        " n1-highmem-4, n1-highmem-8, n1-standard-16, n1-standard-4, n1-standard-8"
    )
    with spec_error("2xV100", "n1-standard-96", expected):
        validate("n1-standard-96", gpu="2xV100")


def test_8xv100_on_96_vcpu_machines_is_valid() -> None:
    assert validate("n1-highcpu-96", gpu="8xV100") is None
    assert validate("n1-standard-96", gpu="8xV100") is None


@pytest.mark.parametrize(
    ("machine", "gpu"),
    [
        ("n1-standard-8", "1xP100"),
        ("n1-standard-4", "4xT4"),
        ("n1-highmem-2", "8xV100"),
        ("n1-highcpu-64", "4xP100"),
        ("n1-standard-32", "2xT4"),
        ("g2-standard-48", "4xL4"),
        ("a3-megagpu-8g", "8xH100_MEGA_80GB"),
        ("a2-megagpu-16g", "16xA100"),
    ],
)
def test_valid_gpu_combinations(machine: str, gpu: str) -> None:
    assert validate(machine, gpu=gpu) is None


@pytest.mark.parametrize(
    ("machine", "gpu", "fragment"),
    [
        ("n1-standard-32", "1xT4", "valid machine types for 1xT4: n1-highcpu-16,"),
        ("n1-standard-64", "4xP100", "valid machine types for 4xP100: n1-highcpu-16,"),
        ("n2-standard-8", "1xT4", "isn't available on machine type n2-standard-8"),
        ("n1-standard-8", "1xL4", "valid machine types for 1xL4: g2-standard-12,"),
        ("e2-standard-4", "1xA100", "valid machine types for 1xA100: a2-highgpu-1g"),
    ],
)
def test_invalid_gpu_machine_combinations(machine: str, gpu: str, fragment: str) -> None:
    with spec_error(fragment):
        validate(machine, gpu=gpu)


def test_suggested_machine_types_are_sorted() -> None:
    with spec_error() as info:
        validate("n1-standard-96", gpu="1xT4")
    listed = str(info.value).split(": ")[-1].split(", ")
    assert listed == sorted(listed)
    for machine in listed:
        assert validate(machine, gpu="1xT4") is None


def test_unchecked_impossible_count_is_caught() -> None:
    with spec_error("3 GPUs of type V100", "try one of: 1, 2, 4, 8"):
        validate_cloud_resources(
            machine_type="n1-standard-8",
            gpu=parse_gpu_spec("3xV100", validate_count=False),
            tpu=None,
            region="us-central1",
        )


def test_region_without_the_gpu() -> None:
    with spec_error(
        "GPU type V100",
        "region us-west2",
        "valid regions for V100: asia-east1, europe-west4, us-central1, us-east1, us-west1",
        "GPU types offered in us-west2: P4, T4",
    ):
        validate("n1-standard-8", gpu="1xV100", region="us-west2")


def test_region_without_the_tpu() -> None:
    with spec_error("TPU type V3", "region asia-east1", "valid regions for V3: "):
        validate("cloud-tpu", tpu="8xV3", region="asia-east1")
    assert validate("cloud-tpu", tpu="8xV2", region="asia-east1") is None


def test_unknown_region_or_machine_type_in_validation() -> None:
    with spec_error("did you mean 'us-central1'?"):
        validate("n1-standard-8", region="us-centrl1")
    with spec_error("did you mean 'n1-standard-8'?"):
        validate("n1-standrd-8")


def test_tpu_on_cloud_tpu() -> None:
    assert validate("cloud-tpu", tpu="8xV3") is None
    assert validate("cloud-tpu", tpu="8xV2", region="europe-west4") is None


def test_tpu_count_not_allowed() -> None:
    with spec_error("7 TPUs of type V3", "try one of: 8"):
        validate_cloud_resources(
            machine_type="cloud-tpu",
            gpu=None,
            tpu=parse_tpu_spec("7xV3", validate_count=False),
            region="us-central1",
        )


def test_tpu_on_wrong_machine_type() -> None:
    with spec_error("8xV3", "n1-standard-8", "valid machine types for 8xV3: cloud-tpu"):
        validate("n1-standard-8", tpu="8xV3")


def test_cloud_tpu_needs_a_tpu() -> None:
    with spec_error("cloud-tpu", "8xV2, 8xV3"):
        validate("cloud-tpu")


def test_v5e_machines() -> None:
    assert validate("ct5lp-hightpu-4t", tpu="4xV5E") is None
    with spec_error("ct5lp-hightpu-4t", "4xV5_LITEPOD", "8xV5_LITEPOD", "ct5lp-hightpu-8t"):
        validate("ct5lp-hightpu-4t", tpu="8xV5E")


def test_v4_has_no_vertex_training_region() -> None:
    with spec_error("TPU type V4_POD", "no region offers V4_POD"):
        validate("ct4p-hightpu-4t", tpu="4xV4")


def test_gpu_and_tpu_together_are_rejected() -> None:
    with spec_error("2xV100", "8xV3", "one accelerator type"):
        validate("n1-standard-8", gpu="2xV100", tpu="8xV3")


def test_fixed_family_machine() -> None:
    assert validate("a2-highgpu-2g", gpu="2xA100") is None
    with spec_error("a2-highgpu-2g", "exactly 2xA100", "1xA100", "a2-highgpu-1g"):
        validate("a2-highgpu-2g", gpu="1xA100")
    with spec_error("a2-highgpu-2g", "2xA100", "2xV100", "n1-highcpu-16"):
        validate("a2-highgpu-2g", gpu="2xV100")
    with spec_error("a2-highgpu-2g", "needs the GPU spec 2xA100"):
        validate("a2-highgpu-2g")
    with spec_error("g2-standard-24", "2xL4", "8xV3", "cloud-tpu"):
        validate("g2-standard-24", tpu="8xV3")


def test_retired_gpu_in_validation() -> None:
    with spec_error("K80", "retired", "T4"):
        validate_cloud_resources(
            machine_type="n1-standard-8", gpu=GpuSpec(1, "K80"), tpu=None, region="us-central1"
        )


def test_cpu_only_machines_validate_anywhere() -> None:
    catalog = load_catalog()
    for name, machine in catalog.machine_types.items():
        if not machine.needs_accelerator:
            assert validate(name, region="asia-south1") is None


# --- defaults ----------------------------------------------------------------------------


def test_default_gpu_spec() -> None:
    spec = default_gpu_spec()
    assert spec == GpuSpec(1, "P100")
    assert str(spec) == "1xP100"
    assert spec.accelerator_type == "NVIDIA_TESLA_P100"


@pytest.mark.parametrize(
    ("gpu", "tpu", "expected"),
    [
        (None, None, "n1-highcpu-32"),
        ("1xP100", None, "n1-standard-8"),
        ("8xV100", None, "n1-standard-8"),
        ("4xT4", None, "n1-standard-8"),
        ("1xA100", None, "a2-highgpu-1g"),
        ("2xA100", None, "a2-highgpu-2g"),
        ("16xA100", None, "a2-megagpu-16g"),
        ("4xA100_80GB", None, "a2-ultragpu-4g"),
        ("1xL4", None, "g2-standard-4"),
        ("2xL4", None, "g2-standard-24"),
        ("8xH100", None, "a3-highgpu-8g"),
        ("8xH200", None, "a3-ultragpu-8g"),
        ("8xB200", None, "a4-highgpu-8g"),
        ("4xGB200", None, "a4x-highgpu-4g"),
        ("1xRTX_PRO_6000", None, "g4-standard-48"),
        (None, "8xV2", "cloud-tpu"),
        (None, "8xV3", "cloud-tpu"),
        (None, "1xV5E", "ct5lp-hightpu-1t"),
        (None, "8xV5E", "ct5lp-hightpu-8t"),
        (None, "4xV4", "ct4p-hightpu-4t"),
    ],
)
def test_default_machine_type(gpu: str | None, tpu: str | None, expected: str) -> None:
    got = default_machine_type(
        gpu=parse_gpu_spec(gpu) if gpu else None, tpu=parse_tpu_spec(tpu) if tpu else None
    )
    assert got == expected


def test_default_machine_type_for_unmatched_count() -> None:
    with spec_error("3xA100", "1, 2, 4, 8, 16"):
        default_machine_type(gpu=parse_gpu_spec("3xA100", validate_count=False), tpu=None)


def test_every_default_validates_where_the_accelerator_is_offered() -> None:
    catalog = load_catalog()
    for name in valid_gpu_names():
        for count in catalog.gpu_counts(name):
            gpu = GpuSpec(count, name)
            machine = default_machine_type(gpu=gpu, tpu=None)
            for region in catalog.gpus[name].regions:
                validate_cloud_resources(machine_type=machine, gpu=gpu, tpu=None, region=region)
    for name, tpu_type in catalog.tpus.items():
        for count in tpu_type.counts:
            tpu = TpuSpec(count, name)
            machine = default_machine_type(gpu=None, tpu=tpu)
            for region in tpu_type.regions:
                validate_cloud_resources(machine_type=machine, gpu=None, tpu=tpu, region=region)


# --- accelerator_config ------------------------------------------------------------------


def test_accelerator_config() -> None:
    assert accelerator_config(None) == {"count": 0, "type": "ACCELERATOR_TYPE_UNSPECIFIED"}
    assert accelerator_config(parse_gpu_spec("2xV100")) == {
        "count": 2,
        "type": "NVIDIA_TESLA_V100",
    }
    assert accelerator_config(parse_gpu_spec("1xL4")) == {"count": 1, "type": "NVIDIA_L4"}
    assert accelerator_config(parse_tpu_spec("8xV3")) == {"count": 8, "type": "TPU_V3"}


# --- properties --------------------------------------------------------------------------

_live_gpu_specs = st.sampled_from(
    [(c, n) for n in valid_gpu_names() for c in load_catalog().gpu_counts(n)]
)


@given(_live_gpu_specs, st.booleans())
def test_gpu_spec_round_trips(spec: tuple[int, str], lower: bool) -> None:
    count, name = spec
    text = f"{count}x{name.lower() if lower else name}"
    parsed = parse_gpu_spec(text)
    assert parsed == GpuSpec(count, name)
    assert parse_gpu_spec(str(parsed)) == parsed


@given(st.text(max_size=30))
def test_gpu_parser_only_raises_one_line_spec_errors(text: str) -> None:
    try:
        spec = parse_gpu_spec(text)
    except SpecError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)
    else:
        assert spec.count in load_catalog().gpu_counts(spec.gpu)


@given(st.text(max_size=30))
def test_tpu_parser_only_raises_one_line_spec_errors(text: str) -> None:
    try:
        spec = parse_tpu_spec(text)
    except SpecError as exc:
        assert "\n" not in str(exc) and "\r" not in str(exc)
    else:
        assert spec.count in load_catalog().tpus[spec.tpu].counts


_machine_names = sorted(load_catalog().machine_types)
_region_names = sorted(load_catalog().regions)


@given(
    st.sampled_from(_machine_names),
    st.one_of(st.none(), _live_gpu_specs),
    st.sampled_from(_region_names),
)
def test_validation_is_total_and_one_line(
    machine: str, gpu: tuple[int, str] | None, region: str
) -> None:
    spec = GpuSpec(*gpu) if gpu else None
    catalog = load_catalog()
    try:
        validate_cloud_resources(machine_type=machine, gpu=spec, tpu=None, region=region)
    except SpecError as exc:
        assert "\n" not in str(exc), str(exc)
    else:
        if spec is not None:
            assert machine in catalog.machine_types_for_gpu(spec.gpu, spec.count)
            assert region in catalog.gpus[spec.gpu].regions
