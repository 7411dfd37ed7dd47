"""``softnce predict RUN_DIR INPUT --output preds.csv``: top-k predictions of a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from softnce.cli.evaluate import add_run_arguments, load

COMMAND = "predict"
HELP = "top-k class predictions of a finished run for new inputs"
DESCRIPTION = (
    "INPUT: a tabular .npz (array x) or .csv (feature columns; a header line is skipped) of raw "
    "features (standardised with the run's training statistics), a folder of images (image "
    "runs), or split:test / split:calibration of the run's data set. Writes a CSV with the "
    "top-k classes, their names and probabilities softmax(z / T), T the calibrated temperature "
    "when 'softnce calibrate' was run for this checkpoint, else the run's temperature.")
EPILOG = "example: softnce predict runs/digits-soft-infonce-seed0 split:test --output preds.csv"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("input", metavar="INPUT", help="FILE.npz | FILE.csv | IMAGE_DIR | split:NAME")
    p.add_argument("--output", required=True, metavar="FILE.csv", help="predictions CSV")
    p.add_argument("--topk", type=int, default=3, help="classes per row (default 3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import sys

    from softnce.experiments.using import load_inputs, write_predictions
    from softnce.harness.runs import RunError

    out = Path(args.output)
    if args.topk < 1:
        parser.error(f"--topk must be at least 1; found {args.topk}")
    if out.exists() and not args.overwrite:
        parser.error(f"--output {out} already exists; pass --overwrite to replace it")
    if out.is_dir():
        parser.error(f"--output {out} is a folder; give a file name")
    if not out.parent.is_dir():
        parser.error(f"--output {out}: folder {out.parent} does not exist")
    loaded = load(args, parser)
    try:
        logits, ids, labels = load_inputs(loaded, args.input, args.data_path)
    except RunError as e:
        parser.error(str(e))
    if loaded.calibration is None:
        print(f"note: {loaded.run_dir} has no calibration for checkpoint {loaded.checkpoint!r};"
              f" probabilities use the run's temperature {loaded.temperature:.4g} (run "
              f"'softnce calibrate {loaded.run_dir}' to calibrate)", file=sys.stderr)
    info = write_predictions(out, loaded, logits, ids, labels, args.topk)
    msg = (f"wrote {out}: {info['n']} rows, top-{info['topk']}, temperature "
           f"{info['temperature']:.4g} ({'calibrated' if info['calibrated'] else 'uncalibrated'})")
    if "top1" in info:
        msg += f", top-1 {info['top1']:.4f}"
    print(msg)
    return 0
