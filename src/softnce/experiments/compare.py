"""``softnce compare``: the paper's four losses on one data set, several seeds, one report.

Losses (settings per data set come from a preset, see :func:`register_compare_preset`):

* ``nll``: hard labels, ``torch.nn.CrossEntropyLoss``;
* ``infonce``: hard labels, ``InfoNCE`` with the empirical class prior as noise distribution;
* ``soft-ce``: ``SoftTargetCrossEntropy`` with label smoothing and MixUp;
* ``soft-infonce``: ``SoftTargetInfoNCE`` with the same soft targets and the class prior.

Writes into ``--output-dir`` (default ``softnce-compare/``): ``report.md``, ``summary.json``
(per loss: mean and std over seeds of every metric), ``reliability.png`` (the losses side by
side, validation predictions of all seeds pooled), ``curves.png`` (training curves) and one run
directory per loss and seed under ``runs/``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COMPARE_PRESETS",
    "builtin_preset",
    "PAPER_LOSSES",
    "compare",
    "register_compare_preset",
    "resolve_runs",
]

DESCRIPTION = (
    "Train nll, infonce, soft-ce and soft-infonce over several seeds on one data set (default: "
    "scikit-learn's embedded digits) and report mean ± std of top-1, ECE (15 bins), NLL and "
    "Brier, with a reliability diagram and training curves."
)
DEFAULT_OUTPUT = "softnce-compare"
MARKER = "compare.json"

#: The four configurations of the paper (settings every data set shares unless overridden).
PAPER_LOSSES: dict[str, dict[str, Any]] = {
    "nll": {"loss": "nll"},
    "infonce": {"loss": "infonce", "noise": "prior"},
    "soft-ce": {"loss": "soft-ce", "smoothing": 0.1, "mixup": 0.2},
    "soft-infonce": {"loss": "soft-infonce", "noise": "prior", "smoothing": 0.1, "mixup": 0.2},
}

#: Presets registered from Python (:func:`register_compare_preset`):
#: ``dataset -> {"base": {...}, "losses": {name: {...}}}``. They win over the built-in YAML
#: presets ``softnce/configs/compare/<dataset>.yaml`` (``compare/default.yaml`` for a data set
#: without one).
COMPARE_PRESETS: dict[str, dict[str, Any]] = {}

METRICS_MAIN = ("top1", "ece", "nll", "brier")
METRICS_ALL = tuple(m for base in ("top1", "top5", "ece", "mce", "ace", "nll", "brier",
                                   "kl_to_truth", "ece_to_truth")
                    for m in (base, f"{base}_ts")) + ("bayes_top1", "temperature_ts")


def register_compare_preset(dataset: str, base: Mapping[str, Any],
                            losses: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Per-data-set settings for ``softnce compare --dataset <dataset>``.

    ``base``: ``TrainConfig`` keys for every run; ``losses``: per-loss keys merged over
    :data:`PAPER_LOSSES` (a name not in PAPER_LOSSES adds a configuration that ``--losses`` can
    select). Registering the same data set again replaces its preset.
    """
    if not isinstance(base, Mapping):
        raise TypeError(f"base must be a mapping; found {type(base).__name__}")
    COMPARE_PRESETS[dataset] = {"base": dict(base),
                                "losses": {k: dict(v) for k, v in (losses or {}).items()}}


register_compare_preset("mnist1d", {"epochs": 30, "batch_size": 128, "lr": 3e-3,
                                    "weight_decay": 0.05, "warmup_epochs": 1.0, "model": "cnn"})
register_compare_preset("synthetic", {"epochs": 20, "batch_size": 128, "lr": 2e-3,
                                      "weight_decay": 0.01, "warmup_epochs": 1.0,
                                      "model": "mlp"})

def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(a))
    for k, v in b.items():
        k = k.replace("-", "_")
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def builtin_preset(dataset: str) -> dict[str, Any]:
    """The built-in compare preset of ``dataset``: ``softnce/configs/compare/<dataset>.yaml``, or
    ``compare/default.yaml`` for a data set without one (``{"base": ..., "losses": ...}``)."""
    from softnce.harness.config import CONFIG_DIR, ConfigError, load_yaml

    path = CONFIG_DIR / "compare" / f"{dataset}.yaml"
    data = load_yaml(path if path.is_file() else CONFIG_DIR / "compare" / "default.yaml")
    unknown = sorted(set(data) - {"base", "losses"})
    if unknown:
        raise ConfigError(f"compare preset {path}: unknown top-level key(s) {', '.join(unknown)}")
    return {"base": dict(data.get("base") or {}), "losses": dict(data.get("losses") or {})}


