"""Who submitted a group: a `user:NAME` tag on each of its runs (the OS user of the process that
planned it). `caliban status`, `stop` and `resubmit` act on the caller's own runs unless told
otherwise; runs recorded before groups had users belong to no one and show for everyone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

USER_TAG = "user:"


def user_tag(name: str) -> str:
    return USER_TAG + name


def user_of(tags: Iterable[str] | None) -> str | None:
    return next((t[len(USER_TAG) :] for t in tags or () if t.startswith(USER_TAG)), None)


def belongs(tags: Iterable[str] | None, users: Collection[str] | None) -> bool:
    """A run with these tags is one of `users`' (None: everyone's), or of no one."""
    if users is None:
        return True
    user = user_of(tags)
    return user is None or user in users
