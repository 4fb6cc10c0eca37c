"""Content-addressed images on a Docker engine: build once per content, push once per tag.

The tag is a hash of the rendered Dockerfile and every file Docker would receive (after
.dockerignore), so the same content never rebuilds and never re-pushes. Credentials in the
project folder (spec.secret_files) are never sent: not in the image, not in the hash. The
Dockerfile caliban adds is sent with a .dockerignore naming it, so that the engine reads it
and then drops it from what COPY sees.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from caliban_flows.spec.secret_files import HEAD_BYTES, secret_kind

DOCKERFILE_NAME = ".caliban.Dockerfile"  # added to the build context; never in the user's tree
TAG_LENGTH = 16


class ImageError(RuntimeError):
    """A build or push failed; the message carries the failing step's output."""


def _ignore_patterns(root: Path) -> list[str]:
    path = root / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class Context:
    files: list[str]  # relative and sorted: what Docker receives, and what the tag hashes
    left_out: list[tuple[str, str]] = field(default_factory=list)  # credentials: (path, why)


def build_context(root: Path, credentials: Iterable[str | Path] = ()) -> Context:
    """What Docker would receive from `root` (after .dockerignore), credentials left out:
    the files `credentials` names, and any file that holds a key (spec.secret_files)."""
    from docker.utils.build import exclude_paths

    here = root.resolve()
    named = set()
    for path in credentials:
        try:
            named.add(Path(path).expanduser().resolve().relative_to(here).as_posix())
        except ValueError:  # outside the project folder: never sent anyway
            continue
    files, left_out = [], []
    found = exclude_paths(str(root), _ignore_patterns(root), dockerfile=DOCKERFILE_NAME)
    base, frozen = str(root), frozenset(named)
    for rel in sorted(found):
        kind = None
        if rel != DOCKERFILE_NAME:
            kind = _secret(os.path.join(base, rel), rel, frozen)
        if kind is None:
            files.append(rel)
        else:
            left_out.append((rel, kind))
    return Context(files, left_out)


def _secret(path: str, rel: str, named: frozenset[str]) -> str | None:
    """The credential kind of a regular file (its first bytes read), else None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # unreadable: Docker will say so itself
        return None
    try:
        head = os.read(fd, HEAD_BYTES)
    finally:
        os.close(fd)
    return secret_kind(rel, head, named)


def context_files(root: Path) -> list[str]:
    """Paths (relative, sorted) of what Docker would receive from `root`."""
    return build_context(root, default_credentials()).files


def default_credentials() -> list[str]:
    """The credentials file the environment names, if any."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    return [named] if named else []


