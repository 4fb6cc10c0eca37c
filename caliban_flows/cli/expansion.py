"""`expansion`: print the experiments an experiment config expands to.

Output is byte-identical to Caliban 0.4.2's `expansion`. Kept on argparse and the stdlib so it
starts in a few milliseconds.
"""

from __future__ import annotations

import argparse
import sys

from caliban_flows import __version__
from caliban_flows.cli.flagfile import expand_flagfiles
from caliban_flows.plan.inputs import load_experiment_config
from caliban_flows.spec.errors import SpecError

PROG = "expansion"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as every caliban error
        sys.stderr.write(f"{PROG}: error: {message}\n")
        sys.exit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Expand an experiment config into the experiments it describes.",
        add_help=False,
    )
    p.add_argument("-h", "--help", "--helpfull", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--pprint", action="store_true", help="indent the JSON output")
    p.add_argument(
        "--print_flags",
        "--print-flags",
        action="store_true",
        help="print each experiment's command-line flags, one experiment per line",
    )
    p.add_argument(
        "--flagfile", metavar="FILE", help="read more flags from FILE (expanded before parsing)"
    )
    p.add_argument("experiment_config", help="a JSON experiment config, or 'stdin'")
    return p


def _render(config, *, pprint: bool, print_flags: bool) -> str:
    if print_flags:
        return "".join(line + "\n" for line in config.flag_lines())
    if pprint:
        import json

        return json.dumps(list(config.experiments()), indent=2) + "\n"
    return "[" + ", ".join(config.json_objects()) + "]\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = _parser().parse_args(expand_flagfiles(argv))
        config = load_experiment_config(args.experiment_config)
        text = _render(config, pprint=args.pprint, print_flags=args.print_flags)
    except SpecError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `expansion ... | head` is normal use
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
