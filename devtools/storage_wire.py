"""Cloud Storage JSON API wire details for devtools.storage_emulator: request routing, error
bodies, the `fields` selector, matchGlob patterns and multipart upload bodies."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any

MAX_RESULTS = 1000  # Cloud Storage's default and largest page of objects.list
API = re.compile(r"^/(upload/|download/)?storage/v1/b/([^/]+)(?:/o(?:/(.+))?)?$")


class Reply(Exception):
    """Answer with this status and JSON body (or bytes) instead of going on."""

    def __init__(self, code: int, body: Any, headers: dict[str, str] | None = None):
        super().__init__(code)
        self.code, self.body, self.headers = code, body, headers or {}


def error(code: int, reason: str, message: str) -> Reply:
    errors = [{"message": message, "domain": "global", "reason": reason}]
    return Reply(code, {"error": {"code": code, "message": message, "errors": errors}})


def parse_fields(text: str) -> dict[str, Any]:
    """`items(name,size),nextPageToken` -> {"items": {"name": None, "size": None}, ...}."""

    def parse(i: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        name = ""
        while i < len(text):
            ch = text[i]
            if ch == "(":
                out[name.strip()], i = parse(i + 1)
                name = ""
            elif ch == ")":
                break
            elif ch == ",":
                if name.strip():
                    out[name.strip()] = None
                name = ""
            else:
                name += ch
            i += 1
        if name.strip():
            out[name.strip()] = None
        return out, i

    return parse(0)[0]


def select(value: Any, spec: dict[str, Any] | None) -> Any:
    if spec is None:
        return value
    if isinstance(value, list):
        return [select(item, spec) for item in value]
    if isinstance(value, dict):
        return {k: select(value[k], sub) for k, sub in spec.items() if k in value}
    return value


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Cloud Storage's matchGlob: `**` crosses /, `*` and `?` do not, `[..]` and `{a,b}`."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end
        elif ch == "{":
            end = pattern.index("}", i)
            out += "(?:" + "|".join(re.escape(p) for p in pattern[i + 1 : end].split(",")) + ")"
            i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + r"\Z", re.S)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def request_kind(method: str, found: re.Match[str] | None, query: dict[str, str]) -> str:
    if found is None:
        return "unknown"
    area, has_o, name = found[1], "/o" in found[0], found[3]
    table = {
        ("GET", None, False, False): "buckets.get",
        ("GET", None, True, False): "objects.list",
        ("GET", None, True, True): "objects.get",
        ("DELETE", None, True, True): "objects.delete",
        ("GET", "download/", True, True): "objects.media",
        ("POST", "upload/", True, False): "objects.insert",
        ("PUT", "upload/", True, False): "objects.chunk",
    }
    kind = table.get((method, area, has_o, bool(name)), "unknown")
    if kind == "objects.get" and query.get("alt") == "media":
        return "objects.media"
    return kind


def multipart(content_type: str, body: bytes) -> tuple[dict, bytes]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise error(400, "invalid", "multipart upload without a boundary")
    parts = body.split(b"--" + match[1].encode())
    if len(parts) < 3:
        raise error(400, "invalid", "multipart upload needs metadata and media parts")

    def content(part: bytes) -> bytes:
        _head, _, rest = part.partition(b"\r\n\r\n")
        return rest[:-2] if rest.endswith(b"\r\n") else rest

    return json.loads(content(parts[1]) or b"{}"), content(parts[2])


def list_page(names: Iterable[str], query: dict[str, str]) -> tuple[list[str], list[str], str]:
    """One page of objects.list over `names` (sorted, all under the prefix): the object names,
    the prefixes `delimiter` rolls them up into, and the next page's token ("" if none)."""
    prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
    try:
        limit = min(int(query.get("maxResults") or MAX_RESULTS), MAX_RESULTS)
        after = base64.urlsafe_b64decode(query.get("pageToken", "")).decode()
    except ValueError:
        raise error(400, "invalid", "Invalid maxResults or pageToken.") from None
    glob = glob_regex(query["matchGlob"]) if query.get("matchGlob") else None
    items: list[str] = []
    prefixes: list[str] = []
    last = ""
    for name in names:
        if name.encode() <= after.encode() or (after.endswith(delimiter or "\0")
                                               and name.startswith(after)):  # fmt: skip
            continue  # on an earlier page, or rolled up into a prefix that was
        if glob is not None and not glob.match(name):
            continue
        rest = name[len(prefix) :]
        entry = name
        if delimiter and delimiter in rest:
            entry = prefix + rest[: rest.index(delimiter) + len(delimiter)]
            if prefixes and prefixes[-1] == entry:
                continue
        if len(items) + len(prefixes) == limit:
            return items, prefixes, base64.urlsafe_b64encode(last.encode()).decode()
        (prefixes if entry != name else items).append(entry)
        last = entry
    return items, prefixes, ""
