"""``softnce celltypegraph {make-synthetic,cv-summary,cv}``: CellTypeGraph data utilities."""

from __future__ import annotations

import argparse

COMMAND = "celltypegraph"
HELP = "CellTypeGraph utilities: write a synthetic data set, run and summarise the 5-fold protocol"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from softnce.data.celltypegraph import add_cli_arguments

    add_cli_arguments(parser)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.data.celltypegraph import run_cli

    return run_cli(args)
