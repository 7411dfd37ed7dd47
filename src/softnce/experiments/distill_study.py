r"""``softnce study distill``: does soft-target InfoNCE distil as well as classic KD?

Per data set (``mnist1d`` by default, ``--dataset digits``) and seed, a larger teacher is trained
once (:data:`TEACHERS`), then smaller students (:data:`STUDENTS`) on the same data and split:

* ``nll`` - no teacher (hard labels);
* ``soft-ce`` on teacher targets - classic knowledge distillation;
* ``soft-infonce`` on teacher targets - contrastive distillation (batch negatives),

the last two at ``kd_temperature`` in {1, 2, 4} x ``kd_alpha`` in {0.5, 1} (0.5: half teacher,
half one-hot labels). Students train at the harness's loss temperature 1 (``kd_temperature``
only softens the teacher; see :mod:`softnce.harness.distill`), without ``kd_t2_scaling``.

Every run goes through :func:`softnce.experiments.runner.run_all` (teachers first, then the
students, reusing complete runs). Reported per cell: student test top-1, ECE, NLL raw and after
temperature scaling fitted on the calibration split (``*_ts``), and ``kl`` = mean
KL(p_teacher || p_student) on the test split from the two runs' ``test_logits.pt`` (both at their
run temperature; ``kl_ts`` with each run's fitted temperature), with 95% Student-t intervals over
seeds and paired per-seed differences of soft-infonce against soft-ce (classic KD) at the same
(T, alpha), and of each KD cell against ``nll``. Verdicts come from
:func:`softnce.metrics.stats.verdict`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["STUDENTS", "TEACHERS", "kl_teacher_student", "plan_distill", "run_distill"]

#: Teacher config per data set (larger model, more epochs).
TEACHERS: dict[str, dict[str, Any]] = {
    "mnist1d": {"model": "cnn", "model_options": {"channels": [64, 128]}, "epochs": 20,
                "batch_size": 128, "lr": 3e-3},
    "digits": {"model": "mlp", "model_options": {"hidden": [512, 512]}, "epochs": 20},
}
#: Student config per data set (smaller model).
STUDENTS: dict[str, dict[str, Any]] = {
    "mnist1d": {"model": "mlp", "model_options": {"hidden": [64]}, "epochs": 10,
                "batch_size": 128, "lr": 3e-3},
    "digits": {"model": "mlp", "model_options": {"hidden": [32]}, "epochs": 10},
}
TEMPERATURES = (1.0, 2.0, 4.0)
ALPHAS = (0.5, 1.0)
SEEDS = 3
QUICK = {"seeds": 2, "teacher_epochs": 2, "max_steps": 8, "temperatures": (2.0,),
         "alphas": (1.0,), "dataset": "digits"}
METRICS = ("top1", "ece", "nll", "top1_ts", "ece_ts", "nll_ts", "kl", "kl_ts")
REFERENCE = "soft-ce"


def kl_teacher_student(teacher: Mapping[str, Any], student: Mapping[str, Any],
                       scaled: bool = False) -> float:
    """Mean KL(p_t || p_s) over the test split from two ``test_logits.pt`` dicts (each at its
    run temperature, times its fitted ``temperature_ts`` when ``scaled``)."""
    if not torch.equal(teacher["labels"], student["labels"]):
        raise ValueError("teacher and student test_logits.pt are not over the same test rows")

    def logp(d: Mapping[str, Any]) -> torch.Tensor:
        t = float(d["temperature"]) * (float(d["temperature_ts"]) if scaled else 1.0)
        return F.log_softmax(d["logits"].double() / t, dim=1)

    lt, ls = logp(teacher), logp(student)
    return float((lt.exp() * (lt - ls)).sum(1).mean())


def _label(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def plan_distill(dataset: str | None = None, seeds: Sequence[int] | None = None,
                 epochs: int | None = None, output_dir: str | Path | None = None,
                 quick: bool = False, overrides: Mapping[str, Any] | None = None,
                 losses: Sequence[str] | None = None) -> dict[str, Any]:
    """Plan the teacher and student runs (nothing trains)."""
    from softnce.experiments.runner import PlannedRun
    from softnce.experiments.study import DEFAULT_ROOT, StudyError
    from softnce.harness.config import load_config

    dataset = dataset or (QUICK["dataset"] if quick else "mnist1d")
    if dataset not in TEACHERS:
        raise StudyError(f"study distill runs on {', '.join(TEACHERS)}; found --dataset "
                         f"{dataset!r}")
    if losses is not None:
        raise StudyError("study distill has fixed configurations (nll, soft-ce and "
                         "soft-infonce on teacher targets); drop --losses")
    seeds = list(seeds) if seeds else list(range(QUICK["seeds"] if quick else SEEDS))
    temps = QUICK["temperatures"] if quick else TEMPERATURES
    alphas = QUICK["alphas"] if quick else ALPHAS
    out = Path(output_dir or Path(DEFAULT_ROOT) / "distill").resolve()
    ov = dict(overrides or {})
    common = {"dataset": dataset, "quiet": True, "cpu_threads": 1, **ov}
    teachers, students = [], []
    for seed in seeds:
        t_over = {**TEACHERS[dataset], "loss": "nll", "seed": seed}
        if quick:
            t_over["epochs"] = QUICK["teacher_epochs"]
        tdir = out / "runs" / "teacher" / f"seed{seed}"
        tcfg = load_config(**{**common, **t_over, "output_dir": str(tdir)})
        teachers.append(PlannedRun({"role": "teacher"}, "nll", seed, tcfg, label="teacher"))
        s_over = dict(STUDENTS[dataset], seed=seed)
        if epochs is not None:
            s_over["epochs"] = epochs
        if quick:
            s_over["max_steps"] = QUICK["max_steps"]
            s_over["epochs"] = 1
        cells: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("nll", {"loss": "nll"}, {"kd_temperature": "-", "kd_alpha": "-"})]
        for loss in ("soft-ce", "soft-infonce"):
            for t in temps:
                for a in alphas:
                    cells.append((f"{loss}_T{_label(t)}_a{_label(a)}",
                                  {"loss": loss, "teacher": str(tdir), "kd_temperature": t,
                                   "kd_alpha": a},
                                  {"kd_temperature": _label(t), "kd_alpha": _label(a)}))
        for name, fields, cell in cells:
            cfg = load_config(**{**common, **s_over, **fields,
                                 "output_dir": str(out / "runs" / name / f"seed{seed}")})
            students.append(PlannedRun(dict(cell), fields["loss"], seed, cfg, label=name))
    return {"kind": "distill", "dataset": dataset, "seeds": seeds, "out": out,
            "teachers": teachers, "students": students, "temperatures": list(temps),
            "alphas": list(alphas), "quick": quick, "overrides": ov}


def _rows(plan: Mapping[str, Any], t_sum: Sequence[Mapping], s_sum: Sequence[Mapping]
          ) -> list[dict[str, Any]]:
    from softnce.harness.runs import safe_load

    t_logits = {r.seed: safe_load(r.run_dir / "test_logits.pt") for r in plan["teachers"]}
    t_top1 = {r.seed: s["test"]["top1"] for r, s in zip(plan["teachers"], t_sum)}
    rows = []
    for r, s in zip(plan["students"], s_sum):
        test = s.get("test") or {}
        m = {k: float(test[k]) for k in METRICS if isinstance(test.get(k), (int, float))}
        sl = safe_load(r.run_dir / "test_logits.pt")
        m["kl"] = kl_teacher_student(t_logits[r.seed], sl)
        m["kl_ts"] = kl_teacher_student(t_logits[r.seed], sl, scaled=True)
        rows.append({"cell": r.label, "loss": r.loss, "seed": r.seed, **r.cell, "metrics": m,
                     "teacher_top1": t_top1[r.seed]})
    return rows


def _aggregate(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    from softnce.experiments.study import verdict_sentences
    from softnce.metrics.stats import paired_difference, summarize

    cells = list(dict.fromkeys(r["cell"] for r in rows))
    by = {c: {r["seed"]: r["metrics"] for r in rows if r["cell"] == c} for c in cells}
    stats = {c: {m: summarize([v.get(m, float("nan")) for v in by[c].values()])
                 for m in METRICS} for c in cells}

    def paired(a: str, b: str) -> dict[str, Any]:
        seeds = sorted(set(by[a]) & set(by[b]))
        return {m: paired_difference([by[a][s].get(m, float("nan")) for s in seeds],
                                     [by[b][s].get(m, float("nan")) for s in seeds])
                for m in METRICS}

    contrasts, verdicts = [], []
    for c in cells:
        if c.startswith("soft-infonce_"):
            ref = "soft-ce_" + c[len("soft-infonce_"):]
            d = paired(c, ref)
            contrasts.append({"a": c, "b": ref, "diff": d})
            where = c[len("soft-infonce_"):].replace("_", ", ").replace("a", "alpha=")
            where = f"T={where[1:]}"
            verdicts += verdict_sentences("soft-infonce KD", "classic KD (soft-ce)", where, d,
                                          ("top1", "kl", "ece", "ece_ts", "nll", "nll_ts"))
        if c != "nll" and "nll" in by:
            contrasts.append({"a": c, "b": "nll", "diff": paired(c, "nll")})
    return {"cells": stats, "contrasts": contrasts, "verdicts": verdicts}


def _fmt(s: Mapping[str, float]) -> str:
    if s.get("mean") is None or s["mean"] != s["mean"]:
        return "-"
    if s.get("half_width") is None or s["half_width"] != s["half_width"]:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} ± {s['half_width']:.4f}"


def _plot(out: Path, plan: Mapping[str, Any], agg: Mapping[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    temps = plan["temperatures"]
    fig, axs = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axs, ("top1", "kl", "ece")):
        for loss, color in (("soft-ce", "C0"), ("soft-infonce", "C1")):
            for a, ls in zip(plan["alphas"], ("--", "-")):
                st = [agg["cells"][f"{loss}_T{_label(t)}_a{_label(a)}"][metric] for t in temps]
                mean = [s["mean"] for s in st]
                hw = [0.0 if s["half_width"] != s["half_width"] else s["half_width"] for s in st]
                ax.errorbar(temps, mean, yerr=hw, color=color, ls=ls, marker="o", capsize=3,
                            label=f"{loss} alpha={_label(a)}")
        if "nll" in agg["cells"]:
            ax.axhline(agg["cells"]["nll"][metric]["mean"], color="gray", ls=":", label="nll")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("kd_temperature")
        ax.set_title({"top1": "student test top-1", "kl": "KL(teacher || student), test",
                      "ece": "student test ECE (raw)"}[metric])
    axs[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "distill.png", dpi=110)
    plt.close(fig)
    return ["distill.png"]


def run_distill(plan: Mapping[str, Any], jobs: int = 1, quiet: bool = False,
                overwrite: bool = False, command: str | None = None,
                echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or reuse) the teachers, then the students; write results.csv, summary.json,
    report.md and distill.png."""
    from softnce.experiments.runner import run_all
    from softnce.experiments.study import _identity, _no_nan, _prepare_output, check_data

    out = plan["out"]
    runs = [*plan["teachers"], *plan["students"]]
    check_data(runs[:1])
    _prepare_output(out, _identity("distill", [], runs), overwrite)
    t0 = time.perf_counter()
    t_sum = run_all(plan["teachers"], jobs=jobs, quiet=quiet, echo=echo)
    s_sum = run_all(plan["students"], jobs=jobs, quiet=quiet, echo=echo)
    wall = time.perf_counter() - t0
    rows = _rows(plan, t_sum, s_sum)
    agg = _aggregate(rows)
    teacher_top1 = [s["test"]["top1"] for s in t_sum]
    settings = {"study": "distill", "command": command or "softnce study distill",
                "dataset": plan["dataset"], "seeds": plan["seeds"], "split": "test",
                "teacher": TEACHERS[plan["dataset"]], "student": STUDENTS[plan["dataset"]],
                "kd_temperature": plan["temperatures"], "kd_alpha": plan["alphas"],
                "student_loss_temperature": 1.0, "quick": plan["quick"],
                "overrides": plan["overrides"]}
    figures = _plot(out, plan, agg)
    summary = {"settings": settings, "wall_time_s": wall, "teacher_test_top1": teacher_top1,
               "statement": "95% Student-t intervals over seeds (ddof=1); paired per-seed "
                            "differences of soft-infonce KD against classic KD (soft-ce) at the "
                            "same (T, alpha) and of every KD cell against nll",
               "cells": agg["cells"], "contrasts": agg["contrasts"],
               "verdicts": agg["verdicts"], "figures": figures,
               "runs": [{k: r[k] for k in ("cell", "loss", "seed", "metrics")} for r in rows]}
    (out / "summary.json").write_text(json.dumps(_no_nan(summary), indent=2, default=str) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["cell", "loss", "kd_temperature", "kd_alpha", "seed", *METRICS])
    for r in rows:
        w.writerow([r["cell"], r["loss"], r["kd_temperature"], r["kd_alpha"], r["seed"],
                    *(r["metrics"].get(m, "") for m in METRICS)])
    (out / "results.csv").write_text(buf.getvalue())
    lines = [f"# Study distill on {plan['dataset']}", "",
             f"Command: `{settings['command']}`; seeds {plan['seeds']}; held-out test split; "
             f"{summary['statement']}. Wall time {wall:.0f} s.", "",
             f"Teacher: {TEACHERS[plan['dataset']]} (nll), test top-1 per seed "
             f"{', '.join(f'{v:.4f}' for v in teacher_top1)}. Students: "
             f"{STUDENTS[plan['dataset']]}, loss temperature 1, kd_t2_scaling off.", "",
             "| cell | " + " | ".join(METRICS) + " |",
             "|---" * (len(METRICS) + 1) + "|"]
    for c, st in agg["cells"].items():
        lines.append(f"| {c} | " + " | ".join(_fmt(st[m]) for m in METRICS) + " |")
    lines += ["", "## Verdicts (soft-infonce KD vs classic KD)", ""]
    lines += [f"- {v['sentence']}" for v in agg["verdicts"]]
    if figures:
        lines += ["", f"![distill]({figures[0]})"]
    if plan["quick"]:
        lines += ["", "Quick mode (1 epoch / 8 steps): a smoke test, not evidence."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    if not quiet:
        for v in agg["verdicts"]:
            if v["metric"] in ("top1", "kl"):
                echo(v["sentence"])
    echo(f"study distill: {len(runs)} run(s), {wall:.1f} s; report in {out}/report.md")
    return summary
