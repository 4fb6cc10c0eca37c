"""Job labels: Caliban's sanitizing rules, plus Vertex AI's limit on their number."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from caliban_flows.spec.errors import SpecError

MAX_LENGTH = 63
MAX_LABELS = 64  # Vertex AI rejects a CustomJob with more labels than this.
_DISALLOWED = re.compile(r"[^a-z0-9_-]")


def _clean(text: str | None) -> str:
    if text is None:
        return ""
    # Periods become underscores first, so "0.01" stays readable as "0_01".
    return _DISALLOWED.sub("", text.replace(".", "_").lower()).lstrip("-")[:MAX_LENGTH]


def key_label(text: str | None) -> str:
    """A label key: lowercase [a-z0-9_-], starting with a letter, at most 63 characters."""
    cleaned = _clean(text)
    if cleaned and not cleaned[0].isalpha():
        cleaned = ("k" + cleaned)[:MAX_LENGTH]
    return cleaned


def value_label(text: str | None) -> str:
    """A label value: lowercase [a-z0-9_-], at most 63 characters (may be empty)."""
    return _clean(text)


def _is_flag(arg: str | None) -> bool:
    return arg is not None and arg.startswith("-")


# A flag whose name holds one of these words carries a secret: its value never becomes a label.
SECRET_WORDS = frozenset({"token", "key", "apikey", "password", "passwd", "secret", "credential",
                          "credentials"})  # fmt: skip
REDACTED = "redacted"


@functools.lru_cache(maxsize=4096)  # a sweep's 100,000 jobs repeat the same few flags
def names_a_secret(flag: str) -> bool:
    """`--api_key`, `--hf-token`, `--db_password` ...: words split on '-', '_' and '.'."""
    return not SECRET_WORDS.isdisjoint(re.split(r"[-_.]+", flag.lstrip("-").lower()))


def script_args_to_labels(args: Sequence[str]) -> dict[str, str]:
    """Labels from a job's argv: `--lr 0.01` gives lr=0_01, a bare `--flag` gives flag="".

    Like Caliban, every argument starting with '-' is a key and the argument after it is its
    value unless that one starts with '-' too (so `--sleep -1` gives sleep="" and k1="").
    Unlike Caliban, a flag that names a secret (`--api_key X`, `--token=X`) gives `redacted`.
    """
    labels: dict[str, str] = {}
    for i, arg in enumerate(args):
        if not _is_flag(arg):
            continue
        name, eq, _ = arg.partition("=")
        if eq and names_a_secret(name):  # `--api_key=VALUE`: Caliban would key it on both
            labels[key_label(name)] = REDACTED
            continue
        key = key_label(arg)
        if key:
            nxt = args[i + 1] if i + 1 < len(args) else None
            value = "" if nxt is None or _is_flag(nxt) else value_label(nxt)
            labels[key] = REDACTED if value and names_a_secret(arg) else value
    return labels


def parse_label(text: str) -> tuple[str, str]:
    """`--label KEY=VALUE` (Caliban's docs also show KEY:VALUE, accepted when there is no '=')."""
    sep = "=" if "=" in text else ":"
    key, found, value = text.partition(sep)
    key = key.strip()
    if not found or not key:
        raise SpecError(f"label {text!r} is not in KEY=VALUE form")
    if not key_label(key):
        raise SpecError(
            f"label key {key!r} has no usable characters: keys use lowercase letters, digits, "
            "'_' and '-'"
        )
    return key, value


def sanitize_labels(pairs: Mapping[str, str] | Sequence[tuple[str, str]]) -> dict[str, str]:
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    return {key_label(k): value_label(v) for k, v in items if key_label(k)}


def job_labels(
    *,
    job_name: str,
    image: str,
    gpu_enabled: bool,
    tpu_enabled: bool,
    user_labels: Sequence[tuple[str, str]] = (),
    args: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """All labels of one job, in Caliban's order; argv labels win over --label ones.

    `extra` holds our own bookkeeping labels (xgroup, job key ...), which win over both.
    """
    labels = sanitize_labels(
        [
            ("gpu_enabled", str(gpu_enabled).lower()),
            ("tpu_enabled", str(tpu_enabled).lower()),
            ("job_name", job_name),
            ("docker_image", image),
            *user_labels,
        ]
    )
    labels.update(script_args_to_labels(args))
    labels.update(sanitize_labels(extra or {}))
    if len(labels) > MAX_LABELS:
        raise SpecError(
            f"a job would carry {len(labels)} labels but Vertex AI allows at most {MAX_LABELS}: "
            "pass fewer --label options or script flags"
        )
    return labels
