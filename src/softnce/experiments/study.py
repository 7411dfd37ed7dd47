"""``softnce study NAME``: a grid over one or two config keys x losses x seeds, one report.

Each named study (:data:`STUDIES`) asks one question of the paper's losses; ``custom`` sweeps
any keys (``--grid KEY=V1,V2``). Every run goes through :func:`softnce.experiments.runner.run_all`
(which trains with :func:`softnce.harness.trainer.train` and reuses complete runs, so rerunning a
killed study finishes only the missing runs). Aggregation comes from :mod:`softnce.metrics.stats`
only: per cell and loss the Student-t interval over seeds of every metric, paired per-seed
differences against the reference configuration (default ``soft-ce``) and along the grid axes,
and verdicts computed by :func:`softnce.metrics.stats.verdict`.

Outputs in the output directory (default ``softnce-study/<name>``): ``results.csv`` (one row
per run), ``summary.json``, ``report.md``, ``metrics.png`` (top-1 / ECE / NLL against the swept
value with interval bands), ``ece_scaling.png`` (ECE raw vs after temperature scaling) and the
runs under ``runs/<cell>/<loss>/seed<k>``.

Numbers come from each run summary's ``"test"`` block (held-out test split, with the
temperature-scaled ``*_ts`` metrics) when the harness writes one, else from ``"final"`` (the last
epoch on the validation split); the report and ``summary.json`` say which (``"split"``).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softnce.experiments.study_report import (  # noqa: F401  (re-exported)
    BASE_METRICS,
    HIGHER_IS_BETTER,
    LABELS,
    STATEMENT,
    VERDICT_METRICS,
    _no_nan,
    aggregate,
    cell_name,
    collect,
    plot,
    results_csv,
    verdict_sentences,
    write_report,
)

__all__ = [
    "STUDIES",
    "Axis",
    "Study",
    "StudyError",
    "build_runs",
    "collect",
    "parse_grid",
    "run_study",
    "verdict_sentences",
]

DEFAULT_ROOT = "softnce-study"
MARKER = "study.json"
#: Keys that only the InfoNCE losses read / that only soft-target losses read.
NEGATIVE_KEYS = {"negatives", "noise", "queue_size", "num_negatives", "simplex_concentration",
                 "gather_distributed"}
SOFT_KEYS = {"smoothing", "mixup", "cutmix", "mix_prob", "switch_prob", "mix_mode"}
_SAFE = re.compile(r"-?[A-Za-z0-9][A-Za-z0-9._=,+-]*")


class StudyError(ValueError):
    """Bad study input (reported as a usage error before anything trains)."""


def safe_component(name: str, what: str) -> str:
    """``name`` if it is a safe single path component, else a :class:`StudyError`."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name or len(name) > 120:
        raise StudyError(f"{what} {name!r} cannot name a directory (use letters, digits and "
                         f". _ = , + -; no '/', no '..', not starting with a symbol)")
    return name


# ---------------------------------------------------------------------------------- studies
@dataclass
class Axis:
    """One grid axis: ``values`` = ``[(label, {config key: value})]``; ``only`` = the losses it
    applies to (None: all); the other losses are run once, not swept (the axis shows ``-``)."""

    name: str
    values: list[tuple[str, dict[str, Any]]]
    only: Callable[[str], bool] | None = None
    baseline: str | None = None  # the value the axis contrasts are taken against
    numeric: bool = True
    log: bool = False


def _axis(key: str, values: Sequence[Any], baseline: Any = None, **kw: Any) -> Axis:
    return Axis(key, [(_label(v), {key: v}) for v in values],
                baseline=None if baseline is None else _label(baseline), **kw)


def _label(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v)) if not isinstance(v, bool) else str(v)
    return str(v)


def _uses_negatives(loss: str) -> bool:
    from softnce.harness.losses import LOSSES

    return loss in LOSSES and LOSSES.get(loss).uses_negatives


@dataclass
class Study:
    name: str
    question: str
    axes: Callable[[bool], list[Axis]]  # quick -> axes
    losses: tuple[str, ...]
    seeds: int
    epochs: int | None  # None: the preset's
    quick_losses: tuple[str, ...] | None = None
    reference: str = "soft-ce"
    own_datasets: bool = False  # the grid sets the data set (``--dataset`` does not apply)
    notes: tuple[str, ...] = ()
    overrides: dict[str, Any] = field(default_factory=dict)


def _smoothing(quick: bool) -> list[Axis]:
    return [_axis("smoothing", [0.0, 0.1] if quick else [0.0, 0.05, 0.1, 0.2, 0.3], 0.0)]