def _loss_entry(old: Mapping[str, Any], entry: Any, source: str) -> dict[str, Any]:
    """A loss entry of a compare config: a mapping merged over ``old``, or the name of a train
    preset (a full config, e.g. ``paper/imagenet-nll``) that replaces it."""
    from softnce.harness.config import ConfigError, load_yaml

    if isinstance(entry, str):
        return load_yaml(entry)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{source}: a loss entry must be a mapping or a preset name; found "
                          f"{type(entry).__name__}")
    return _merge(old, entry)


def resolve_runs(
    dataset: str | None,
    losses: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    output_dir: str | Path = DEFAULT_OUTPUT,
) -> list[tuple[str, int, Any]]:
    """``[(loss_name, seed, TrainConfig)]``: defaults < preset < config file < overrides."""
    from softnce.harness.config import ConfigError, load_yaml

    data: dict[str, Any] = {}
    if config_file:
        data = load_yaml(config_file)
        unknown = sorted(set(data) - {"base", "losses"})
        if unknown:
            raise ConfigError(f"compare config {config_file}: unknown top-level key(s) "
                              f"{', '.join(unknown)}; valid keys: base, losses")
    # an explicit dataset wins over the file's, which wins over the default
    dataset = dataset or (data.get("base") or {}).get("dataset") or "digits"
    preset = COMPARE_PRESETS.get(dataset) or builtin_preset(dataset)
    loss_table = {k: dict(v) for k, v in PAPER_LOSSES.items()}
    for k, v in preset["losses"].items():
        loss_table[k] = _loss_entry(loss_table.get(k, {}), v, "compare preset " + dataset)
    base = _merge(preset["base"], data.get("base") or {})
    base["dataset"] = dataset
    for k, v in (data.get("losses") or {}).items():
        loss_table[k] = _loss_entry(loss_table.get(k, {}), v or {}, str(config_file))
    names = list(losses) if losses else list(PAPER_LOSSES)
    missing = [n for n in names if n not in loss_table]
    if missing:
        raise ConfigError(f"unknown compare loss(es) {', '.join(missing)}; valid choices: "
                          f"{', '.join(loss_table)}")
    from softnce.harness.config import TrainConfig

    runs = []
    for name in names:
        for seed in seeds:
            d = _merge(_merge(base, loss_table[name]), overrides or {})
            d.setdefault("loss", name)
            d.update(seed=seed, output_dir=str(Path(output_dir) / "runs" / name / f"seed{seed}"))
            runs.append((name, seed, TrainConfig.from_dict(d, source=f"compare run {name}")))
    return runs


def compare(
    dataset: str | None = "digits",
    losses: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    output_dir: str | Path = DEFAULT_OUTPUT,
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    quiet: bool = False,
    command: str | None = None,
    reference: str | None = "soft-ce",
) -> dict[str, Any]:
    """Train every (loss, seed), aggregate, write the report; returns the summary dict.

    ``reference``: the configuration the paired differences are taken against."""
    from rich.console import Console

    from softnce.harness.config import ConfigError
    from softnce.harness.trainer import train

    console = Console()
    if not console.is_terminal:  # log files / pipes: do not wrap the table at 80 columns
        console = Console(width=160)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output directory {str(out)!r} is a file; use another --output-dir")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ConfigError(f"output directory {str(out)!r} is not empty and holds no compare "
                          f"run ({MARKER} missing); use another --output-dir")
    overrides = dict(overrides or {})
    overrides.update(quiet=True, resume=resume)
    runs = resolve_runs(dataset, losses, seeds, config_file, overrides, out)
    dataset = runs[0][2].dataset
    out.mkdir(parents=True, exist_ok=True)
    settings = {"dataset": dataset, "losses": list(dict.fromkeys(r[0] for r in runs)),
                "seeds": list(seeds), "command": command,
                "configs": {f"{n}/seed{s}": c.to_dict() for n, s, c in runs}}
    (out / MARKER).write_text(json.dumps(settings, indent=2, default=str) + "\n")

    t_start = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    for i, (name, seed, cfg) in enumerate(runs, 1):
        run_dir = Path(cfg.output_dir)
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        t0 = time.perf_counter()
        summary = train(cfg, log=lambda m: None)
        f = summary["final"]
        if not quiet:
            te = summary.get("test") or {}
            shown = te or f
            ts = f"  ECE after TS {te['ece_ts']:.4f}" if "ece_ts" in te else ""
            console.print(f"[{i}/{len(runs)}] {name:<13} seed {seed} ({'test' if te else 'val'}): "
                          f"top-1 {shown['top1']:.4f}  ECE {shown['ece']:.4f}{ts}  "
                          f"NLL {shown['nll']:.4f}  Brier {shown['brier']:.4f}  "
                          f"({time.perf_counter() - t0:.1f} s)", highlight=False, markup=False)
        results.setdefault(name, []).append({"seed": seed, "output_dir": str(run_dir),
                                             "final": f, "best": summary["best"],
                                             "test": summary.get("test")})
    wall = time.perf_counter() - t_start
    return _write_report(out, dataset, runs, results, wall, command, console, reference)


