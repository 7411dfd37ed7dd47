"""``softnce toy``: the paper's parameter-estimation experiment (:mod:`softnce.experiments.toy`):
options, the grid they describe, and the run (fits or ``--replot``, figures, summary)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from softnce.experiments.toy import (
    DGPS,
    ESTIMATORS,
    ToyConfig,
    plot_sample_size,
    plot_uncertainty,
    quick_config,
    read_runs,
    run_experiment,
    summary_markdown,
)
from softnce.experiments.toy.generators import _check_positive_int

COMMAND = "toy"
HELP = "parameter-estimation toy experiment: NLL vs InfoNCE under label uncertainty (paper Fig. 1)"
__all__ = ["COMMAND", "HELP", "add_arguments", "build_parser", "config_from_args", "main", "run"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; found {text!r}") \
            from err


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; found {text!r}") \
            from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``softnce toy`` options to ``parser``."""
    d = ToyConfig()
    f = d.fit
    parser.add_argument("--quick", action="store_true",
                        help="tiny grid (2 seeds, n=1500, 2 levels): a smoke test in seconds")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/toy"), dest="output_dir",
                        metavar="DIR",
                        help="output folder for toy_runs.csv, the PNGs and toy_summary.md "
                             "(default: outputs/toy)")
    # the old name, kept as a hidden alias of --output-dir
    parser.add_argument("--out", type=Path, dest="output_dir", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    parser.add_argument("--dgp", nargs="+", choices=DGPS, default=None,
                        help="data-generating processes (default: all)")
    parser.add_argument("--estimators", nargs="+", choices=tuple(ESTIMATORS), default=None,
                        help="estimators (default: every one applicable to each DGP)")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds (default {d.seeds})")
    parser.add_argument("--n", type=int, default=None, help=f"training size (default {d.n})")
    parser.add_argument("--n-test", type=int, default=None,
                        help=f"held-out x for the KL metrics (default {d.n_test})")
    parser.add_argument("--classes", type=int, default=None, help=f"K (default {d.classes})")
    parser.add_argument("--dim", type=int, default=None, help=f"d (default {d.dim})")
    parser.add_argument("--scales", type=_floats, default=None,
                        help="s values for categorical and CC, comma-separated (default "
                             + ",".join(f"{s:g}" for s in d.scales) + ")")
    parser.add_argument("--epsilons", type=_floats, default=None,
                        help="smoothing values for `smoothed` (default "
                             + ",".join(f"{e:g}" for e in d.epsilons) + ")")
    parser.add_argument("--smoothing-scale", type=float, default=None,
                        help=f"s of `smoothed` (default {d.smoothing_scale:g})")
    parser.add_argument("--sweep-n", type=_ints, default=None,
                        help="sample sizes of the sweep (default "
                             + ",".join(str(m) for m in d.sweep_n) + ")")
    parser.add_argument("--sweep-scale", type=float, default=None,
                        help=f"s of the sweep for categorical and CC (default {d.sweep_scale:g})")
    parser.add_argument("--sweep-epsilon", type=float, default=None,
                        help=f"eps of the sweep for `smoothed` (default {d.sweep_epsilon:g})")
    parser.add_argument("--w-seed", type=int, default=None, help="seed of W0 (default 0)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"Adam epochs of the InfoNCE fits (default {f.epochs})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"minibatch size (default {f.batch_size})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam peak lr (default {f.lr:g})")
    parser.add_argument("--queue-size", type=int, default=None,
                        help=f"queue length (default {f.queue_size})")
    parser.add_argument("--num-negatives", type=int, default=None,
                        help=f"sampled negatives per step (default {f.num_negatives})")
    parser.add_argument("--simplex-concentration", type=float, default=None,
                        help="Dirichlet concentration of the simplex negatives (default 1: "
                             "uniform)")
    parser.add_argument("--replot", type=Path, default=None, metavar="CSV",
                        help="skip the fits: redraw the figures and the summary from a "
                             "toy_runs.csv of an earlier run with the same grid options")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the fits are tiny)")


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    """The grid described by parsed ``softnce toy`` arguments (``--quick`` as the base)."""
    cfg = quick_config() if args.quick else ToyConfig()
    fit_keys = ("epochs", "batch_size", "lr", "queue_size", "num_negatives",
                "simplex_concentration")
    fit = replace(cfg.fit, **{k: getattr(args, k) for k in fit_keys
                              if getattr(args, k) is not None})
    over = {k: getattr(args, k) for k in ("seeds", "n", "n_test", "classes", "dim", "scales",
                                          "epsilons", "smoothing_scale", "sweep_n",
                                          "sweep_scale", "sweep_epsilon", "w_seed")
            if getattr(args, k) is not None}
    if args.dgp is not None:
        over["dgps"] = tuple(dict.fromkeys(args.dgp))
    if args.estimators is not None:
        over["estimators"] = tuple(dict.fromkeys(args.estimators))
    return replace(cfg, fit=fit, **over).validate()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run ``softnce toy`` for parsed arguments; returns the exit code."""
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as err:
        print(f"softnce toy: error: {err}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(_check_positive_int("threads", args.threads))
    out: Path = args.output_dir
    command = getattr(args, "_command", None)  # set by main()
    if command is None:  # the softnce CLI keeps its argv (starting with "toy") in args.argv
        argv = getattr(args, "argv", None)
        command = "softnce " + " ".join(argv if isinstance(argv, list) else sys.argv[1:])
    t0 = time.perf_counter()
    if args.replot is not None:
        try:
            rows = read_runs(args.replot)
        except (OSError, KeyError, ValueError) as err:
            print(f"softnce toy: error: cannot read --replot {args.replot}: {err}",
                  file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
    else:
        rows = run_experiment(config, out)
    plot_uncertainty(rows, config, out / "toy_uncertainty.png")
    plot_sample_size(rows, config, out / "toy_sample_size.png")
    wall = None if args.replot is not None else time.perf_counter() - t0
    text = summary_markdown(rows, config, wall, command.strip())
    (out / "toy_summary.md").write_text(text + "\n")
    print(f"wrote {out / 'toy_uncertainty.png'}, {out / 'toy_sample_size.png'}, "
          f"{out / 'toy_summary.md'}" + ("" if args.replot is not None else
                                         f", {out / 'toy_runs.csv'}")
          + f" ({time.perf_counter() - t0:.0f} s)")
    return 0



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softnce toy", description=HELP)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``softnce toy [options]`` on its own (the ``softnce`` command calls :func:`run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._command = " ".join(["softnce toy", *argv])
    return run(args)