def _batch(quick: bool) -> list[Axis]:
    return [_axis("batch_size", [32, 128] if quick else [16, 32, 64, 128, 256],
                  128 if quick else 256, log=True),
            _axis("negatives", ["batch", "queue"] if quick
                  else ["batch", "queue", "sampled", "simplex"], "batch",
                  only=_uses_negatives, numeric=False)]


def _head(quick: bool) -> list[Axis]:
    return [_axis("head", ["linear", "mlp"], "mlp", numeric=False)]


def _temperature(quick: bool) -> list[Axis]:
    return [_axis("temperature", [0.1, 1.0] if quick else [0.05, 0.1, 0.3, 1.0, 3.0], 1.0,
                  log=True)]


def _noise(quick: bool) -> list[Axis]:
    data = Axis("data", [("balanced", {"dataset": "synthetic", "dataset_options.imbalance": 1.0}),
                         ("imbalanced", {"dataset": "synthetic",
                                         "dataset_options.imbalance": 10.0})],
                numeric=False)
    return [data, _axis("noise", ["uniform", "prior"], "prior", numeric=False)]


def _label_noise(quick: bool) -> list[Axis]:
    return [_axis("dataset_options.label_noise", [0.0, 0.2] if quick else [0.0, 0.1, 0.2, 0.4],
                  0.0)]


def _datasets(quick: bool) -> list[Axis]:
    from softnce.data import DATASETS

    names = ["digits", "synthetic"] if quick else ["digits", "mnist1d", "synthetic"]
    names += [n for n in ("wine", "breast-cancer") if not quick and n in DATASETS.names()]
    return [_axis("dataset", names, numeric=False)]


PAPER = ("nll", "infonce", "soft-ce", "soft-infonce")

STUDIES: dict[str, Study] = {s.name: s for s in [
    Study("smoothing", "accuracy and calibration against the label-smoothing eps",
          _smoothing, ("soft-ce", "soft-infonce"), seeds=5, epochs=30),
    Study("batch-size", "small-batch failure; coupled (batch) vs separated negatives",
          _batch, PAPER, seeds=3, epochs=10, quick_losses=("soft-ce", "soft-infonce"),
          notes=("nll and soft-ce do not use negatives: they are swept over the batch size only "
                 "and serve as references at every negatives setting.",)),
    Study("head", "linear-head failure signature (mlp = the paper's 3-layer head)",
          _head, PAPER, seeds=5, epochs=30, quick_losses=("soft-ce", "soft-infonce")),
    Study("temperature", "sensitivity to the softmax temperature tau",
          _temperature, ("infonce", "soft-infonce", "soft-ce"), seeds=4, epochs=30,
          quick_losses=("soft-infonce", "soft-ce")),
    Study("noise", "uniform vs prior noise distribution on balanced and imbalanced data "
          "(paper open question 2)", _noise, ("infonce", "soft-infonce"), seeds=5, epochs=20,
          reference="infonce", own_datasets=True,
          notes=("both data sets are `synthetic` (Gaussian classes, known p(y|x)); balanced: "
                 "imbalance 1, imbalanced: imbalance 10 (max / min class prior).",)),
    Study("label-noise", "robustness to symmetric label noise on the training labels",
          _label_noise, PAPER, seeds=4, epochs=30, quick_losses=("nll", "soft-ce"),
          notes=("label noise is `dataset_options.label_noise` (training labels only, seeded); "
                 "the data sets must support that option.",)),
    Study("datasets", "does the answer depend on the data set", _datasets, PAPER, seeds=3,
          epochs=None, quick_losses=("soft-ce", "soft-infonce"), own_datasets=True),
    Study("custom", "any grid (--grid KEY=V1,V2)", lambda quick: [], PAPER, seeds=3,
          epochs=None),
    # two-stage (teacher, then students): planned and run by experiments/distill_study.py
    Study("distill", "soft-infonce vs classic KD (soft-ce) distillation from a larger teacher",
          lambda quick: [], ("nll", "soft-ce", "soft-infonce"), seeds=3, epochs=10),
]}
QUICK = {"seeds": 2, "epochs": 1, "max_steps": 8}