def left_out_warning(left_out: list[tuple[str, str]]) -> str | None:
    """The one line that names the credentials kept out of an image."""
    if not left_out:
        return None
    names = ", ".join(f"{path} ({why})" for path, why in left_out)
    return f"warning: left out of the image, as credentials: {names}"


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def content_hash(root: Path, dockerfile: str, files: list[str]) -> str:
    digest = hashlib.sha256(b"dockerfile\0" + dockerfile.encode() + b"\0")
    for rel in files:
        path = root / rel
        info = path.lstat()
        digest.update(rel.encode() + b"\0" + oct(stat.S_IMODE(info.st_mode) & 0o111).encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(b"link\0" + os.readlink(path).encode())
        elif stat.S_ISREG(info.st_mode):
            digest.update(b"file\0" + _file_digest(path))
        else:
            digest.update(b"dir\0")
    return digest.hexdigest()


def repository_name(root: Path) -> str:
    """A Docker repository name from the project folder's name."""
    slug = re.sub(r"[^a-z0-9]+", "-", root.resolve().name.lower()).strip("-") or "project"
    return f"caliban/{slug}"


def image_tag(root: Path, dockerfile: str, files: list[str] | None = None) -> str:
    """The tag the image of this content gets: repository:hash."""
    files = context_files(root) if files is None else files
    return f"{repository_name(root)}:{content_hash(root, dockerfile, files)[:TAG_LENGTH]}"


@dataclass(frozen=True)
class BuiltImage:
    tag: str  # repository:content-hash
    image_id: str
    built: bool  # False when the image already existed
    left_out: list[tuple[str, str]] = field(default_factory=list)  # credentials not sent


def build_image(
    client,
    root: Path,
    dockerfile: str,
    *,
    no_cache: bool = False,
    on_log: Callable[[str], None] = lambda line: None,
    credentials: Iterable[str | Path] = (),
) -> BuiltImage:
    """Build `dockerfile` with `root` as context, unless an image for that content exists.
    Credentials (those named, the environment's, any key file) stay out (`left_out`)."""
    import docker.errors
    from docker.utils.build import create_archive

    context_ = build_context(root, [*credentials, *default_credentials()])
    files, left_out = context_.files, context_.left_out
    tag = image_tag(root, dockerfile, files)
    if not no_cache:
        try:
            return BuiltImage(tag, client.images.get(tag).id, built=False, left_out=left_out)
        except docker.errors.ImageNotFound:
            pass
    # The engine reads the Dockerfile, then drops what this .dockerignore names from what
    # COPY sees (the user's own .dockerignore was applied above, to choose `files`).
    ignore = f"{DOCKERFILE_NAME}\n.dockerignore\n"
    context = create_archive(
        str(root), files=[f for f in files if f not in (DOCKERFILE_NAME, ".dockerignore")],
        extra_files=[(DOCKERFILE_NAME, dockerfile), (".dockerignore", ignore)],
    )  # fmt: skip
    step_output: list[str] = []
    try:
        for chunk in client.api.build(
            fileobj=context,
            custom_context=True,
            dockerfile=DOCKERFILE_NAME,
            tag=tag,
            rm=True,
            forcerm=True,
            nocache=no_cache,
            decode=True,
        ):
            if "stream" in chunk:
                text = chunk["stream"]
                if text.startswith("Step "):
                    step_output = []
                step_output.append(text)
                for line in text.splitlines():
                    on_log(line)
            if "error" in chunk:
                detail = "".join(step_output[-20:]).strip()
                raise ImageError(f"docker build failed: {chunk['error'].strip()}\n{detail}")
    finally:
        context.close()
    return BuiltImage(tag, client.images.get(tag).id, built=True, left_out=left_out)


@dataclass(frozen=True)
class PushedImage:
    reference: str  # registry/repository:tag
    pushed: bool  # False when the registry already had it


def _engine_auth(auth: dict | None) -> dict | None:
    if auth is None:
        return None
    password = auth["password"]
    unwrap = getattr(password, "get_secret_value", None)
    return {"username": auth["username"], "password": unwrap() if unwrap else password}


def push_image(
    client,
    tag: str,
    registry: str,
    *,
    auth: dict | None = None,
    on_log: Callable[[str], None] = lambda line: None,
) -> PushedImage:
    """Push `tag` to `registry` under the same name, unless the registry already has it.

    `auth` ({"username", "password"}; the password may be a pydantic SecretStr) is unwrapped
    here and goes to the engine with each call and nowhere else.
    """
    import docker.errors

    auth = _engine_auth(auth)
    repository, _, version = tag.rpartition(":")
    reference = f"{registry.rstrip('/')}/{repository}:{version}"
    try:
        client.images.get_registry_data(reference, auth_config=auth)
        return PushedImage(reference, pushed=False)
    except (docker.errors.NotFound, docker.errors.APIError):
        pass
    client.images.get(tag).tag(reference)
    for chunk in client.api.push(reference, stream=True, decode=True, auth_config=auth):
        if "error" in chunk:
            raise ImageError(f"docker push of {reference} failed: {chunk['error'].strip()}")
        if "status" in chunk:
            on_log(f"{chunk.get('id', '')} {chunk['status']}".strip())
    return PushedImage(reference, pushed=True)
