"""``softnce compare``: the paper's four losses over several seeds on one data set."""

from __future__ import annotations

import argparse
import sys

from softnce.experiments.compare import DEFAULT_OUTPUT, DESCRIPTION, compare

COMMAND = "compare"
HELP = "train the paper's four losses and compare them"
__all__ = ["COMMAND", "DESCRIPTION", "HELP", "add_arguments", "run"]


def _seeds(text: str) -> list[int]:
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
            if not seeds or len(set(seeds)) != len(seeds):
                raise argparse.ArgumentTypeError(f"--seeds list must hold distinct seeds; found "
                                                 f"{text!r}")
            return seeds
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects a count (3) or a list (0,1,2); found "
                                         f"{text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--seeds must be >= 1; found {n}")
    return list(range(n))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from softnce.cli.common import add_train_arguments

    add_train_arguments(p, compare=True)
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="number of seeds (0..n-1) or a comma list (default 3; --quick: 1)")
    p.add_argument("--losses", default=None,
                   help="comma list of configurations (default: nll,infonce,soft-ce,soft-infonce)")
    p.add_argument("--reference", default="soft-ce", metavar="NAME",
                   help="configuration the paired differences are taken against (default soft-ce)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 2 epochs, 1 seed (explicit --epochs/--seeds win)")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.data import DataError
    from softnce.harness.config import ConfigError, parse_overrides
    from softnce.harness.trainer import NonFiniteLossError

    argv = getattr(args, "argv", None)
    command = "softnce " + " ".join(argv) if argv is not None else None
    try:
        overrides = parse_overrides(args.set)
        for k in ("data_path", "model", "finetune", "head", "input_size", "epochs", "max_steps",
                  "num_classes", "batch_size", "lr", "device"):
            if hasattr(args, k):
                overrides[k] = getattr(args, k)
        seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
        if args.quick:
            overrides.setdefault("epochs", 2)
        losses = [s.strip() for s in args.losses.split(",")] if args.losses else None
        compare(dataset=getattr(args, "dataset", None), losses=losses, seeds=seeds,
                output_dir=getattr(args, "output_dir", DEFAULT_OUTPUT),
                config_file=args.config, overrides=overrides,
                resume=bool(getattr(args, "resume", False)),
                quiet=bool(getattr(args, "quiet", False)), command=command,
                reference=args.reference)
    except (ConfigError, DataError) as e:
        parser.error(str(e))
    except NonFiniteLossError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
