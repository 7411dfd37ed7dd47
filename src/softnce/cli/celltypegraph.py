"""``softnce celltypegraph {make-synthetic,cv-summary,cv}``: CellTypeGraph data utilities.

``make-synthetic`` writes a synthetic data set in the benchmark's format
(:func:`softnce.data.celltypegraph.make_synthetic`); ``cv-summary`` scores finished fold runs and
``cv`` runs the whole 5-fold protocol (:mod:`softnce.experiments.celltypegraph_cv`). Means are
reported with the sample std (ddof=1) and the 95% Student-t interval over folds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from softnce.data import DataError
from softnce.data.celltypegraph import SUBDIR, make_synthetic
from softnce.experiments.celltypegraph_cv import (
    CV_COLUMNS,
    CV_DEFAULT_LOSSES,
    CV_MODELS,
    CVError,
    format_cell,
    run_cv,
    summarize_cv,
)

COMMAND = "celltypegraph"
HELP = "CellTypeGraph utilities: write a synthetic data set, run and summarise the 5-fold protocol"
__all__ = ["COMMAND", "HELP", "add_arguments", "run"]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Sub-commands ``make-synthetic``, ``cv-summary`` and ``cv`` (``softnce celltypegraph ...``)."""
    sub = ap.add_subparsers(dest="ctg_command", required=True,
                            metavar="{make-synthetic,cv-summary,cv}")
    mk = sub.add_parser("make-synthetic", help="write a synthetic data set in the benchmark format")
    mk.add_argument("dir", help="output data path (pass it as --data-path)")
    mk.add_argument("--stacks", type=int, default=84, help="number of ovules (default 84)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--min-cells", type=int, default=30)
    mk.add_argument("--max-cells", type=int, default=60)
    mk.add_argument("--no-second-annotator", action="store_true",
                    help="omit cell_labels_set2")
    cv = sub.add_parser("cv-summary", help="benchmark scores of finished fold runs "
                        "(mean ± std and 95%% interval over folds and over graphs)")
    cv.add_argument("runs", nargs="+", help="run directories (one per fold)")
    cv.add_argument("--json", help="also write the result to this JSON file")
    run = sub.add_parser(
        "cv", help="the whole 5-fold protocol: train every loss config on every fold through "
        "the harness, then print and write mean ± std and the 95%% interval over folds",
        description="Train each loss config on each fold (softnce.harness.trainer.train, runs in "
        "OUT/<model>-<loss>/fold<k>), then summarise (summarize_cv) into OUT/cv_summary.json and "
        "OUT/cv_report.md.")
    run.add_argument("--data-path", required=True, metavar="DIR", help="CellTypeGraph root")
    run.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="a base config (e.g. celltypegraph/gcn: runs its {stem}-{loss}.yaml "
                          "siblings) or one loss config (e.g. celltypegraph/gcn-soft-infonce)")
    run.add_argument("--model", default=None, choices=CV_MODELS,
                     help="without --config: use configs/celltypegraph/<model>-<loss>.yaml "
                          "(default gcn)")
    run.add_argument("--losses", default=None, metavar="L1,L2",
                     help=f"losses of the base config (default {','.join(CV_DEFAULT_LOSSES)}; "
                          "also soft-ce-annotators, soft-infonce-annotators)")
    run.add_argument("--folds", default="0,1,2,3,4", metavar="0,1,...",
                     help="folds to run (default 0,1,2,3,4)")
    run.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    run.add_argument("--seed", type=int, default=None, help="override the configs' seed")
    run.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                     help="any config key, as in softnce train (repeatable)")
    run.add_argument("--output-dir", required=True, metavar="OUT")
    run.add_argument("--resume", action="store_true",
                     help="skip finished fold runs, resume interrupted ones")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a sub-command parsed by :func:`add_arguments`."""
    if args.ctg_command == "cv":
        return _run_cv_cli(args)
    if args.ctg_command == "cv-summary":
        try:
            res = summarize_cv(args.runs)
        except ValueError as e:
            print(f"softnce celltypegraph cv-summary: error: {e}", file=sys.stderr)
            return 2
        _print_cv(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return 0
    paths = make_synthetic(args.dir, num_stacks=args.stacks, seed=args.seed,
                           min_cells=args.min_cells, max_cells=args.max_cells,
                           second_annotator=not args.no_second_annotator)
    print(f"wrote {len(paths)} synthetic ovules under {Path(args.dir).joinpath(*SUBDIR)}")
    return 0


def _run_cv_cli(args: argparse.Namespace) -> int:
    from softnce.harness.config import ConfigError
    from softnce.harness.trainer import NonFiniteLossError

    prog = "softnce celltypegraph cv"
    argv = getattr(args, "argv", None)
    try:
        losses = None
        if args.losses is not None:
            losses = [t.strip() for t in args.losses.split(",") if t.strip()]
            if not losses:
                raise CVError("--losses is empty")
        summary = run_cv(
            args.data_path, args.output_dir, config=args.config, losses=losses,
            model=args.model, folds=_parse_folds(args.folds), epochs=args.epochs,
            seed=args.seed, overrides=args.set, resume=args.resume,
            command=("softnce " + shlex.join(argv)) if argv else None,
        )
    except (CVError, ConfigError, DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    _print_cv_table(summary)
    print(f"wrote {Path(args.output_dir) / 'cv_summary.json'} and "
          f"{Path(args.output_dir) / 'cv_report.md'}")
    return 0


def _parse_folds(text: str) -> list[int]:
    try:
        folds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CVError(f"--folds must be comma-separated fold indices such as 0,1,2,3,4; "
                      f"found {text!r}") from None
    if not folds or len(set(folds)) != len(folds):
        raise CVError(f"--folds must list distinct fold indices; found {text!r}")
    return folds


def _stats(v: dict[str, float]) -> str:
    return (f"{v['mean']:.3f} ± {v['std']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]")


def _print_cv(res: dict[str, Any]) -> None:
    cols = ("top1", "ece", "nll", "brier", "graph_top1", "graph_class_avg")
    print("fold  graphs  " + "  ".join(f"{c:>15}" for c in cols) + "  run")
    for f in res["folds"]:
        print(f"{f['fold']:>4}  {f['graphs']:>6}  "
              + "  ".join(f"{f[c]:>15.4f}" for c in cols) + f"  {f['run']}")
    print("mean ± std [95% t-interval] over folds (std: ddof=1): " + ", ".join(
        f"{c} {_stats(v)}" for c, v in res["over_folds"].items()))
    print("mean ± std [95% t-interval] over test graphs (benchmark aggregation): " + ", ".join(
        f"{c} {_stats(v)}" for c, v in res["over_graphs"].items()))


def _print_cv_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    table = Table(title=f"CellTypeGraph {len(summary['folds'])}-fold CV: mean ± std (ddof=1) "
                        "[95% t-interval] over folds")
    table.add_column("loss", style="bold")
    for _, title, _ in CV_COLUMNS:
        table.add_column(title, justify="right")
    for name, r in summary["losses"].items():
        table.add_row(name, *[format_cell(r["over_folds"][k], pct) for k, _, pct in CV_COLUMNS])
    console.print(table)
