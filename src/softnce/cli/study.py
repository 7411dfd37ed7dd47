"""``softnce study NAME``: a grid over config keys x losses x seeds with intervals and verdicts."""

from __future__ import annotations

import argparse
import sys

COMMAND = "study"
HELP = "run a named study (a grid x losses x seeds) and report intervals and verdicts"
DESCRIPTION = (
    "Train a grid over one or two config keys x losses x seeds on one data set and report, per "
    "cell and loss, 95% Student-t intervals over seeds, paired per-seed differences against a "
    "reference configuration (default soft-ce) and computed verdicts.\n\nStudies:\n"
)
EPILOG = (
    "examples:\n"
    "  softnce study smoothing --quick\n"
    "  softnce study batch-size --jobs 2\n"
    "  softnce study custom --grid smoothing=0,0.1 --grid batch_size=32,128 "
    "--losses soft-ce,soft-infonce\n"
    "Rerunning a study in the same --output-dir reuses its finished runs (resume)."
)
__all__ = ["COMMAND", "DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]


def _studies_text() -> str:
    from softnce.experiments.study import STUDIES

    return "\n".join(f"  {s.name:<12} {s.question}" for s in STUDIES.values())


DESCRIPTION += _studies_text()


def add_arguments(p: argparse.ArgumentParser) -> None:
    from softnce.cli.compare import _seeds

    p.add_argument("name", metavar="NAME", help="study: smoothing, batch-size, head, temperature, "
                   "noise, label-noise, datasets, distill, custom")
    p.add_argument("--dataset", default=None, help="data set (default digits)")
    p.add_argument("--seeds", type=_seeds, default=None,
                   help="number of seeds (0..n-1) or a comma list (default: the study's)")
    p.add_argument("--losses", default=None, help="comma list of configurations")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of every run")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="where to write (default softnce-study/NAME)")
    p.add_argument("--reference", default=None,
                   help="configuration the paired differences are taken against "
                        "(default soft-ce)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="parallel trainings (worker processes, 1 CPU thread each)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid axis of study custom (repeatable, at most 2)")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="config key for every run (VALUE parsed as YAML); repeatable")
    p.add_argument("--quick", action="store_true",
                   help="tiny grid, 2 seeds, 1 epoch / 8 steps (smoke test)")
    p.add_argument("--quiet", action="store_true", help="no line per finished run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different study in --output-dir")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from softnce.data import DataError
    from softnce.experiments.study import StudyError, plan_study, run_study
    from softnce.harness.config import ConfigError, parse_overrides
    from softnce.harness.trainer import NonFiniteLossError

    argv = getattr(args, "argv", None)
    command = "softnce " + " ".join(argv) if argv is not None else None
    try:
        if args.jobs < 1:
            raise StudyError(f"--jobs must be >= 1; found {args.jobs}")
        if args.epochs is not None and args.epochs < 1:
            raise StudyError(f"--epochs must be >= 1; found {args.epochs}")
        losses = None
        if args.losses is not None:
            losses = [s.strip() for s in args.losses.split(",") if s.strip()]
        plan = plan_study(args.name, dataset=args.dataset, seeds=args.seeds, losses=losses,
                          epochs=args.epochs, output_dir=args.output_dir,
                          reference=args.reference, quick=args.quick, grid=args.grid,
                          overrides=parse_overrides(args.set))
        run_study(plan, jobs=args.jobs, quiet=args.quiet, overwrite=args.overwrite,
                  command=command)
    except (StudyError, ConfigError, DataError) as e:
        parser.error(str(e))
    except NonFiniteLossError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    return 0
