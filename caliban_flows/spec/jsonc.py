"""JSON with `#` / `//` line comments and trailing commas, as Caliban's files allow.

Caliban read these files with commentjson. We accept the same documents (comments to the end of
the line outside strings, one trailing comma before `]` or `}`) but parse with the stdlib's C
decoder after a single regex pass: commentjson's lark grammar is slow and unmaintained.
"""

from __future__ import annotations

import json
import re
from typing import Any

from caliban_flows.spec.errors import SpecError

# One token at a time: a string (kept), a comment, a form feed (whitespace to commentjson,
# not to json), or a comma followed only by blanks/whole comments and a closing bracket.
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\\n]|\\.)*")
    | (?P<comment>(?:\#|//)[^\n]*)
    | (?P<formfeed>\f)
    | (?P<trailing>,(?=(?:\s|(?:\#|//)[^\n]*\n)*[\]}]))
    """,
    re.VERBOSE,
)


def _replace(match: re.Match[str]) -> str:
    if match.lastgroup == "string":
        return match.group()
    # Blank out rather than delete, so json's error positions match the user's file.
    return " " * len(match.group())


def strip_comments(text: str) -> str:
    """Return plain JSON text: comments and trailing commas blanked, strings untouched."""
    if "#" not in text and "/" not in text and "\f" not in text and "," not in text:
        return text
    return _TOKEN.sub(_replace, text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str, *, source: str = "JSON") -> Any:
    """Parse commented JSON; a bad document raises SpecError naming the line and column."""
    try:
        return json.loads(strip_comments(text), parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        message = e.msg.removesuffix(" at")  # some of json's messages already end in "at"
        raise SpecError(
            f"{source} is not valid JSON: {message} at line {e.lineno} column {e.colno}"
        ) from None
    except (ValueError, RecursionError) as e:  # e.g. integers past Python's digit limit
        raise SpecError(f"{source} is not valid JSON: {e}") from None
