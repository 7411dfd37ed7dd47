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
    from softnce.harness.trainer import NonFiniteLossError, RunInterrupted, train

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
    except RunInterrupted as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # disk full, permissions, I/O error while writing the run
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{parser.prog}: error: {e.strerror or e}{where}; the last good checkpoint in "
              f"{cfg.resolved_output_dir} was kept (continue with --resume)", file=sys.stderr)
        return 1
    if not cfg.quiet and summary.get("final"):
        from softnce.experiments.report import print_run_summary

        print_run_summary(summary)
    return 0
