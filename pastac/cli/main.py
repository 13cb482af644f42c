"""The ``pastac`` entry point: the parser of every command, and ``main``.

Each package adds its commands with its ``add_parser``; this module is the only one that imports them all, and
nothing imports it but the entry points (``pastac``, ``python -m pastac``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from pastac import __version__
from pastac.bench.command import add_parser as add_bench
from pastac.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, PATH_METAVARS, UsageError, path
from pastac.cli.language import add_parser as add_language
from pastac.data.command import add_parser as add_data
from pastac.evaluation.command import add_parser as add_eval
from pastac.runtime.command import add_parser as add_run
from pastac.serve.command import add_parser as add_serve
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
    add_serve(sub)
    add_bench(sub)
    add_data(sub)
    add_train(sub)
    add_eval(sub)
    _check_paths(parser)
    return parser


def _check_paths(parser: argparse.ArgumentParser) -> None:
    """Give every argument that names a file or folder (by its metavar: ``FILE``, ``DIR``...) the type ``path``,
    which refuses an empty name, in every command at once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _check_paths(sub)
        elif action.type is None and action.metavar in PATH_METAVARS:
            action.type = path


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """``build_parser()``, built once per process: parsing leaves a parser as it was, and building one imports
    and assembles every command (tens of milliseconds), which a caller of ``main`` in a loop pays once."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names (default: the process's arguments); its exit status.  Ctrl-C at any
    point is one line on stderr and exit status 130, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    for index, arg in enumerate(argv, 1):
        if "\0" in arg:  # a shell cannot pass one (arguments are C strings); a caller in Python can
            print(f"pastac: error: argument {index} ({arg!r}) holds a NUL character", file=sys.stderr)
            return EXIT_USAGE
    try:
        args = _parser().parse_args(argv)
        return int(args.run(args, sys.stdout))
    except UsageError as error:
        print(f"pastac: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # a command that keeps something on Ctrl-C says so itself, and returns 130
        print("pastac: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
