"""The report of a study: per-run rows, aggregation over seeds (``softnce.metrics.stats``),
verdict sentences, ``results.csv``, ``report.md`` and figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from softnce.experiments.study import Axis, Study

STATEMENT = "95% Student-t intervals over seeds (ddof=1); paired differences against {ref} per seed"

#: Metrics read from each run (raw; each also with suffix ``_ts`` after temperature scaling).
BASE_METRICS = ("top1", "top5", "ece", "ace", "mce", "nll", "brier", "kl_to_truth",
                "ece_to_truth")
HIGHER_IS_BETTER = {"top1", "top5"}
LABELS = {"top1": "top-1", "top5": "top-5", "ece": "ECE", "ace": "ACE", "mce": "MCE",
          "nll": "NLL", "brier": "Brier", "kl_to_truth": "KL(p*||p)",
          "ece_to_truth": "|conf - p*|", "temperature_ts": "fitted T"}
#: Metrics the verdict sentences are about (those present in the runs).
VERDICT_METRICS = ("top1", "ece", "ece_ts", "nll", "nll_ts", "kl_to_truth")


def cell_name(cell: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in cell.items()) or "all"


def run_metrics(summary: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """``(split, {metric: value})`` of one run summary: ``"test"`` if the harness wrote it
    (raw and ``_ts``), else ``"final"`` (``split = "validation"``, raw only)."""
    block, split = summary.get("test"), "test"
    if not isinstance(block, Mapping):
        block, split = summary.get("final") or {}, "validation"
    keys = [*BASE_METRICS, *(m + "_ts" for m in BASE_METRICS), "temperature_ts"]
    return split, {k: float(block[k]) for k in keys
                   if isinstance(block.get(k), (int, float)) and not isinstance(block[k], bool)}


def collect(runs: Sequence[Any], summaries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per run: cell labels, loss, seed, split, metrics."""
    rows = []
    for r, s in zip(runs, summaries):
        split, m = run_metrics(s)
        rows.append({"cell": dict(r.cell), "cell_name": r.label, "loss": r.loss, "seed": r.seed,
                     "split": split, "metrics": m, "splits": s.get("splits"),
                     "run_dir": str(Path("runs") / r.label / r.loss / f"seed{r.seed}")})
    return rows


def _metric_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    present = set().union(*(r["metrics"] for r in rows)) if rows else set()
    order = [*BASE_METRICS, *(m + "_ts" for m in BASE_METRICS), "temperature_ts"]
    return [m for m in order if m in present]


def _by_seed(rows: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    return {r["seed"]: r["metrics"].get(metric, float("nan")) for r in rows}


def _paired(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], metric: str) -> dict:
    from softnce.metrics.stats import paired_difference

    xa, xb = _by_seed(a, metric), _by_seed(b, metric)
    seeds = sorted(set(xa) & set(xb))
    return paired_difference([xa[s] for s in seeds], [xb[s] for s in seeds])


