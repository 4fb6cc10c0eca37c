"""`.calibanconfig.json`: per-project image settings, validated with pydantic.

The file is JSON with `#`/`//` comments and trailing commas. Every error becomes one SpecError
line that names the key path, e.g. `.calibanconfig.json: 'apt_packages.gpu' must be a list of
package names, not 5`.

Only `apt_packages` and `base_image` change what we build. Caliban's other keys are accepted so
existing files keep working, and exposed, but have no effect here; `ignored_keys()` lists the
ones a file sets so the CLI can say so. In particular `build_time_credentials: true` never puts
credentials into an image.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationError,
)

from caliban_flows.spec import jsonc
from caliban_flows.spec.dockerfile import APT_PACKAGE_RE
from caliban_flows.spec.errors import SpecError

CALIBANCONFIG = ".calibanconfig.json"

# ---------------------------------------------------------------------------------------------
# DLVM aliases. Caliban expanded `dlvm:{lib}-{mode}[-{ver}]` to
# gcr.io/deeplearning-platform-release/{lib}-{mode}[.{ver with '-'}]. Those images now live in
# Artifact Registry, and current ones are named by CUDA version (pytorch-cu124...) and Python.

DLC_REPOSITORY = "us-docker.pkg.dev/deeplearning-platform-release/gcr.io"

# Checked 2026-04 against "Choose a container image" in the Deep Learning Containers docs
# (https://cloud.google.com/deep-learning-containers/docs/choosing-container, updated
# 2026-04-10). base-cpu.py310 is not in that table but is published in the same repository.
# Unversioned aliases meant "latest", so they point at the newest listed version.
_CURRENT_DLC: dict[str, str] = {
    "base-cpu": "base-cpu.py310",
    "base-gpu": "base-cu124.py310",
    "pytorch-gpu": "pytorch-cu124.2-4.py310",
    "pytorch-gpu-2.4": "pytorch-cu124.2-4.py310",
    "pytorch-gpu-2.3": "pytorch-cu121.2-3.py310",
    "pytorch-gpu-2.2": "pytorch-cu121.2-2.py310",
    "pytorch-gpu-2.1": "pytorch-cu121.2-1.py310",
    "pytorch-gpu-2.0": "pytorch-cu118.2-0.py310",
    "pytorch-gpu-1.13": "pytorch-cu118.1-13.py310",
    "pytorch-gpu-1.12": "pytorch-cu113.1-12.py310",
    "tf2-cpu": "tf2-cpu.2-17.py310",
    "tf2-cpu-2.17": "tf2-cpu.2-17.py310",
    "tf2-cpu-2.16": "tf2-cpu.2-16.py310",
    "tf2-cpu-2.15": "tf2-cpu.2-15.py310",
    "tf2-cpu-2.14": "tf2-cpu.2-14.py310",
    "tf2-cpu-2.13": "tf2-cpu.2-13.py310",
    "tf2-cpu-2.12": "tf2-cpu.2-12.py310",
    "tf2-cpu-2.11": "tf2-cpu.2-11.py310",
    "tf2-cpu-2.10": "tf2-cpu.2-10.py310",
    "tf2-gpu": "tf2-cu123.2-17.py310",
    "tf2-gpu-2.17": "tf2-cu123.2-17.py310",
    "tf2-gpu-2.16": "tf2-cu123.2-16.py310",
    "tf2-gpu-2.15": "tf2-cu121.2-15.py310",
    "tf2-gpu-2.14": "tf2-cu118.2-14.py310",
    "tf2-gpu-2.13": "tf2-cu118.2-13.py310",
    "tf2-gpu-2.12": "tf2-cu118.2-12.py310",
    "tf2-gpu-2.11": "tf-cu113.2-11.py310",  # sic: the docs list these two under "tf-"
    "tf2-gpu-2.10": "tf-cu113.2-10.py310",
}

# Caliban 0.4.2's own aliases. Google never renamed these images, it moved gcr.io into
# Artifact Registry, so they keep their old names there; all are past end of availability and
# may be gone. No PyTorch CPU image exists today, so dlvm:pytorch-cpu keeps its old name too.
_LEGACY_DLC_VERSIONS: dict[str, tuple[str, ...]] = {
    "pytorch": ("1.0", "1.1", "1.2", "1.3", "1.4"),
    "tf": ("1.0", "1.13", "1.14", "1.15"),
    "tf2": ("2.0", "2.1", "2.2"),
}


def _dlvm_table() -> dict[str, str]:
    names: dict[str, str] = {}
    for lib, versions in _LEGACY_DLC_VERSIONS.items():
        for mode in ("cpu", "gpu"):
            names[f"{lib}-{mode}"] = f"{lib}-{mode}"
            for ver in versions:
                names[f"{lib}-{mode}-{ver}"] = f"{lib}-{mode}.{ver.replace('.', '-')}"
    names.update(_CURRENT_DLC)
    return {f"dlvm:{k}": f"{DLC_REPOSITORY}/{v}" for k, v in sorted(names.items())}


DLVM_ALIASES: Mapping[str, str] = _dlvm_table()


def expand_dlvm(image: str) -> str:
    """The image a `dlvm:` alias stands for; any other image is returned as is."""
    if not image.startswith("dlvm:"):
        return image
    try:
        return DLVM_ALIASES[image]
    except KeyError:
        raise ValueError(_unknown_alias(image)) from None


def _unknown_alias(image: str) -> str:
    close = difflib.get_close_matches(image, DLVM_ALIASES, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    family = image.rsplit("-", 1)[0] if image.count("-") >= 2 else image
    same = [a for a in DLVM_ALIASES if a == family or a.startswith(family + "-")]
    listed = same or [a for a in DLVM_ALIASES if a.count("-") == 1]
    return f"names unknown DLVM alias '{image}'{hint}; known: {', '.join(listed)}"


# ---------------------------------------------------------------------------------------------
# Schema.

_IMAGE_RE = re.compile(r"(?:[A-Za-z0-9._:/@-]|\{\})+")


def _check_apt_name(name: str) -> str:
    if not APT_PACKAGE_RE.fullmatch(name):
        raise ValueError(
            f"must be a Debian package name like 'libsm6' or 'curl=7.88.1-10', not {_show(name)}"
        )
    return name


def _check_image(image: str) -> str:
    if not _IMAGE_RE.fullmatch(image) or image.startswith(("-", ":", "/")):
        raise ValueError(
            "must be a Docker image like 'python:3.11-slim', 'my-image-{}:latest' or "
            f"'dlvm:tf2-gpu', not {_show(image)}"
        )
    if "{}" not in image:  # a format string is checked once the mode fills it in
        expand_dlvm(image)
    return image


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _shape(value: Any) -> str | None:
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict | BaseModel):  # models too, for serialization
        return "dict"
    if isinstance(value, str):
        return "str"
    return None


AptName = Annotated[str, AfterValidator(_check_apt_name)]
Image = Annotated[str, AfterValidator(_check_image)]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AptPackagesByMode(_Strict):
    cpu: list[AptName] = Field(default_factory=list)
    gpu: list[AptName] = Field(default_factory=list)


class BaseImageByMode(_Strict):
    cpu: Image | None = None
    gpu: Image | None = None


class GCloudConfig(_Strict):
    project_id: NonEmpty | None = None
    cloud_key: NonEmpty | None = None


class MLflowConfig(_Strict):
    project: str
    region: str
    db: str
    user: str
    password: str
    artifact_root: str
    debug: bool = False


class UVMLflowConfig(_Strict):
    pubsub_project: str | None = None
    pubsub_topic: str = "mlflow"


class UVConfig(_Strict):
    mlflow: UVMLflowConfig | None = None


# Tagged unions: the JSON shape picks the member, so an error names one member's problem only.
AptPackages = Annotated[
    Annotated[list[AptName], Tag("list")] | Annotated[AptPackagesByMode, Tag("dict")],
    Discriminator(_shape),
]
BaseImage = Annotated[
    Annotated[Image, Tag("str")] | Annotated[BaseImageByMode, Tag("dict")],
    Discriminator(_shape),
]
_UNION_KEYS = ("apt_packages", "base_image")

# Keys that Caliban understood and we accept without acting on them, with what to do instead.
INERT_KEYS: Mapping[str, str] = {
    "build_time_credentials": "credentials are never built into an image; jobs get the key "
    "mounted read-only at run time",
    "default_mode": "GPU mode is the default; pass --nogpu for CPU mode",
    "gcloud": "pass --project_id and --cloud_key, or set $PROJECT_ID and "
    "$GOOGLE_APPLICATION_CREDENTIALS",
    "julia_version": "Julia is not installed; add it with base_image or apt_packages",
    "mlflow_config": "runs are tracked in Prefect, not MLflow",
    "uv": "Caliban's UV metrics publisher is not included",
}


class CalibanConfig(_Strict):
    """A parsed `.calibanconfig.json`; build one with `parse_calibanconfig`."""

    apt_packages: AptPackages = Field(default_factory=list)
    base_image: BaseImage | None = None
    # Accepted for compatibility, no effect: we never bake credentials into an image.
    build_time_credentials: bool = False
    default_mode: Annotated[Literal["cpu", "gpu"] | None, BeforeValidator(_lower)] = None
    gcloud: GCloudConfig = Field(default_factory=GCloudConfig)
    julia_version: Annotated[str | None, BeforeValidator(_strip)] = None
    mlflow_config: MLflowConfig | None = None
    uv: UVConfig = Field(default_factory=UVConfig)
    # Ours, not Caliban's: where `caliban build --push` (and cloud) push the image.
    registry: Annotated[NonEmpty | None, BeforeValidator(_strip)] = None
    registry_block: Annotated[NonEmpty | None, BeforeValidator(_strip)] = None

    _source: str = PrivateAttr(default=CALIBANCONFIG)

    def apt_packages_for(self, gpu: bool) -> list[str]:
        """Packages to apt-get install in this mode, sorted so reordering keeps Docker's cache."""
        packages = self.apt_packages
        if isinstance(packages, AptPackagesByMode):
            packages = packages.gpu if gpu else packages.cpu
        return sorted(set(packages))

    def base_image_for(self, gpu: bool) -> str | None:
        """The base image for this mode with `{}` and `dlvm:` resolved; None means our default."""
        mode = "gpu" if gpu else "cpu"
        image = self.base_image
        key = "base_image"
        if isinstance(image, BaseImageByMode):
            image = getattr(image, mode)
            key = f"base_image.{mode}"
        if image is None:
            return None
        try:
            return expand_dlvm(image.replace("{}", mode))
        except ValueError as e:
            raise SpecError(f"{self._source}: '{key}' {e}") from None

    def ignored_keys(self) -> tuple[str, ...]:
        """Keys the file sets that have no effect here, for a warning."""
        return tuple(k for k in INERT_KEYS if k in self.model_fields_set)

    def ignored_key_warnings(self) -> list[str]:
        """One line per key the file sets to no effect: the key, and what to do instead."""
        return [f"{self._source}: '{k}' has no effect in caliban-flows ({INERT_KEYS[k]})"
                for k in self.ignored_keys()]  # fmt: skip


