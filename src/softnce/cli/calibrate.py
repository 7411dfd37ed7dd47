"""``softnce calibrate RUN_DIR``: fit a temperature on the run's calibration split."""

from __future__ import annotations

import argparse

from softnce.cli.evaluate import add_run_arguments, load

COMMAND = "calibrate"
HELP = "fit a softmax temperature on a run's calibration split (calibration.json)"
DESCRIPTION = (
    "Fit temperature scaling on the calibration split of the run's data set (never on the "
    "test split), store it in RUN_DIR/calibration.json (per checkpoint) and report NLL / ECE "
    "before and after on the calibration and test splits. softnce.load_run, evaluate and "
    "predict use the calibrated temperature afterwards.")
EPILOG = "example: softnce calibrate runs/digits-soft-infonce-seed0"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.experiments.using import calibrate_run, metric_table
    from softnce.harness.runs import RunError, write_calibration

    loaded = load(args, parser)
    try:
        bundle = loaded.build_data(args.data_path)
        entry = calibrate_run(loaded, bundle)
    except RunError as e:
        parser.error(str(e))
    path = write_calibration(loaded.run_dir, loaded.checkpoint, entry)
    print(f"{loaded.run_dir} [{loaded.weights_file}]: temperature {entry['run_temperature']:.4g}"
          f" -> {entry['temperature']:.4g} (factor {entry['factor']:.4g}, fitted on "
          f"{entry['n_calibration']} calibration samples)")
    rows = {"calibration before": entry["calibration"]["before"],
            "calibration after": entry["calibration"]["after"]}
    if "test" in entry:
        rows.update({"test before": entry["test"]["before"],
                     "test after": entry["test"]["after"]})
    print(metric_table(rows))
    print(f"wrote {path}")
    return 0
