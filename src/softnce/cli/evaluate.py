"""``softnce evaluate RUN_DIR``: metrics of a finished run on one split of its data set."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMAND = "evaluate"
HELP = "evaluate a finished run on its calibration or test split"
DESCRIPTION = (
    "Rebuild the run's data set from its config.json (--data-path overrides the path), score "
    "the chosen checkpoint on one split and print the metrics raw (the run's temperature) and "
    "after temperature scaling fitted on the calibration split only. Writes evaluation.json "
    "and reliability.png to --output-dir (default RUN_DIR/evaluation/<checkpoint>-<split>).")
EPILOG = "example: softnce evaluate runs/digits-soft-infonce-seed0 --split test"


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output directory")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best.pt (best calibration top-1, then NLL) or the last weights "
                        "(default best)")
    p.add_argument("--data-path", default=None, metavar="PATH",
                   help="the data set's location if it moved (default: the run's data_path)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")


def load(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """``load_run`` with every failure as a usage error (exit 2)."""
    from softnce.harness.runs import RunError, load_run

    try:
        return load_run(args.run_dir, checkpoint=args.checkpoint, device=args.device)
    except RunError as e:
        parser.error(str(e))
    except RuntimeError as e:  # e.g. a device that does not exist
        parser.error(f"{args.run_dir}: {e}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)
    p.add_argument("--split", choices=("calibration", "test", "val"), default="test",
                   help="split to score (val = calibration; default test)")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="where evaluation.json and reliability.png go")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing evaluation.json")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.experiments.using import dump_json, evaluate_run, metric_table
    from softnce.harness.runs import RunError

    split = "calibration" if args.split == "val" else args.split
    out = Path(args.output_dir) if args.output_dir else \
        Path(args.run_dir) / "evaluation" / f"{args.checkpoint}-{split}"
    target = out / "evaluation.json"
    if target.exists() and not args.overwrite:
        parser.error(f"{target} already exists; pass --overwrite to replace it or choose "
                     "another --output-dir")
    loaded = load(args, parser)
    try:
        bundle = loaded.build_data(args.data_path)
        data = bundle.val if split == "calibration" else bundle.test
        if data is None or len(data) == 0:  # before anything is written
            raise RunError(f"data set {bundle.name!r} has no {split} split")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            parser.error(f"cannot create --output-dir {str(out)!r}: {e.strerror or e}")
        result = evaluate_run(loaded, bundle, split, plot=out / "reliability.png")
    except RunError as e:
        parser.error(str(e))
    dump_json(target, result)
    rows = {f"raw (T={result['temperature']:.3g})": result["raw"]}
    if "ts" in result:
        rows[f"TS (T={result['temperature_calibrated']:.3g})"] = result["ts"]
    print(f"{loaded.run_dir} [{loaded.weights_file}] on {result['dataset']} {split} "
          f"(n={result['n']})")
    print(metric_table(rows))
    if "ts" in result:
        print("TS: temperature fitted on the calibration split only"
              + (" (in-sample here)" if split == "calibration" else ""))
    print(f"wrote {target} and {out / 'reliability.png'}")
    return 0