def parse_calibanconfig(text: str | None, *, source: str = CALIBANCONFIG) -> CalibanConfig:
    """Parse and validate `.calibanconfig.json` text; None (no file) or blank means defaults."""
    if text is None or not text.strip():
        data: Any = {}
    else:
        data = jsonc.loads(text, source=source)
    if not isinstance(data, dict):
        raise SpecError(
            f"{source} must hold a JSON object of settings like "
            f'{{"apt_packages": ["curl"]}}, not {_kind(data)}'
        )
    try:
        config = CalibanConfig.model_validate(data)
    except ValidationError as e:
        raise SpecError(_describe(e, source)) from None
    config._source = source
    return config


# ---------------------------------------------------------------------------------------------
# ValidationError -> one line.

_PACKAGE = "a package name (a string)"
_LIST = "a list of package names"
_IMAGE = "an image name (a string)"
_EXPECTED = {
    "apt_packages": f"{_LIST} or a dict with optional 'cpu' and 'gpu' lists",
    "apt_packages[]": _PACKAGE,
    "apt_packages.cpu": _LIST,
    "apt_packages.gpu": _LIST,
    "apt_packages.cpu[]": _PACKAGE,
    "apt_packages.gpu[]": _PACKAGE,
    "base_image": (
        "an image name (a string; '{}' becomes cpu or gpu) or a dict with optional 'cpu' "
        "and 'gpu' images"
    ),
    "base_image.cpu": _IMAGE,
    "base_image.gpu": _IMAGE,
    "build_time_credentials": "true or false",
    "default_mode": "'cpu' or 'gpu'",
    "gcloud": "a dict with optional 'project_id' and 'cloud_key' strings",
    "gcloud.project_id": "a non-empty string",
    "gcloud.cloud_key": "a non-empty string",
    "julia_version": "a string",
    "mlflow_config": (
        "a dict with string keys project, region, db, user, password, artifact_root "
        "and an optional boolean debug"
    ),
    "mlflow_config.debug": "true or false",
    "uv": "a dict with an optional 'mlflow' dict",
    "registry": "a registry like '127.0.0.1:5000' or 'us-docker.pkg.dev/PROJECT/REPO'",
    "registry_block": "the name of a Prefect 'Docker Registry Credentials' block",
    "uv.mlflow": "a dict with optional 'pubsub_project' and 'pubsub_topic' strings",
}
_MODELS: dict[str, type[BaseModel]] = {
    "": CalibanConfig,
    "apt_packages": AptPackagesByMode,
    "base_image": BaseImageByMode,
    "gcloud": GCloudConfig,
    "mlflow_config": MLflowConfig,
    "uv": UVConfig,
    "uv.mlflow": UVMLflowConfig,
}