def _write_report(out: Path, dataset: str, runs: list, results: dict, wall: float,
                  command: str | None, console: Any, reference: str | None = "soft-ce"
                  ) -> dict[str, Any]:
    import torch

    from softnce.experiments.report import (
        METRIC_LABELS,
        aggregate,
        paired_rows,
        plot_training_curves,
        print_compare_table,
    )
    from softnce.metrics import plot_reliability_diagram

    # the held-out protocol: test-split metrics when every run has them, else validation
    on_test = all(r.get("test") for rs in results.values() for r in rs)
    split = "test" if on_test else "validation"
    stats: dict[str, dict[str, Any]] = {}
    per_seed: dict[str, dict[str, list[float]]] = {}
    for name, rs in results.items():
        recs = [r["test"] if on_test else r["final"] for r in rs]
        keys = [m for m in METRICS_ALL if all(m in rec for rec in recs)]
        agg = {m: aggregate([rec[m] for rec in recs]) for m in keys}
        stats[name] = {"mean": {m: a["mean"] for m, a in agg.items()},
                       "std": {m: a["std"] for m, a in agg.items()},
                       "half": {m: a["half_width"] for m, a in agg.items()},
                       "ci": {m: [a["ci_low"], a["ci_high"]] for m, a in agg.items()},
                       "n_seeds": len(rs), "runs": rs}
        per_seed[name] = {m: [rec[m] for rec in recs] for m in keys}
    has_truth = all("kl_to_truth" in s["mean"] for s in stats.values())
    table_metrics = ["top1", "ece", "ece_ts", "nll", "nll_ts", "brier", "temperature_ts"]
    if has_truth:
        table_metrics += ["kl_to_truth", "kl_to_truth_ts"]
    table_metrics = [m for m in table_metrics if all(m in s["mean"] for s in stats.values())]
    cfg0 = runs[0][2]
    seeds = sorted({r[1] for r in runs})
    title = (f"{dataset}: {len(seeds)} seed(s), {cfg0.epochs} epochs, {split} split; "
             f"mean ± 95% t-interval half-width; 'after TS' = temperature fitted on calibration")
    print_compare_table(stats, table_metrics, title, console)
    reference = reference if reference in per_seed else None
    paired = []
    if reference is not None and len(seeds) > 1:
        paired = paired_rows(per_seed, reference, [m for m in ("top1", "ece", "ece_ts", "nll",
                                                               "nll_ts", "kl_to_truth")
                                                   if m in table_metrics])
        for r in paired:
            if r["metric"] in ("ece", "ece_ts", "nll_ts") or (r["metric"] == "top1"):
                console.print(f"  {r['config']} vs {reference}: "
                              f"{METRIC_LABELS.get(r['metric'], r['metric'])} difference "
                              f"{r['mean']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] -> "
                              f"better: {r['verdict']}", highlight=False, markup=False)
    bayes = next(iter(stats.values()))["mean"].get("bayes_top1")
    truth_note = ""
    if bayes is not None:
        truth_note = (f"Known p*(y|x): the Bayes classifier's expected top-1 is {100 * bayes:.2f}%; "
                      f"KL(p*||p) = mean KL(p*(.|x) || p(.|x)), |conf - p*| = mean |max_c p_c - "
                      f"p*(argmax p)|.")
        console.print(truth_note, highlight=False)
    console.print(f"total {wall:.1f} s; report in {out}/report.md", highlight=False)

    # reliability diagram: validation predictions of all seeds pooled
    pooled: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, rs in results.items():
        probs, labels = [], []
        for r in rs:
            p = Path(r["output_dir"]) / ("test_logits.pt" if on_test else "val_logits.pt")
            if p.is_file():
                d = torch.load(p, map_location="cpu", weights_only=True)
                probs.append(torch.softmax(d["logits"].double() / d.get("temperature", 1.0), 1))
                labels.append(d["labels"])
        if probs:
            pooled[name] = (torch.cat(probs), torch.cat(labels))
    if pooled:
        plot_reliability_diagram(pooled, out / "reliability.png", n_bins=15,
                                 title=f"{dataset}: reliability ({split}, {len(seeds)} seed(s) "
                                       f"pooled)")
    curves = {}
    for name, rs in results.items():
        curves[name] = []
        for r in rs:
            mp = Path(r["output_dir"]) / "metrics.jsonl"
            curves[name].append([json.loads(line) for line in mp.read_text().splitlines()
                                 if line.strip()] if mp.is_file() else [])
    plot_training_curves(curves, out / "curves.png")

    summary = {
        "dataset": dataset,
        "seeds": seeds,
        "epochs": cfg0.epochs,
        "model": cfg0.model,
        "command": command,
        "wall_time_s": wall,
        "split": split,
        "std": "sample standard deviation over seeds (ddof=1)",
        "ci": "95% Student-t interval of the mean over seeds (ddof=1)",
        "reference": reference,
        "losses": {n: {"mean": s["mean"], "std": s["std"], "ci": s["ci"],
                       "n_seeds": s["n_seeds"], "runs": s["runs"]} for n, s in stats.items()},
        "paired": paired,
    }
    from softnce.harness.state import _atomic_write_text

    _atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")

    _write_markdown(out, dataset, runs, stats, table_metrics, paired, reference, split, on_test,
                    seeds, wall, command, truth_note)
    return summary


