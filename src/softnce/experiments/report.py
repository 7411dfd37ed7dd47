"""Tables and plots for runs and comparisons (rich on the terminal, Markdown, PNG)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METRIC_LABELS",
    "LOWER_IS_BETTER",
    "aggregate",
    "paired_rows",
    "format_mean_std",
    "markdown_table",
    "plot_training_curves",
    "print_compare_table",
    "print_run_summary",
]

#: Metric key -> column title (lower is better for all but top-k and bayes_top1).
METRIC_LABELS = {
    "top1": "top-1",
    "top5": "top-5",
    "ece": "ECE (15 bins)",
    "nll": "NLL",
    "brier": "Brier",
    "mce": "MCE",
    "ace": "ACE",
    "kl_to_truth": "KL(p*||p)",
    "ece_to_truth": "|conf - p*|",
    "bayes_top1": "Bayes top-1",
}
for _k, _v in list(METRIC_LABELS.items()):
    if _k != "bayes_top1":
        METRIC_LABELS[f"{_k}_ts"] = f"{_v} after TS"
METRIC_LABELS["temperature_ts"] = "fitted T"

#: Metrics whose smaller values are better (all but accuracies).
LOWER_IS_BETTER = frozenset(k for k in METRIC_LABELS if not k.startswith(("top", "bayes"))
                            and k != "temperature_ts")

#: How every table states its intervals.
INTERVAL_NOTE = ("mean ± half-width of the 95% Student-t interval over seeds (ddof=1); paired "
                 "differences are per-seed differences against the reference configuration")


def aggregate(values: Sequence[float]) -> dict[str, float]:
    """:func:`softnce.metrics.stats.summarize` of the non-missing ``values``."""
    from softnce.metrics.stats import summarize

    return summarize([float(v) for v in values if v is not None])


def paired_rows(per_seed: Mapping[str, Mapping[str, Sequence[float]]], reference: str,
                metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Paired differences ``config - reference`` per metric with their verdict on "config is
    better than reference" (``per_seed[config][metric]`` lists values in seed order)."""
    from softnce.metrics.stats import paired_difference, verdict

    out = []
    ref = per_seed[reference]
    for name, vals in per_seed.items():
        if name == reference:
            continue
        for m in metrics:
            if m not in vals or m not in ref:
                continue
            d = paired_difference(vals[m], ref[m])
            out.append({"config": name, "reference": reference, "metric": m, **d,
                        "verdict": verdict(d, "lower" if m in LOWER_IS_BETTER else "higher")})
    return out


def paired_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of :func:`paired_rows`."""
    lines = ["| configuration | metric | difference vs reference [95% CI] | better? |",
             "|---|---|---|---|"]
    for r in rows:
        scale = 100 if r["metric"].startswith("top") else 1
        unit, nd = (" pts", 2) if scale == 100 else ("", 4)
        lines.append(f"| {r['config']} - {r['reference']} | {METRIC_LABELS.get(r['metric'], r['metric'])}"
                     f" | {scale * r['mean']:+.{nd}f}{unit} [{scale * r['ci_low']:+.{nd}f}, "
                     f"{scale * r['ci_high']:+.{nd}f}] | {r['verdict']} |")
    return "\n".join(lines)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def format_mean_std(mean: float, std: float, metric: str) -> str:
    """top-k as percent (``97.50 ± 0.31``), the others with 4 decimals."""
    if _isnan(mean):
        return "n/a"
    if _isnan(std):
        std_pct, std_txt = "n/a", "n/a"
    else:
        std_pct, std_txt = f"{100 * std:.2f}", f"{std:.4f}"
    if metric.startswith("top") or metric == "bayes_top1":
        return f"{100 * mean:.2f} ± {std_pct}"
    return f"{mean:.4f} ± {std_txt}"


def _rows(stats: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> list[list[str]]:
    """``stats[name]["mean"/"half"]`` (``half``: CI half-width; ``std`` if no ``half``)."""
    rows = []
    for name, s in stats.items():
        spread = s.get("half", s.get("std", {}))
        rows.append([name] + [format_mean_std(s["mean"].get(m, float("nan")),
                                              spread.get(m, float("nan")), m)
                              for m in metrics])
    return rows


def markdown_table(stats: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """Markdown table of ``stats[name]["mean"/"std"][metric]``."""
    head = ["loss"] + [METRIC_LABELS.get(m, m) + (" (%)" if m.startswith("top") or
                                                   m == "bayes_top1" else "") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(stats, metrics)]
    return "\n".join(lines)


def print_compare_table(stats: Mapping[str, Mapping[str, Any]], metrics: Sequence[str],
                        title: str, console: Any = None) -> None:
    """The rich table of mean ± std per loss."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=title)
    table.add_column("loss", style="bold")
    for m in metrics:
        unit = " (%)" if m.startswith("top") or m == "bayes_top1" else ""
        table.add_column(METRIC_LABELS.get(m, m) + unit, justify="right")
    for r in _rows(stats, metrics):
        table.add_row(*r)
    console.print(table)


def print_run_summary(summary: Mapping[str, Any], console: Any = None) -> None:
    """Final and best metrics of one run as a rich table."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    final, best = summary.get("final", {}), summary.get("best", {})
    keys = [k for k in ("top1", "top5", "ece", "nll", "brier", "kl_to_truth", "ece_to_truth")
            if k in final]
    table = Table(title=f"{summary.get('dataset')} / {summary.get('loss')} / "
                        f"{summary.get('model')} (seed {summary.get('seed')})")
    table.add_column("")
    for k in keys:
        table.add_column(METRIC_LABELS.get(k, k), justify="right")
    rows = [("final (calibration split)", final),
            (f"best (epoch {summary.get('best_epoch')})", best)]
    test = summary.get("test")
    if test:
        rows.append(("test", test))
        if "ece_ts" in test:
            rows.append((f"test, T = {test['temperature_ts']:.3f} fitted on calibration",
                         {k: test[f"{k}_ts"] for k in keys if f"{k}_ts" in test}))
    for name, rec in rows:
        table.add_row(name, *[f"{rec[k]:.4f}" if k in rec else "" for k in keys])
    console.print(table)
    console.print(f"outputs in {summary.get('output_dir')}")


def plot_training_curves(curves: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
                         path: str | Path, metrics: Sequence[str] = ("train_loss", "top1",
                                                                      "nll", "ece")) -> None:
    """One panel per metric, one line per loss (mean over seeds, band = min..max).

    ``curves[name]`` is a list (one per seed) of ``metrics.jsonl`` records.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    titles = {"train_loss": "train loss (own objective)", "top1": "val top-1",
              "nll": "val NLL", "ece": "val ECE (15 bins)"}
    fig = Figure(figsize=(3.6 * len(metrics), 3.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics))
    for ax, m in zip(axes, metrics):
        for name, runs in curves.items():
            runs = [r for r in runs if r]
            if not runs:
                continue
            n = min(len(r) for r in runs)
            xs = [runs[0][i]["epoch"] for i in range(n)]
            vals = [[r[i].get(m, float("nan")) for r in runs] for i in range(n)]
            mean = [sum(v) / len(v) for v in vals]
            line = ax.plot(xs, mean, label=name)[0]
            if len(runs) > 1:
                ax.fill_between(xs, [min(v) for v in vals], [max(v) for v in vals],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(titles.get(m, m))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