def _fmt(v: float, metric: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if metric.startswith("top"):
        return f"{100 * v:.2f}"
    return f"{v:.4f}"


def _diff_text(d: Mapping[str, float], metric: str) -> str:
    unit = " pp" if metric.startswith("top") else ""
    return (f"diff {_fmt(d['mean'], metric)}{unit} [{_fmt(d['ci_low'], metric)}, "
            f"{_fmt(d['ci_high'], metric)}]")


def _name(metric: str) -> str:
    base = metric[:-3] if metric.endswith("_ts") else metric
    text = LABELS.get(base, base)
    return text + (" after temperature scaling" if metric.endswith("_ts") else "")


def verdict_sentences(a_name: str, b_name: str, where: str, diffs: Mapping[str, Mapping],
                      metrics: Sequence[str]) -> list[dict[str, Any]]:
    """"<where>: A has lower ECE than B: holds (diff m [lo, hi])" per metric, each verdict
    computed by :func:`softnce.metrics.stats.verdict` from the paired interval ``A - B``."""
    from softnce.metrics.stats import verdict

    out = []
    for m in metrics:
        if m not in diffs:
            continue
        base = m[:-3] if m.endswith("_ts") else m
        better = "higher" if base in HIGHER_IS_BETTER else "lower"
        v = verdict(diffs[m], better)
        claim = f"{a_name} has {better} {_name(m)} than {b_name}"
        out.append({"where": where, "a": a_name, "b": b_name, "metric": m, "better": better,
                    "verdict": v, "diff": dict(diffs[m]),
                    "sentence": f"{where}: {claim}: {v} ({_diff_text(diffs[m], m)})"})
    return out


def aggregate(rows: Sequence[Mapping[str, Any]], axes: Sequence[Axis], losses: Sequence[str],
              reference: str | None) -> dict[str, Any]:
    """Per cell and loss: summarize() of every metric; paired differences against the
    reference (same cell, the reference's collapsed axes matched) and along each axis."""
    from softnce.metrics.stats import summarize

    metrics = _metric_order(rows)
    vmetrics = [m for m in VERDICT_METRICS if m in metrics]
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((tuple(r["cell"].items()), r["loss"]), []).append(r)
    cells: list[dict[str, Any]] = []
    for (cell_t, loss), rs in groups.items():
        cells.append({"cell": dict(cell_t), "name": rs[0]["cell_name"], "loss": loss,
                      "n_seeds": len(rs), "seeds": [r["seed"] for r in rs],
                      "metrics": {m: summarize([r["metrics"].get(m, float("nan")) for r in rs])
                                  for m in metrics}})

    def find(loss: str, cell: Mapping[str, str]) -> list | None:
        for (cell_t, lo), rs in groups.items():
            if lo != loss:
                continue
            c = dict(cell_t)
            if all(c[k] == "-" or c[k] == v for k, v in cell.items()):
                return rs
        return None

    verdicts: list[dict[str, Any]] = []
    for c in cells:
        c["vs_reference"] = {}
        if reference is None or c["loss"] == reference:
            continue
        ref = find(reference, c["cell"])
        if ref is None:
            continue
        mine = groups[(tuple(c["cell"].items()), c["loss"])]
        diffs = {m: _paired(mine, ref, m) for m in metrics}
        c["vs_reference"] = diffs
        where = "at " + _where(c["cell"])
        verdicts += [dict(v, kind="reference") for v in
                     verdict_sentences(c["loss"], reference, where, diffs, vmetrics)]
    contrasts = []
    cmetrics = [m for m in ("top1", "ece", "ece_ts") if m in metrics]
    for a in axes:
        if a.baseline is None:
            continue
        for c in cells:
            lab = c["cell"].get(a.name)
            if lab in (None, "-", a.baseline):
                continue
            base_cell = dict(c["cell"], **{a.name: a.baseline})
            base = groups.get((tuple(base_cell.items()), c["loss"]))
            if base is None:
                continue
            mine = groups[(tuple(c["cell"].items()), c["loss"])]
            diffs = {m: _paired(mine, base, m) for m in metrics}
            others = {k: v for k, v in c["cell"].items() if k != a.name}
            where = c["loss"] + (" at " + _where(others) if others else "")
            item = {"axis": a.name, "value": lab, "baseline": a.baseline, "loss": c["loss"],
                    "cell": c["cell"], "diffs": diffs}
            contrasts.append(item)
            verdicts += [dict(v, kind="axis") for v in verdict_sentences(
                f"{a.name}={lab}", f"{a.name}={a.baseline}", where, diffs, cmetrics)]
    return {"metrics": metrics, "cells": cells, "contrasts": contrasts, "verdicts": verdicts}


def _where(cell: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in cell.items() if v != "-") or "every setting"


# ------------------------------------------------------------------------------- outputs
def results_csv(rows: Sequence[Mapping[str, Any]], axes: Sequence[Axis]) -> str:
    metrics = _metric_order(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([a.name for a in axes] + ["loss", "seed", "split"] + metrics)
    for r in rows:
        w.writerow([r["cell"][a.name] for a in axes] + [r["loss"], r["seed"], r["split"]]
                   + [repr(r["metrics"][m]) if m in r["metrics"] else "" for m in metrics])
    return buf.getvalue()


def _table(agg: Mapping[str, Any], axes: Sequence[Axis], metrics: Sequence[str]) -> list[str]:
    head = [a.name for a in axes] + ["loss", "n"] + [LABELS.get(m, _name(m)) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in agg["cells"]:
        vals = []
        for m in metrics:
            s = c["metrics"][m]
            if math.isnan(s["half_width"]):
                vals.append(_fmt(s["mean"], m))
            else:
                vals.append(f"{_fmt(s['mean'], m)} [{_fmt(s['ci_low'], m)}, "
                            f"{_fmt(s['ci_high'], m)}]")
        lines.append("| " + " | ".join([c["cell"][a.name] for a in axes]
                                       + [c["loss"], str(c["n_seeds"])] + vals) + " |")
    return lines


def write_report(out: Path, study: Study, axes: Sequence[Axis], settings: Mapping[str, Any],
                 rows: Sequence[Mapping[str, Any]], agg: Mapping[str, Any], wall: float,
                 figures: Sequence[str], caveats: Sequence[str]) -> None:
    ref = settings["reference"]
    split = settings["split"]
    main_metrics = [m for m in ("top1", "ece", "ece_ts", "nll", "nll_ts", "brier",
                                "kl_to_truth", "temperature_ts") if m in agg["metrics"]]
    lines = [f"# softnce study {study.name}: {settings['dataset_label']}", "",
             f"Question: {study.question}.", "",
             f"Command: `{settings['command']}`  ",
             f"Wall time: {wall:.1f} s.  ",
             f"Seeds: {', '.join(map(str, settings['seeds']))}; losses: "
             f"{', '.join(settings['losses'])}; grid: "
             + "; ".join(f"{a.name} in {{{', '.join(lab for lab, _ in a.values)}}}"
                         for a in axes) + ".  ",
             f"Split: **{split}** ("
             + ("held-out test split; `_ts` after temperature scaling fitted on the calibration "
                "split" if split == "test" else "last epoch on the validation split; the "
                "harness wrote no test block") + ").  ",
             STATEMENT.format(ref=ref or "no reference") + ".", "",
             "## Results (mean [95% interval])", "", *_table(agg, axes, main_metrics), ""]
    ref_v = [v for v in agg["verdicts"] if v["kind"] == "reference"]
    if ref_v:
        lines += [f"## Verdicts against {ref}", "",
                  "Each verdict is computed from the paired per-seed interval of the difference "
                  "(holds / does not hold: the interval excludes 0; inconclusive otherwise).", ""]
        lines += [f"- {v['sentence']}" for v in ref_v] + [""]
    ax_v = [v for v in agg["verdicts"] if v["kind"] == "axis"]
    if ax_v:
        lines += ["## Along the grid (paired against the axis baseline)", ""]
        lines += [f"- {v['sentence']}" for v in ax_v] + [""]
    for f in figures:
        lines += [f"![{f}]({f})", ""]
    lines += ["## Caveats", ""] + [f"- {c}" for c in caveats] + [""]
    lines += ["## All metrics", "", *_table(agg, axes, agg["metrics"]), ""]
    (out / "report.md").write_text("\n".join(lines))


def plot(out: Path, axes: Sequence[Axis], agg: Mapping[str, Any]) -> list[str]:
    """``metrics.png`` (top-1, ECE, NLL vs the first axis) and ``ece_scaling.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not axes:
        return []
    a0 = axes[0]
    labels0 = [lab for lab, _ in a0.values]
    numeric = a0.numeric
    xs = {lab: (float(lab) if numeric else i) for i, lab in enumerate(labels0)}
    series: dict[str, list[dict]] = {}
    for c in agg["cells"]:
        rest = ", ".join(f"{k}={v}" for k, v in c["cell"].items() if k != a0.name and v != "-")
        series.setdefault(c["loss"] + (f" ({rest})" if rest else ""), []).append(c)

    def panel(ax: Any, metric: str, title: str) -> None:
        for name, cs in series.items():
            pts = sorted((xs[c["cell"][a0.name]], c["metrics"][metric]) for c in cs
                         if c["cell"][a0.name] in xs and metric in c["metrics"])
            if not pts:
                continue
            x = [p[0] for p in pts]
            line = ax.plot(x, [p[1]["mean"] for p in pts], marker="o", label=name)[0]
            lo, hi = [p[1]["ci_low"] for p in pts], [p[1]["ci_high"] for p in pts]
            if not any(math.isnan(v) for v in lo + hi):
                ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel(a0.name)
        if numeric and a0.log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(list(xs.values()), labels0)

    figs = []
    metrics = agg["metrics"]
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, m in zip(axs, ("top1", "ece", "nll")):
        panel(ax, m, LABELS[m])
    axs[0].legend(fontsize=7)
    fig.suptitle("mean over seeds, band: 95% Student-t interval")
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=110)
    plt.close(fig)
    figs.append("metrics.png")
    if "ece_ts" in metrics:
        fig, axs = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
        panel(axs[0], "ece", "ECE raw")
        panel(axs[1], "ece_ts", "ECE after temperature scaling")
        axs[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "ece_scaling.png", dpi=110)
        plt.close(fig)
        figs.append("ece_scaling.png")
    return figs


# ----------------------------------------------------------------------------------- main
def _no_nan(x: Any) -> Any:
    """NaN (one seed: no interval) as JSON null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Mapping):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


