"""Reports of ``softnce toy``: aggregation over seeds (:func:`softnce.metrics.stats.summarize`:
mean and the 95% Student-t interval, ``ddof=1``), the claim verdicts, the sample-size slopes, the
two figures, the markdown summary and reading a ``toy_runs.csv`` back."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from softnce.experiments.toy.estimators import ESTIMATORS, NLL_REFERENCES
from softnce.experiments.toy.generators import DGP_TITLES, DGPS
from softnce.experiments.toy.run import FIELDS, ToyConfig
from softnce.metrics.stats import summarize

__all__ = [
    "aggregate", "claim_verdicts", "mean_interval", "plot_sample_size", "plot_uncertainty",
    "read_runs", "summary_markdown", "sweep_slopes",
]


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, ci_low, ci_high)`` over seeds: the 95% Student-t interval
    ``mean -+ t_{0.975, S-1} sd / sqrt(S)`` (``sd`` with ``ddof=1``) of
    :func:`softnce.metrics.stats.summarize` (``nan`` bounds for one seed)."""
    s = summarize(values)
    return s["mean"], s["ci_low"], s["ci_high"]


def aggregate(rows: Sequence[dict], phase: str, metric: str = "rel_err"
              ) -> dict[tuple[str, str, float], tuple[float, float, float]]:
    """``(dgp, estimator, x) -> (mean, lo, hi)`` over seeds; ``x`` is the label uncertainty for
    ``phase="grid"`` and ``n`` for ``phase="sweep"``."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in rows:
        if r["phase"] != phase:
            continue
        x = float(r["uncertainty"]) if phase == "grid" else float(r["n"])
        groups.setdefault((r["dgp"], r["estimator"], x), []).append(float(r[metric]))
    return {k: mean_interval(v) for k, v in groups.items()}


def claim_verdicts(rows: Sequence[dict], metric: str = "rel_err") -> list[dict]:
    """Test "NLL's error grows with label uncertainty faster than InfoNCE's" per DGP.

    Growth of an estimator on one seed: ``err(highest uncertainty) - err(lowest uncertainty)``.
    For each NLL reference R and InfoNCE estimator X, with 95% t-intervals over seeds of
    ``growth(R)`` and of the paired difference ``D = growth(R) - growth(X)``:

    * ``holds``: R's error grows (interval above 0) and faster than X's (D's interval above 0);
    * ``reversed``: X's error grows faster (D's interval below 0);
    * ``no growth``: R's error does not grow with uncertainty (interval not above 0), so the
      statement fails as worded, whatever the difference;
    * ``inconclusive``: otherwise.
    """
    grid = [r for r in rows if r["phase"] == "grid"]
    out = []
    for dgp in DGPS:
        sub = [r for r in grid if r["dgp"] == dgp]
        if not sub:
            continue
        us = sorted({float(r["uncertainty"]) for r in sub})
        if len(us) < 2:
            continue
        lo_u, hi_u = us[0], us[-1]
        err: dict[tuple[str, int, float], float] = {
            (r["estimator"], int(r["seed"]), float(r["uncertainty"])): float(r[metric])
            for r in sub}
        present = sorted({r["estimator"] for r in sub}, key=list(ESTIMATORS).index)
        seeds = sorted({int(r["seed"]) for r in sub})

        def growth(e: str, seed: int, err: dict = err, lo_u: float = lo_u,
                   hi_u: float = hi_u) -> float:
            return err[(e, seed, hi_u)] - err[(e, seed, lo_u)]

        for ref in NLL_REFERENCES[dgp]:
            if ref not in present:
                continue
            for x in present:
                if "infonce" not in x:
                    continue
                ok = [s for s in seeds if all((e, s, u) in err for e in (ref, x)
                                              for u in (lo_u, hi_u))]
                if len(ok) < 2:
                    continue
                g_ref = mean_interval([growth(ref, s) for s in ok])
                g_x = mean_interval([growth(x, s) for s in ok])
                d = mean_interval([growth(ref, s) - growth(x, s) for s in ok])
                if d[2] < 0:
                    verdict = "reversed"
                elif not g_ref[1] > 0:
                    verdict = "no growth"
                elif d[1] > 0:
                    verdict = "holds"
                else:
                    verdict = "inconclusive"
                out.append({"dgp": dgp, "reference": ref, "estimator": x, "u_low": lo_u,
                            "u_high": hi_u, "growth_reference": g_ref, "growth_estimator": g_x,
                            "difference": d, "verdict": verdict, "seeds": len(ok)})
    return out


def sweep_slopes(rows: Sequence[dict]) -> dict[tuple[str, str], float]:
    """Log-log slope of the mean relative error between the smallest and the largest ``n`` of the
    sweep: about -0.5 when the error is variance (``n^-1/2``), about 0 when it is bias."""
    agg = aggregate(rows, "sweep")
    by: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (dgp, est, n), (m, _, _) in agg.items():
        by.setdefault((dgp, est), []).append((n, m))
    out = {}
    for key, pts in by.items():
        pts.sort()
        (n0, e0), (n1, e1) = pts[0], pts[-1]
        if n1 > n0 and e0 > 0 and e1 > 0:
            out[key] = math.log(e1 / e0) / math.log(n1 / n0)
    return out


# ================================================================================= plots
_STYLE = {
    "nll": ("black", "-", "o"),
    "soft-ce": ("0.5", "-", "s"),
    "infonce-batch": ("tab:blue", "--", "v"),
    "infonce-queue": ("tab:cyan", "--", "^"),
    "infonce-sampled": ("tab:purple", "--", "<"),
    "soft-infonce-batch": ("tab:blue", "-", "v"),
    "soft-infonce-queue": ("tab:cyan", "-", "^"),
    "soft-infonce-sampled": ("tab:purple", "-", "<"),
    "soft-infonce-simplex": ("tab:red", "-", "D"),
}


def _axis_label(dgp: str, config: ToyConfig) -> str:
    if dgp == "smoothed":
        return f"label smoothing eps (s = {config.smoothing_scale:g})"
    return "label uncertainty 1/s"


def _plot_panels(rows: Sequence[dict], config: ToyConfig, phase: str, metrics: Sequence[str],
                 path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dgps = [d for d in config.dgps if any(r["dgp"] == d and r["phase"] == phase for r in rows)]
    if not dgps:
        return
    fig, axes = plt.subplots(len(metrics), len(dgps), figsize=(4.3 * len(dgps),
                                                               2.9 * len(metrics) + 1.3),
                             squeeze=False)
    ylabels = {"rel_err": "relative error of centred W", "kl": "KL(true || estimated)",
               "pred_kl": "KL(E[target] || softmax f)"}
    for j, dgp in enumerate(dgps):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            agg = aggregate(rows, phase, metric)
            lo_lim, hi_lim = math.inf, 0.0
            all_x: set[float] = set()
            for est in config.estimators_for(dgp):
                pts = sorted((x, v) for (d, e, x), v in agg.items() if d == dgp and e == est)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                all_x.update(xs)
                m = [p[1][0] for p in pts]
                lo = [max(p[1][1], 1e-12) for p in pts]
                hi = [p[1][2] for p in pts]
                lo_lim = min(lo_lim, *(v for v in m if v > 0))
                hi_lim = max(hi_lim, *(v for v in hi if math.isfinite(v)), *m)
                color, ls, marker = _STYLE[est]
                ax.plot(xs, m, color=color, ls=ls, marker=marker, ms=4, lw=1.4,
                        label=ESTIMATORS[est].label)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
            ax.set_yscale("log")
            if math.isfinite(lo_lim) and hi_lim > 0:  # wide bands are clipped, not the means
                ax.set_ylim(lo_lim / 3, hi_lim * 1.5)
            if phase == "sweep" or dgp != "smoothed":
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(all_x))
                ax.set_xticklabels([f"{x:g}" for x in sorted(all_x)])
                ax.minorticks_off()
            if phase == "sweep":
                s, eps = config.sweep_level(dgp)
                ax.set_xlabel("training set size n" + (f" (eps = {eps:g}, s = {s:g})"
                                                        if dgp == "smoothed" else f" (s = {s:g})"))
            else:
                ax.set_xlabel(_axis_label(dgp, config))
            if i == 0:
                ax.set_title(DGP_TITLES[dgp], fontsize=10)
            if j == 0:
                ax.set_ylabel(ylabels[metric])
            ax.grid(True, which="both", alpha=0.3)
            ax.tick_params(labelsize=8)
            if i == len(metrics) - 1:  # one legend per column, below the panels
                ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                          frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_uncertainty(rows: Sequence[dict], config: ToyConfig, path: Path) -> None:
    """The Figure-1-style plot: error against label uncertainty, 95% bands over seeds."""
    _plot_panels(rows, config, "grid", ("rel_err", "kl", "pred_kl"), path,
                 f"Linear model, K={config.classes}, d={config.dim}, n={config.n}, "
                 f"{config.seeds} seeds (mean, 95% interval)")


def plot_sample_size(rows: Sequence[dict], config: ToyConfig, path: Path) -> None:
    """Error against n at a fixed uncertainty: bias is flat, variance falls like n^-1/2."""
    _plot_panels(rows, config, "sweep", ("rel_err",), path,
                 f"Error against sample size, {config.seeds} seeds (mean, 95% interval)")


# =============================================================================== summary
def _md_table(title: str, values: dict, fmt, dgp: str, names: list[str], xs: list[float],
              xname: str) -> list[str]:
    """One markdown table of a per-(dgp, estimator, level) aggregate, estimators as rows."""
    out = ["", title, "",
           "| estimator | " + " | ".join(f"{xname} = {x:g}" for x in xs) + " |",
           "|---|" + "---|" * len(xs)]
    for e in names:
        out.append(f"| {e} | " + " | ".join(
            fmt(values[(dgp, e, x)]) if (dgp, e, x) in values else "-" for x in xs) + " |")
    return out


def _fmt(m: tuple[float, float, float], pct: bool = True) -> str:
    if pct:
        return f"{100 * m[0]:.1f} [{100 * m[1]:.1f}, {100 * m[2]:.1f}]"
    return f"{m[0]:.3g} [{m[1]:.3g}, {m[2]:.3g}]"


def _fit_time(rows: Sequence[dict]) -> float:
    seen = {}
    for r in rows:
        key = (r["dgp"], r["scale"], r["epsilon"], r["n"], r["seed"], r["estimator"])
        seen[key] = float(r["fit_seconds"])
    return sum(seen.values())


def _sweep_section(rows: Sequence[dict], config: ToyConfig) -> list[str]:
    """Markdown of the sample-size sweep: error per n and the log-log slope per estimator."""
    lines: list[str] = []
    slopes = sweep_slopes(rows)
    agg_s = aggregate(rows, "sweep")
    if agg_s:
        lines += ["## Error against sample size (bias vs variance)", "",
                  "Relative error in % at each n; slope = d log(error) / d log(n) between the "
                  "smallest and the largest n (-0.5: variance-dominated, 0: bias-dominated).", ""]
        for dgp in config.dgps:
            ns = sorted({k[2] for k in agg_s if k[0] == dgp})
            if not ns:
                continue
            s, eps = config.sweep_level(dgp)
            where = f"eps = {eps:g}, s = {s:g}" if dgp == "smoothed" else f"s = {s:g}"
            lines += [f"### {DGP_TITLES[dgp]} ({where})", "",
                      "| estimator | " + " | ".join(f"n = {int(n)}" for n in ns) + " | slope |",
                      "|---|" + "---|" * (len(ns) + 1)]
            for e in config.estimators_for(dgp):
                if (dgp, e, ns[0]) not in agg_s:
                    continue
                cells = [f"{100 * agg_s[(dgp, e, n)][0]:.1f}" if (dgp, e, n) in agg_s else "-"
                         for n in ns]
                sl = slopes.get((dgp, e))
                lines.append(f"| {e} | " + " | ".join(cells) +
                             f" | {'-' if sl is None else f'{sl:.2f}'} |")
            lines.append("")
    return lines


def summary_markdown(rows: Sequence[dict], config: ToyConfig, seconds: float | None,
                     command: str) -> str:
    """The markdown summary: settings, error tables, the claim per DGP, the n-sweep slopes."""
    f = config.fit
    lines = [
        "# softnce toy: parameter estimation under label uncertainty",
        "",
        f"Command: `{command}` ("
        + (f"{seconds:.0f} s wall time, " if seconds is not None else "redrawn from a CSV, ")
        + f"{len(rows)} rows; the distinct fits took {_fit_time(rows):.0f} s).",
        "",
        f"Settings: K = {config.classes}, d = {config.dim}, x ~ N(0, I), eta = s W0 x with "
        f"||W0||_F = 1 (seed {config.w_seed}); n = {config.n} training and {config.n_test} "
        f"held-out points; {config.seeds} seeds (mean and 95% t-interval). NLL and soft-target CE: "
        f"full-batch L-BFGS (float64). InfoNCE variants: Adam from V = 0, batch {f.batch_size}, "
        f"max({f.min_steps}, {f.epochs} epochs) steps, lr {f.lr:g} for the first half and "
        f"{f.lr * f.tail_factor:g} for the second half, whose iterates are averaged; queue "
        f"{f.queue_size}; {f.num_negatives} "
        f"sampled negatives per step (one-hot from the class prior, or Dirichlet("
        f"{f.simplex_concentration:g}) on the simplex); noise q = class prior of the targets.",
        "",
    ]
    agg = aggregate(rows, "grid")
    agg_kl = aggregate(rows, "grid", "kl")
    agg_pk = aggregate(rows, "grid", "pred_kl")
    verdicts = claim_verdicts(rows)
    for dgp in config.dgps:
        names = [e for e in config.estimators_for(dgp)
                 if any(k[0] == dgp and k[1] == e for k in agg)]
        if not names:
            continue
        xs = sorted({k[2] for k in agg if k[0] == dgp})
        xname = "eps" if dgp == "smoothed" else "1/s"
        def mean3(v: tuple) -> str:
            return f"{v[0]:.3g}"

        lines += [f"## {DGP_TITLES[dgp]}"]
        for title, values, fmt in (
            ("Relative error of the centred W in % (mean [95% interval]):", agg, _fmt),
            ("Mean KL(true || estimated) of the label model on held-out x:", agg_kl, mean3),
            ("Mean KL(E[target | x] || softmax(V x)) on held-out x (the prediction):", agg_pk,
             mean3),
        ):
            lines += _md_table(title, values, fmt, dgp, names, xs, xname)
        vs = [v for v in verdicts if v["dgp"] == dgp]
        if vs:
            lines += ["", f"Claim \"NLL's error grows with label uncertainty faster than "
                      f"InfoNCE's\" (growth = error at {xname} = {vs[0]['u_high']:g} minus error "
                      f"at {xname} = {vs[0]['u_low']:g}, in % points; paired over seeds):", "",
                      "| NLL side | InfoNCE side | NLL growth | InfoNCE growth | difference | "
                      "verdict |", "|---|---|---|---|---|---|"]
            for v in vs:
                lines.append(f"| {v['reference']} | {v['estimator']} | "
                             f"{_fmt(v['growth_reference'])} | {_fmt(v['growth_estimator'])} | "
                             f"{_fmt(v['difference'])} | **{v['verdict']}** |")
        lines.append("")
    lines += _sweep_section(rows, config)
    return "\n".join(lines)



def read_runs(path: Path) -> list[dict]:
    """Rows of a ``toy_runs.csv`` with their numeric fields parsed."""
    ints, strs = ("n", "seed", "steps"), ("phase", "dgp", "estimator")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError("no rows")
    return [{k: (r[k] if k in strs else int(r[k]) if k in ints else float(r[k])) for k in FIELDS}
            for r in rows]