def parse_grid(items: Sequence[str]) -> list[Axis]:
    """``["smoothing=0,0.1", "batch_size=32,128"]`` -> axes (values parsed as YAML)."""
    import yaml

    from softnce.harness.config import _FIELDS, ConfigError, _field_name, _type_of

    axes: list[Axis] = []
    for item in items:
        if "=" not in item:
            raise StudyError(f"--grid expects KEY=V1,V2,...; found {item!r}")
        key, raw = (s.strip() for s in item.split("=", 1))
        parts = key.split(".")
        try:
            top = _field_name(parts[0], "--grid")
        except ConfigError as e:
            raise StudyError(str(e)) from None
        if len(parts) > 1 and (_type_of(top)[0] != "dict" or not all(parts[1:])):
            raise StudyError(f"--grid {key}: dotted keys only reach into dataset_options, "
                             f"model_options and augment")
        key = ".".join([top, *parts[1:]])
        if top in ("seed", "output_dir") or top not in _FIELDS:
            raise StudyError(f"--grid {key}: cannot sweep {top} (use --seeds / --output-dir)")
        values = []
        for tok in raw.split(","):
            if not tok.strip():
                continue
            try:
                values.append(yaml.safe_load(tok))
            except yaml.YAMLError as e:
                raise StudyError(f"--grid {key}: cannot parse value {tok!r}: {e}") from None
        if not values:
            raise StudyError(f"--grid {key}: empty list of values")
        if len({_label(v) for v in values}) != len(values):
            raise StudyError(f"--grid {key}: repeated values in {raw!r}")
        if any(a.name == key for a in axes):
            raise StudyError(f"--grid {key} given twice")
        for v in values:
            if isinstance(v, (dict, list)):
                raise StudyError(f"--grid {key}: values must be scalars; found {v!r}")
            safe_component(_label(v), f"--grid {key} value")
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        axes.append(_axis(key, values, values[0], numeric=numeric))
    if not axes:
        raise StudyError("study custom needs a grid: --grid KEY=V1,V2 (repeatable)")
    if len(axes) > 2:
        raise StudyError(f"at most two --grid keys; found {len(axes)}")
    return axes


