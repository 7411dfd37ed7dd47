"""``softnce train``: one run."""

from __future__ import annotations

import argparse
import sys

from softnce.cli.common import add_train_arguments, config_from_args

COMMAND = "train"
HELP = "train one run"
DESCRIPTION = ("Train one run. Every config key can be set in --config FILE.yaml or with "
               "--set KEY=VALUE; explicit flags win.")
EPILOG = ("example: softnce train --dataset digits --loss soft-infonce --epochs 30 --seed 0 "
          "--output-dir runs/x")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.data import DataError
    from softnce.harness.config import ConfigError
    from softnce.harness.trainer import NonFiniteLossError, train

    try:
        cfg = config_from_args(args)
    except (ConfigError, DataError) as e:
        parser.error(str(e))
    try:
        summary = train(cfg)
    except (ConfigError, DataError) as e:
        parser.error(str(e))
    except NonFiniteLossError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    if not cfg.quiet and summary.get("final"):
        from softnce.experiments.report import print_run_summary

        print_run_summary(summary)
    return 0