def _describe(exc: ValidationError, source: str) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = list(first["loc"])
    if len(loc) > 1 and loc[0] in _UNION_KEYS:
        del loc[1]  # the union tag ("list", "dict", "str") is not part of the user's path
    message = f"{source}: {_one_error(first, loc)}"
    if len(errors) > 1:
        more = len(errors) - 1
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return message


def _one_error(err: Any, loc: list[str | int]) -> str:
    path = _path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _path(loc[:-1])
        valid = list(_MODELS[parent].model_fields) if parent in _MODELS else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean '{_path([*loc[:-1], close[0]])}'?)" if close else ""
        where = f" in '{parent}'" if parent else ""
        return f"unknown key '{path}'{hint}; valid keys{where}: {', '.join(valid)}"
    if kind == "missing":
        return f"'{_path(loc[:-1])}' is missing required key '{loc[-1]}'"
    if kind == "value_error":
        return f"'{path}' {err['ctx']['error']}"
    pattern = re.sub(r"\[\d+\]", "[]", path)
    expected = _EXPECTED.get(pattern)
    if expected is None:
        expected = "a string" if pattern.startswith(("mlflow_config.", "uv.mlflow.")) else None
    if expected is None:  # a shape we did not anticipate: pydantic's words, still one line
        return f"'{path}': {' '.join(str(err['msg']).split())}, not {_show(err['input'])}"
    return f"'{path}' must be {expected}, not {_show(err['input'])}"


def _path(loc: list[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return _show(value)
