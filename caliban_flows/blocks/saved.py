"""Loading a saved block by name, with one line for "there is none"."""

from __future__ import annotations

from prefect.blocks.core import Block
from prefect.exceptions import ObjectNotFound


def load_saved(kind: type[Block], name: str):
    """A saved block of this kind; ValueError with a one-line message if there is none."""
    try:
        return kind.load(name)
    except ValueError as e:
        # A block that exists but fails validation is a ValueError too: only 404 is "none".
        if not isinstance(e.__cause__, ObjectNotFound):
            raise
        raise ValueError(
            f"no Prefect {kind.get_block_type_name()!r} block named {name!r}; "
            f"create one in the Prefect UI or with {kind.__name__}(...).save({name!r})"
        ) from None
