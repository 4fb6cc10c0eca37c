"""`caliban`: the Typer app. Only typer and our pure spec/ load at start-up."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from caliban_flows import __version__
from caliban_flows.cli import (
    cloud,
    cluster,
    deploy,
    history,
    import_history,
    local,
    results,
    serve,
    server_cmd,
)
from caliban_flows.cli.flagfile import expand_flagfiles
from caliban_flows.cli.general_flags import add_general_flags
from caliban_flows.spec.errors import CalibanError, SpecError

# Abseil gave Caliban's commands --helpfull; we keep it as another name for --help.
CONTEXT = {"help_option_names": ["-h", "--help", "--helpfull"]}

app = typer.Typer(
    name="caliban",
    help="Run a folder's code in one reproducible Docker image: in a shell, a notebook, "
    "local Docker, Vertex AI or Kubernetes, with experiment sweeps tracked in Prefect.",
    context_settings=CONTEXT,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        print(f"caliban {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    pass


for module in (local, cloud, cluster, history, results, import_history, serve, deploy,
               server_cmd):  # fmt: skip
    module.register(app)


def _command_path(command, argv: list[str]) -> str:
    """'caliban cluster job submit' for argv starting with those words."""
    words = ["caliban"]
    for arg in argv:
        command = getattr(command, "commands", {}).get(arg)
        if command is None:
            break
        words.append(arg)
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    """Every user error ends here as one line on stderr and exit code 2; never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = add_general_flags(typer.main.get_command(app))
    try:
        result = command.main(
            args=expand_flagfiles(argv), prog_name="caliban", standalone_mode=False
        )
    except (SpecError, CalibanError) as e:  # bad input exits 2; anything else we report, 1
        sys.stderr.write(f"{_command_path(command, argv)}: error: {e}\n")
        return 2 if isinstance(e, SpecError) else 1
    except typer.Abort:
        sys.stderr.write("caliban: aborted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write("caliban: interrupted\n")
        return 130
    except typer.TyperException as e:
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if type(e).__name__ == "NoArgsIsHelpError":  # `caliban cluster` alone: show its help
            sys.stderr.write(message + "\n")
            return 2
        where = _command_path(command, argv)
        sys.stderr.write(f"{where}: error: {' '.join(message.split())}\n")
        return getattr(e, "exit_code", 2) or 2
    except Exception as e:  # a bug of ours: still one line, the traceback on request
        if os.environ.get("CALIBAN_DEBUG"):
            raise
        where = _command_path(command, argv)
        sys.stderr.write(
            f"{where}: internal error: {type(e).__name__}: {e} "
            "(set CALIBAN_DEBUG=1 for the traceback, and please report it)\n"
        )
        return 1
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