# ------------------------------------------------------------------------------ CLI


def _write_markdown(out: Path, dataset: str, runs: list, stats: dict, table_metrics: list,
                    paired: list, reference: str | None, split: str, on_test: bool,
                    seeds: list, wall: float, command: str | None, truth_note: str) -> None:
    """``report.md``: the table, the paired differences, the settings and every run."""
    from softnce.experiments.report import INTERVAL_NOTE, markdown_table, paired_markdown
    from softnce.harness.state import _atomic_write_text

    cfg0 = runs[0][2]
    from softnce.harness.losses import LOSSES

    settings = {}
    for n, _s, c in runs:
        nce = LOSSES.get(c.loss).uses_negatives
        settings[n] = {"loss": c.loss, "temperature": c.temperature,
                       "smoothing": c.smoothing, "mixup": c.mixup, "cutmix": c.cutmix,
                       "noise": c.noise if nce else "-", "negatives": c.negatives if nce else "-"}
    lines = [
        f"# softnce compare: {dataset}",
        "",
        f"Command: `{command or 'softnce compare'}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; wall time {wall:.1f} s.  ",
        f"Seeds: {', '.join(map(str, seeds))}; {cfg0.epochs} epochs; model "
        f"`{cfg0.model or 'default'}`; batch size {cfg0.batch_size}; lr {cfg0.lr}. Metrics of the "
        f"final model on the {split} split ({INTERVAL_NOTE}); predictions are "
        f"`softmax(logits / T)`, ECE with 15 equal-width bins; 'after TS': temperature scaling "
        f"fitted on the calibration split only.",
        "",
        markdown_table(stats, table_metrics),
        "",
        *([f"## Paired differences against {reference}", "",
           "'better?' is computed from the interval: holds (it excludes 0 on the better side), "
           "does not hold (it excludes 0 on the worse side), inconclusive (it contains 0).", "",
           paired_markdown(paired), ""] if paired else []),
        *([truth_note, ""] if truth_note else []),
        "## Settings per loss",
        "",
        "| configuration | " + " | ".join(next(iter(settings.values())).keys()) + " |",
        "|---|" + "---|" * len(next(iter(settings.values()))),
    ]
    for n, st in settings.items():
        lines.append(f"| {n} | " + " | ".join(str(v) for v in st.values()) + " |")
    lines += ["", f"## Reliability ({split}, seeds pooled)", "", "![reliability](reliability.png)",
              "", "## Training curves", "", "![curves](curves.png)", "", "## Runs", "",
              "| loss | seed | top-1 | ECE | NLL | Brier | directory |",
              "|---|---|---|---|---|---|---|"]
    for n, s in stats.items():
        for r in s["runs"]:
            f = r["test"] if on_test else r["final"]
            lines.append(f"| {n} | {r['seed']} | {f['top1']:.4f} | {f['ece']:.4f} | "
                         f"{f['nll']:.4f} | {f['brier']:.4f} | `{r['output_dir']}` |")
    _atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
