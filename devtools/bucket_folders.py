"""Host folders the emulators hand to containers as buckets and volumes.

A container runs as its image's USER, often not root, while the emulators make these folders as
whoever runs them: so what they make (and a bucket's top folder) is open to every uid, as a
Cloud Storage FUSE mount takes writes from the container's user.
"""

from __future__ import annotations

from pathlib import Path


def open_folder(folder: Path) -> Path:
    """The folder, made if missing; every folder made here is writable by any uid."""
    missing: list[Path] = []
    here = folder
    while not here.exists():
        missing.append(here)
        here = here.parent
    folder.mkdir(parents=True, exist_ok=True)
    for made in missing:
        made.chmod(0o777)
    return folder


def open_bucket(buckets: Path, bucket: str, *parts: str) -> Path:
    """`buckets/bucket[/parts...]`, made if missing, the bucket's own folder writable by any uid
    even when it was there before (a test or `mkdir` made it as root)."""
    root = open_folder(buckets / bucket)
    if root.stat().st_mode & 0o777 != 0o777:
        root.chmod(0o777)
    return open_folder(root.joinpath(*parts)) if parts else root
