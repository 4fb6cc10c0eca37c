"""`--flagfile FILE`, as Abseil gave it to every Caliban command, expanded before parsing.

A flagfile holds flags, one per line, with `#` or `//` comment lines; `--flagfile` may nest.
Abseil took each line as ONE argument, so Caliban's own documented `--gpu_spec 8xV100` lines
failed; we split a line shell-style unless it is a single `--flag=value`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from caliban_flows.spec.errors import SpecError

FLAG = "--flagfile"


def _line_args(line: str, where: str) -> list[str]:
    head = line.split(None, 1)[0]
    if head.startswith("--") and "=" in head and head == line:
        return [line]
    try:
        return shlex.split(line)
    except ValueError as e:
        raise SpecError(f"{where}: cannot split {line!r}: {e}") from None


def _read(path: str, chain: tuple[Path, ...]) -> list[str]:
    resolved = Path(path).expanduser().resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise SpecError(f"flagfile cycle: {cycle}")
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"flagfile {path!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read flagfile {path!r}: {e}") from None
    args: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "//")):
            continue
        args += _line_args(line, f"{path}:{number}")
    return _expand(args, (*chain, resolved))


def _expand(argv: list[str], chain: tuple[Path, ...]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # script arguments are never expanded
            return out + argv[i:]
        if arg == FLAG:
            if i + 1 >= len(argv):
                raise SpecError("--flagfile needs a file name")
            out += _read(argv[i + 1], chain)
            i += 2
            continue
        if arg.startswith(FLAG + "="):
            out += _read(arg[len(FLAG) + 1 :], chain)
        else:
            out.append(arg)
        i += 1
    return out


def expand_flagfiles(argv: list[str]) -> list[str]:
    """argv with every `--flagfile F` (before a bare `--`) replaced by F's flags, recursively."""
    if not any(a == FLAG or a.startswith(FLAG + "=") for a in argv):
        return argv
    return _expand(argv, ())
