"""`--flagfile FILE`, as Abseil gave it to every Caliban command, expanded before parsing.

A flagfile holds flags, one per line, with `#` or `//` comment lines and blank lines skipped;
`--flagfile` may nest, and a relative name is read from the current directory, as in Abseil.

Abseil took each line as ONE argument: `--docker_run_args=--volume /a:/b --env X=1` is one
flag whose value has spaces, and so it stays here. Abseil failed on a line `--gpu_spec 8xV100`
(Caliban's own docs wrote them so); a line whose first word is not a `--flag=value` is split
shell-style instead, so quote a value with spaces there: `--docker_run_args "-v /a:/b"`.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from caliban_flows.spec.errors import SpecError

FLAG = "--flagfile"


def _line_args(line: str, where: str) -> list[str]:
    head = line.split(None, 1)[0]
    if head.startswith("-") and "=" in head:  # Abseil's `--flag=value`: the value is the rest
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
        if arg in (FLAG, FLAG[1:]):  # Abseil also took -flagfile
            if i + 1 >= len(argv):
                raise SpecError("--flagfile needs a file name")
            out += _read(argv[i + 1], chain)
            i += 2
            continue
        if arg.startswith((FLAG + "=", FLAG[1:] + "=")):
            out += _read(arg.split("=", 1)[1], chain)
        else:
            out.append(arg)
        i += 1
    return out


def expand_flagfiles(argv: list[str]) -> list[str]:
    """argv with every `--flagfile F` (before a bare `--`) replaced by F's flags, recursively."""
    if not any(a.lstrip("-").split("=")[0] == FLAG[2:] for a in argv):
        return argv
    return _expand(argv, ())
