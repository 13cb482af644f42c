"""The ``pastac`` entry point: the parser of every command, and ``main``.

Each package adds its commands with its ``add_parser``; this module is the only one that imports them all, and
nothing imports it but the entry points (``pastac``, ``python -m pastac``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pastac import __version__
from pastac.bench.command import add_parser as add_bench
from pastac.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, UsageError
from pastac.cli.language import add_parser as add_language
from pastac.data.command import add_parser as add_data
from pastac.evaluation.command import add_parser as add_eval
from pastac.runtime.command import add_parser as add_run
from pastac.train.command import add_parser as add_train


def build_parser() -> argparse.ArgumentParser:
    """The parser of the whole command line."""
    parser = argparse.ArgumentParser(
        prog="pastac", description="Pasta-Lang toolchain for learned asynchronous decoding."
    )
    parser.add_argument("--version", action="version", version=f"pastac {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_language(sub)
    add_run(sub)
    add_bench(sub)
    add_data(sub)
    add_train(sub)
    add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default: the process's arguments); its exit status.  Ctrl-C at any
    point is one line on stderr and exit status 130, never a traceback."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.run(args, sys.stdout))
    except UsageError as error:
        print(f"pastac: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a command that keeps something on Ctrl-C says so itself, and returns 130
        print("pastac: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