# ------------------------------------------------------------------------------- the grid
def _nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def _flat_keys(d: Mapping[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, Mapping):
            out |= _flat_keys(v, prefix + k + ".")
    return out


def build_runs(study: Study, axes: list[Axis], losses: Sequence[str], seeds: Sequence[int],
               dataset: str | None, overrides: Mapping[str, Any], out: Path,
               custom: bool = False) -> list[Any]:
    """Every planned run of the grid, each config validated (ConfigError / StudyError)."""
    from softnce.experiments.compare import _merge, resolve_runs
    from softnce.experiments.runner import PlannedRun
    from softnce.harness.config import TrainConfig
    from softnce.harness.losses import LOSSES

    for name in losses:
        safe_component(name, "loss name")
    swept = {k for a in axes for v in a.values for k in v[1]}
    clash = sorted(swept & _flat_keys(overrides))
    if clash:
        raise StudyError(f"--set {clash[0]}: the study sweeps that key; drop the --set")
    for a in axes:
        keys = {k.split(".")[0] for v in a.values for k in v[1]}
        for loss in losses:
            if a.only is not None and not a.only(loss):
                continue
            if loss not in LOSSES:
                continue  # resolve_runs names the valid configurations
            spec = LOSSES.get(loss)
            if keys & NEGATIVE_KEYS and not spec.uses_negatives:
                raise StudyError(f"{a.name} does not apply to loss {loss!r} (it uses no "
                                 f"negatives / noise distribution); drop it from --losses")
            if keys & SOFT_KEYS and spec.targets == "hard":
                raise StudyError(f"{a.name} does not apply to loss {loss!r} (it trains on hard "
                                 f"labels); drop it from --losses")
        if a.only is not None and not any(a.only(loss) for loss in losses):
            raise StudyError(f"{a.name} applies to none of the losses {', '.join(losses)}")

    bases: dict[str, dict[str, dict[str, Any]]] = {}

    def base(ds: str | None) -> dict[str, dict[str, Any]]:
        key = ds or ""
        if key not in bases:
            rs = resolve_runs(ds, list(losses), [0], None, None, out)
            bases[key] = {n: c.to_dict() for n, _s, c in rs}
        return bases[key]

    # cells: the cartesian product; an axis not applying to a loss is collapsed to "-"
    cells: list[list[tuple[str, str, dict[str, Any]]]] = [[]]
    for a in axes:
        cells = [c + [(a.name, lab, st)] for c in cells for lab, st in a.values]
    runs, seen = [], set()
    for cell in cells:
        for loss in losses:
            labels, settings = {}, {}
            for (name, lab, st), a in zip(cell, axes):
                if a.only is not None and not a.only(loss):
                    labels[name] = "-"
                else:
                    labels[name] = lab
                    settings.update(st)
            key = (tuple(labels.items()), loss)
            if key in seen:
                continue
            seen.add(key)
            name = cell_name(labels)
            safe_component(name, "grid cell")
            ds = settings.get("dataset", dataset)
            b = base(ds)[loss]
            for seed in seeds:
                d = _merge(_merge(b, overrides), _nested(settings))
                run_dir = out / "runs" / name / loss / f"seed{seed}"
                d.update(seed=seed, output_dir=str(run_dir), quiet=True, resume=False,
                         tensorboard=False)
                cfg = TrainConfig.from_dict(d, source=f"study run {name}/{loss}/seed{seed}")
                runs.append(PlannedRun(dict(labels), loss, seed, cfg, label=name))
    if not runs:
        raise StudyError("the grid is empty")
    return runs


def check_data(runs: Sequence[Any]) -> None:
    """Build each distinct data set once so that a bad data option fails before training."""
    from softnce.data import DATASETS, DataError
    from softnce.harness.config import ConfigError

    seen = set()
    for r in runs:
        c = r.config
        key = json.dumps([c.dataset, c.data_path, c.num_classes, c.input_size,
                          c.dataset_options], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        try:
            DATASETS.get(c.dataset)(c)
        except (DataError, ConfigError) as e:
            hint = ""
            if "'label_noise'" in str(e):
                hint = (" (label noise on the training labels needs the data layer's "
                        "dataset_options.label_noise, not available for this data set yet)")
            raise StudyError(f"{r.label}: {e}{hint}") from None
        except ImportError as e:
            raise StudyError(f"{r.label}: dataset {c.dataset!r} needs a package that is not "
                             f"installed: {e}") from None


# --------------------------------------------------------------------------- aggregation
def _identity(study: str, axes: Sequence[Axis], runs: Sequence[Any]) -> dict[str, Any]:
    from softnce.experiments.runner import _comparable

    return {"study": study, "grid": {a.name: [lab for lab, _ in a.values] for a in axes},
            "runs": {f"{r.label}/{r.loss}/seed{r.seed}": _comparable(r.config.to_dict())
                     for r in runs}}


def _prepare_output(out: Path, identity: Mapping[str, Any], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise StudyError(f"output directory {str(out)!r} is a file; use another --output-dir")
    if out.exists() and any(out.iterdir()):
        marker = out / MARKER
        if not marker.is_file():
            raise StudyError(f"output directory {str(out)!r} is not empty and holds no study "
                             f"({MARKER} missing); use another --output-dir")
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = None
        if old != json.loads(json.dumps(identity, default=str)):
            if not overwrite:
                what = (old or {}).get("study", "?")
                raise StudyError(f"output directory {str(out)!r} holds a different study "
                                 f"({what}, other grid or settings); use another --output-dir "
                                 f"or --overwrite")
            shutil.rmtree(out / "runs", ignore_errors=True)
            for f in ("results.csv", "summary.json", "report.md", "metrics.png",
                      "ece_scaling.png", MARKER):
                (out / f).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps(identity, indent=2, default=str) + "\n")


def plan_study(name: str, dataset: str | None = None, seeds: Sequence[int] | None = None,
               losses: Sequence[str] | None = None, epochs: int | None = None,
               output_dir: str | Path | None = None, reference: str | None = None,
               quick: bool = False, grid: Sequence[str] = (),
               overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate everything and plan every run (nothing trains); StudyError / ConfigError."""
    if name not in STUDIES:
        raise StudyError(f"unknown study {name!r}; valid studies: {', '.join(STUDIES)}")
    if name == "distill" and not grid:
        from softnce.experiments.distill_study import plan_distill

        return plan_distill(dataset, seeds, epochs, output_dir, quick, overrides, losses)
    study = STUDIES[name]
    if grid and name != "custom":
        raise StudyError(f"--grid only applies to study custom; study {name} has its own grid")
    axes = parse_grid(grid) if name == "custom" else study.axes(quick)
    if study.own_datasets and dataset is not None:
        raise StudyError(f"study {name} sets the data sets itself; drop --dataset")
    if losses is None:
        losses = list(study.quick_losses or study.losses) if quick else list(study.losses)
    if not losses or len(set(losses)) != len(losses):
        raise StudyError(f"--losses must name distinct configurations; found {losses}")
    if reference is None:
        reference = study.reference if study.reference in losses else None
    elif reference not in losses:
        raise StudyError(f"--reference {reference!r} is not among the losses "
                         f"{', '.join(losses)}")
    seeds = list(seeds) if seeds else list(range(QUICK["seeds"] if quick else study.seeds))
    ov = copy.deepcopy(dict(overrides or {}))
    if epochs is not None:
        ov["epochs"] = epochs
    elif quick:
        ov.setdefault("epochs", QUICK["epochs"])
        ov.setdefault("max_steps", QUICK["max_steps"])
    elif study.epochs is not None:
        ov.setdefault("epochs", study.epochs)
    ov = {**study.overrides, **ov}
    out = Path(output_dir or Path(DEFAULT_ROOT) / name)
    runs = build_runs(study, axes, losses, seeds, None if study.own_datasets else dataset,
                      ov, out, custom=name == "custom")
    return {"study": study, "axes": axes, "losses": list(losses), "seeds": seeds,
            "reference": reference, "runs": runs, "out": out, "overrides": ov,
            "dataset": dataset}


def run_study(plan: Mapping[str, Any], jobs: int = 1, quiet: bool = False,
              overwrite: bool = False, command: str | None = None,
              echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or reuse) the planned runs and write results.csv, summary.json, report.md and the
    figures; returns the summary dict."""
    from softnce.experiments.runner import run_all

    if plan.get("kind") == "distill":
        from softnce.experiments.distill_study import run_distill

        return run_distill(plan, jobs, quiet, overwrite, command, echo)
    study, axes, runs, out = plan["study"], plan["axes"], plan["runs"], plan["out"]
    check_data(runs)
    _prepare_output(out, _identity(study.name, axes, runs), overwrite)
    t0 = time.perf_counter()
    summaries = run_all(runs, jobs=jobs, quiet=quiet, echo=echo)
    wall = time.perf_counter() - t0
    rows = collect(runs, summaries)
    splits = sorted({r["split"] for r in rows})
    split = splits[0] if len(splits) == 1 else "mixed"
    agg = aggregate(rows, axes, plan["losses"], plan["reference"])
    datasets = list(dict.fromkeys(r.config.dataset for r in runs))
    settings = {
        "study": study.name, "question": study.question, "command": command or
        f"softnce study {study.name}", "dataset": datasets[0] if len(datasets) == 1
        else datasets, "dataset_label": ", ".join(datasets), "losses": plan["losses"],
        "seeds": plan["seeds"], "reference": plan["reference"],
        "grid": {a.name: {lab: st for lab, st in a.values} for a in axes},
        "overrides": plan["overrides"], "split": split,
        "splits": next((r["splits"] for r in rows if r["splits"]), None),
        "epochs": sorted({r.config.epochs for r in runs}),
        "max_steps": sorted({r.config.max_steps for r in runs}, key=str),
        "models": sorted({str(r.config.model) for r in runs}),
    }
    caveats = list(study.notes)
    if split != "test":
        caveats.append("The run summaries hold no `test` block (held-out test split with "
                       "temperature-scaled metrics): numbers are the last epoch on the "
                       f"validation split ({split}); after-scaling (`_ts`) metrics are absent.")
    elif not any(m.endswith("_ts") for m in agg["metrics"]):
        caveats.append("No temperature-scaled (`_ts`) metrics in the run summaries.")
    if plan["reference"] is None:
        caveats.append("No reference configuration among the losses: no paired differences "
                       "between losses, only along the grid axes.")
    if len(plan["seeds"]) < 2:
        caveats.append("One seed: no intervals, every verdict is inconclusive.")
    caveats.append("Verdicts are per comparison at 95% without correction for the number of "
                   "comparisons; expect some false 'holds' / 'does not hold' among many.")
    if any(r.config.max_steps for r in runs) or plan["study"].name != "custom" and \
            settings["epochs"] and settings["epochs"][0] < 5:
        caveats.append("Short trainings (few epochs / max_steps): a smoke test, not evidence.")
    figures = plot(out, axes, agg)
    if "ece_scaling.png" not in figures:
        caveats.append("No ECE-after-scaling figure: the runs have no `ece_ts`.")
    summary = {"settings": settings, "statement": STATEMENT.format(
        ref=plan["reference"] or "no reference"), "wall_time_s": wall,
        "metrics": agg["metrics"], "cells": agg["cells"], "contrasts": agg["contrasts"],
        "verdicts": agg["verdicts"], "caveats": caveats,
        "runs": [{k: r[k] for k in ("cell", "loss", "seed", "split", "run_dir", "metrics")}
                 for r in rows]}
    (out / "results.csv").write_text(results_csv(rows, axes))
    (out / "summary.json").write_text(json.dumps(_no_nan(summary), indent=2, default=str)
                                      + "\n")
    write_report(out, study, axes, settings, rows, agg, wall, figures, caveats)
    if not quiet:
        for v in agg["verdicts"]:
            if v["kind"] == "reference":
                echo(v["sentence"])
    echo(f"study {study.name}: {len(runs)} run(s), {wall:.1f} s; report in {out}/report.md")
    return summary
