"""Abseil's general flags, which every Caliban command took: `-v/--verbosity N` and
`--flagfile FILE`. They are added to every command of the tree, so each accepts them and lists
them in its --help. Flagfiles are expanded before parsing (cli.flagfile): the option here only
documents it.
"""

from __future__ import annotations

import os
from typing import Any

from typer.core import TyperOption

# Abseil's scale: 1 and up is debug, 0 info, -1 warning, -2 error, -3 fatal.
_LEVELS = {0: "INFO", -1: "WARNING", -2: "ERROR"}
VERBOSITY_ENV = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def level(verbosity: int) -> str:
    if verbosity >= 1:
        return "DEBUG"
    return _LEVELS.get(verbosity, "CRITICAL")


def _set_verbosity(ctx: Any, param: Any, value: int | None) -> None:
    """Before Prefect is imported: its log lines on the terminal follow -v (caliban keeps them
    off by default and prints each job's outcome itself)."""
    if value is None:
        return
    os.environ[VERBOSITY_ENV] = level(value)
    if value >= 1:
        os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"


def _options() -> list[TyperOption]:
    return [
        TyperOption(
            param_decls=["-v", "--verbosity"],
            type=int,
            metavar="N",
            expose_value=False,
            is_eager=True,
            callback=_set_verbosity,
            help="Show Prefect's log lines of the flow runs on the terminal: 0 info, 1 debug, "
            "-1 warnings, -2 errors (default: none; caliban prints each job's outcome).",
        ),
        TyperOption(
            param_decls=["--flagfile"],
            metavar="FILE",
            multiple=True,
            expose_value=False,
            help="Read more flags from FILE, one per line (# and // comment lines); "
            "repeatable, and may nest.",
        ),
    ]


def add_general_flags(command: Any) -> Any:
    """`command` and every subcommand, with the general flags added once."""
    names = {name for p in command.params for name in p.opts}
    command.params.extend(o for o in _options() if not names & set(o.opts))
    for sub in getattr(command, "commands", {}).values():
        add_general_flags(sub)
    return command
