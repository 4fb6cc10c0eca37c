"""Script arguments whose flag names a secret (`--api_key X`, `--hf-token=X`): their values are
kept out of what a group records, which holds a reference in their place; whatever starts a
job (a first run, a resubmit, Retry in the UI) puts the value back just before.

Pure: the caller decides how a reference is named (`name_for`) and where a value is kept and
found again (`lookup`): caliban keeps them in Prefect Secret blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from caliban_flows.spec.labels import names_a_secret

REFERENCE = "caliban-secret:"  # then the name the value is kept under
BLOCK_PREFIX = "caliban-arg-"


def block_namer(xgroup: str) -> Callable[[str], str]:
    """Names for a group's values, the same on every submission of the same args (so a rerun
    finds them): a hash salted with the group, as the job keys are."""

    def name_for(value: str) -> str:
        return BLOCK_PREFIX + hashlib.sha256(f"{xgroup}\0{value}".encode()).hexdigest()[:24]

    return name_for


def _is_flag(arg: str) -> bool:
    return arg.startswith("-") and len(arg) > 1


def is_reference(value: str) -> bool:
    return value.startswith(REFERENCE)


def hide(args: Sequence[str], name_for: Callable[[str], str]) -> tuple[list[str], dict[str, str]]:
    """The args with each secret value replaced by a reference, and {name: value} to keep.

    A value follows its flag (`--api_key X`) or an '=' (`--api_key=X`). A flag followed by
    another flag has no value; a value that is a reference already is left as it is.
    """
    out: list[str] = []
    kept: dict[str, str] = {}

    def reference(value: str) -> str:
        name = name_for(value)
        kept[name] = value
        return REFERENCE + name

    i = 0
    while i < len(args):
        arg = args[i]
        if _is_flag(arg):
            flag, eq, value = arg.partition("=")
            if eq and value and names_a_secret(flag) and not is_reference(value):
                out.append(f"{flag}={reference(value)}")
                i += 1
                continue
            nxt = args[i + 1] if i + 1 < len(args) else None
            if not eq and nxt is not None and not _is_flag(nxt) and names_a_secret(arg):
                out += [arg, nxt if is_reference(nxt) else reference(nxt)]
                i += 2
                continue
        out.append(arg)
        i += 1
    return out, kept


def reveal(args: Sequence[str], lookup: Callable[[str], str]) -> list[str]:
    """The args with every reference replaced by the value kept under its name."""
    out = []
    for arg in args:
        head, eq, value = arg.partition("=")
        if is_reference(arg):
            out.append(lookup(arg[len(REFERENCE) :]))
        elif eq and is_reference(value) and _is_flag(head):
            out.append(f"{head}={lookup(value[len(REFERENCE) :])}")
        else:
            out.append(arg)
    return out


def references(args: Sequence[str]) -> list[str]:
    """The names the args refer to, in order."""
    names = []
    for arg in args:
        value = arg.partition("=")[2] if _is_flag(arg) else arg
        if is_reference(value):
            names.append(value[len(REFERENCE) :])
    return names
