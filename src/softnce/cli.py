"""Command line: ``softnce train`` (one run), ``softnce compare`` (the paper's four losses).

Bad input (unknown key or value, missing data set, a path that does not exist, an output
directory holding a different run) ends with ``softnce <command>: error: ...`` on stderr and exit
code 2, without a traceback. Further sub-commands plug in as modules ``softnce/cli_<name>.py``
defining ``COMMAND``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "add_train_arguments", "config_from_args"]

# Flags that map 1:1 onto TrainConfig fields (dest -> field).
TRAIN_FLAGS = ("dataset", "data_path", "loss", "model", "finetune", "head", "input_size",
               "epochs", "max_steps", "num_classes", "batch_size", "lr", "seed", "device",
               "temperature", "negatives", "noise", "output_dir", "resume", "quiet")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _registered(kind: str) -> list[str]:
    if kind == "dataset":
        from softnce.data import DATASETS

        return DATASETS.names()
    if kind == "loss":
        from softnce.engine import LOSSES

        return LOSSES.names()
    from softnce.models import MODELS

    return MODELS.names()


def add_train_arguments(p: argparse.ArgumentParser, compare: bool = False) -> None:
    """The run flags shared by ``train`` (all) and ``compare`` (those that make sense there)."""
    from softnce.config import HEAD_CHOICES, NEGATIVES_CHOICES, NOISE_CHOICES

    S = argparse.SUPPRESS
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="YAML config (or a preset name under configs/); flags override it")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key (VALUE parsed as YAML; dotted keys reach into "
                        "dataset_options / model_options / augment); repeatable")
    p.add_argument("--dataset", default=S,
                   help=f"data set: {', '.join(_registered('dataset'))}"
                   + (" (default digits)" if compare else ""))
    p.add_argument("--data-path", default=S, metavar="DIR", help="data directory or file")
    if not compare:
        p.add_argument("--loss", default=S, help=f"loss: {', '.join(_registered('loss'))} "
                                                 "(default soft-infonce)")
    p.add_argument("--model", default=S,
                   help=f"model: {', '.join(_registered('model'))} or a timm model name "
                        "(default: the data set's)")
    p.add_argument("--finetune", default=S, metavar="PATH", help="initial weights")
    p.add_argument("--head", default=S, choices=HEAD_CHOICES, help="classifier head")
    p.add_argument("--input-size", type=int, default=S, help="image side length")
    p.add_argument("--epochs", type=int, default=S, help="training epochs")
    p.add_argument("--max-steps", type=int, default=S, metavar="N",
                   help="stop after N optimiser steps (smoke tests)")
    p.add_argument("--num-classes", type=int, default=S, help="C for generated data sets")
    p.add_argument("--batch-size", type=int, default=S, help="batch size per process")
    p.add_argument("--lr", type=float, default=S, help="peak learning rate")
    if not compare:
        p.add_argument("--seed", type=int, default=S, help="random seed")
        p.add_argument("--temperature", type=float, default=S, help="softmax temperature")
        p.add_argument("--negatives", default=S, choices=NEGATIVES_CHOICES,
                       help="InfoNCE candidate set")
        p.add_argument("--noise", default=S, choices=NOISE_CHOICES,
                       help="InfoNCE noise distribution")
    p.add_argument("--device", default=S, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--output-dir", default=S, metavar="DIR",
                   help="where the run writes" + (" (default softnce-compare/)" if compare
                                                  else " (default runs/<dataset>-<loss>-seed<k>)"))
    p.add_argument("--resume", action="store_true", default=S,
                   help="continue from the output directory's last checkpoint" if not compare
                   else "reuse finished runs and resume unfinished ones")
    p.add_argument("--quiet", action="store_true", default=S,
                   help="no progress bar: plain log lines (for log files)" if not compare
                   else "only the final table (no line per finished run)")


def config_from_args(args: argparse.Namespace, **extra: Any) -> Any:
    """``TrainConfig`` from ``--config``, ``--set`` and the flags that were given."""
    from softnce.config import load_config

    fields = {k: getattr(args, k) for k in TRAIN_FLAGS if hasattr(args, k)}
    fields.update(extra)
    return load_config(args.config, args.set, **fields)


def _run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.config import ConfigError
    from softnce.data import DataError
    from softnce.engine import NonFiniteLossError, train

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
        from softnce.report import print_run_summary

        print_run_summary(summary)
    return 0


def _plugins() -> list[Any]:
    import softnce

    mods = []
    for info in pkgutil.iter_modules(softnce.__path__):
        if info.name.startswith("cli_"):
            mods.append(importlib.import_module(f"softnce.{info.name}"))
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

    p_train = sub.add_parser(
        "train", help="train one run", formatter_class=_Formatter,
        description="Train one run. Every config key can be set in --config FILE.yaml or with "
                    "--set KEY=VALUE; explicit flags win.",
        epilog="example: softnce train --dataset digits --loss soft-infonce --epochs 30 "
               "--seed 0 --output-dir runs/x")
    add_train_arguments(p_train)
    commands["train"] = (p_train, _run_train)

    from softnce import compare

    p_cmp = sub.add_parser("compare", help="train the paper's four losses and compare them",
                           formatter_class=_Formatter, description=compare.DESCRIPTION)
    compare.add_arguments(p_cmp)
    commands["compare"] = (p_cmp, lambda a, p: compare.run(a, p))

    for mod in _plugins():
        p = sub.add_parser(mod.COMMAND, help=getattr(mod, "HELP", ""), formatter_class=_Formatter)
        mod.add_arguments(p)
        commands[mod.COMMAND] = (p, (lambda m: (lambda a, pp: m.run(a)))(mod))
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
    return int(fn(args, sub) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
