"""Tables and plots for runs and comparisons (rich on the terminal, Markdown, PNG)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "METRIC_LABELS",
    "aggregate",
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


def aggregate(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    vals = [float(v) for v in values if v is not None and not _isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
    return mean, math.sqrt(var)


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def format_mean_std(mean: float, std: float, metric: str) -> str:
    """top-k as percent (``97.50 ± 0.31``), the others with 4 decimals."""
    if _isnan(mean):
        return "n/a"
    if metric.startswith("top") or metric == "bayes_top1":
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{mean:.4f} ± {std:.4f}"


def _rows(stats: Mapping[str, Mapping[str, Any]], metrics: Sequence[str]) -> list[list[str]]:
    rows = []
    for name, s in stats.items():
        rows.append([name] + [format_mean_std(s["mean"].get(m, float("nan")),
                                              s["std"].get(m, float("nan")), m)
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
    for name, rec in (("final", final), (f"best (epoch {summary.get('best_epoch')})", best)):
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
