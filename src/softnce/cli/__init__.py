"""Command line: ``softnce <command>``; one module per command in this package.

Bad input (unknown key or value, missing data set, a path that does not exist, an output
directory holding a different run) ends with ``softnce <command>: error: ...`` on stderr and exit
code 2, without a traceback. Every command is a module ``softnce/cli/<name>.py``
defining ``COMMAND``, ``HELP``, ``add_arguments(parser)`` and ``run(args, parser) -> int``
(optional ``DESCRIPTION``, ``EPILOG``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "add_train_arguments", "config_from_args"]

#: Built-in commands, in the order ``softnce --help`` lists them.
COMMANDS = ("train", "evaluate", "calibrate", "predict", "compare", "study", "toy",
            "celltypegraph")

from softnce.cli.common import add_train_arguments, config_from_args  # noqa: E402,F401


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _command_modules() -> list[Any]:
    mods = []
    for name in COMMANDS:
        if importlib.util.find_spec(f"softnce.cli.{name}") is not None:
            mods.append(importlib.import_module(f"softnce.cli.{name}"))
    return mods


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[Any, Any]]]:
    """The parser and ``{command: (subparser, run_fn)}``."""
    from softnce import __version__

    parser = argparse.ArgumentParser(
        prog="softnce", formatter_class=_Formatter,
        description="Soft-target InfoNCE: train and compare losses with calibration metrics.")
    parser.add_argument("--version", action="version", version=f"softnce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, tuple[Any, Any]] = {}
    for mod in _command_modules():
        p = sub.add_parser(mod.COMMAND, help=getattr(mod, "HELP", ""), formatter_class=_Formatter,
                           description=getattr(mod, "DESCRIPTION", None),
                           epilog=getattr(mod, "EPILOG", None))
        mod.add_arguments(p)
        commands[mod.COMMAND] = (p, mod.run)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``softnce`` command (returns the exit code)."""
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command is None:
        parser.print_help()
        return 2
    sub, fn = commands[args.command]
    from softnce._optional import MissingDependencyError

    try:
        return int(fn(args, sub) or 0)
    except MissingDependencyError as e:
        sub.error(str(e))
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
