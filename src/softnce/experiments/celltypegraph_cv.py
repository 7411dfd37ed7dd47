"""The CellTypeGraph cross-validation protocol: train every (loss config, fold) through the
harness (:func:`run_cv`, ``softnce celltypegraph cv``) and summarise finished fold runs with the
benchmark's per-graph scores (:func:`summarize_cv`, ``softnce celltypegraph cv-summary``).

Aggregation over folds and over test graphs is :func:`softnce.metrics.stats.summarize`: mean,
sample standard deviation (``ddof=1``) and the two-sided 95% Student-t interval of the mean
(``ci_low``, ``ci_high``; ``nan`` with fewer than two values). NaN and infinite values (e.g. the
class-average of a graph whose only class is the excluded one) are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softnce.data.celltypegraph import (
    ROW_ID_STRIDE,
    WHERE_TO_GET,
    graph_scores,
    load_stack_list,
    read_ovule,
    stack_list_for_root,
    stack_path,
    stratified_folds,
)
from softnce.metrics.stats import summarize

__all__ = [
    "CV_COLUMNS", "CV_DEFAULT_LOSSES", "CV_MODELS", "CVError", "STD_DESCRIPTION",
    "INTERVAL_DESCRIPTION", "cv_loss_configs", "cv_markdown", "format_cell", "run_cv",
    "summarize_cv",
]

#: what ``std`` means in every summary (written into ``cv_summary.json``).
STD_DESCRIPTION = "sample std over folds (ddof=1), from softnce.metrics.stats.summarize"
#: what ``ci_low``/``ci_high`` mean (written into ``cv_summary.json``).
INTERVAL_DESCRIPTION = ("two-sided 95% Student-t interval of the mean over folds (t quantile "
                        "with n - 1 degrees of freedom), from softnce.metrics.stats.summarize")


def _over(values: Sequence[float]) -> dict[str, float]:
    """``{"n", "mean", "std" (ddof=1), "ci_low", "ci_high"}`` (95% t-interval) of the finite
    ``values``."""
    s = summarize([float(v) for v in values if math.isfinite(float(v))])
    return {k: s[k] for k in ("n", "mean", "std", "ci_low", "ci_high")}


def _score_run(rd: Path) -> tuple[dict[str, Any], list[float], list[float]]:
    """One finished fold run: its row of the summary and the per-graph top-1 and
    class-average accuracies of its test graphs."""
    import json

    files = {k: rd / k for k in ("config.json", "summary.json", "val_logits.pt")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ValueError(f"{rd}: not a finished run directory; missing {missing}")
    cfg = json.loads(files["config.json"].read_text())
    if cfg.get("dataset") != "celltypegraph":
        raise ValueError(f"{rd}: dataset is {cfg.get('dataset')!r}, not 'celltypegraph'")
    summary = json.loads(files["summary.json"].read_text())
    saved = torch.load(files["val_logits.pt"], weights_only=True)
    opts = dict(cfg.get("dataset_options") or {})
    root = Path(cfg["data_path"])
    stacks = (load_stack_list(opts["stack_list"]) if opts.get("stack_list")
              else stack_list_for_root(root))
    split = stratified_folds(stacks, opts.get("num_folds", 5), opts.get("fold_seed", 0))
    test = split[opts.get("fold", 0)]["test"]
    list_pos = {s: i for i, s in enumerate(stacks)}
    ys, gids, keys = [], [], []
    for k, (stage, stack) in enumerate(test):
        g = read_ovule(stack_path(root, stage, stack))
        keep = g.y >= 0
        ys.append(torch.from_numpy(g.y[keep]))
        gids.append(torch.full((int(keep.sum()),), k, dtype=torch.int64))
        keys.append(list_pos[(stage, stack)] * ROW_ID_STRIDE
                    + torch.from_numpy(np.flatnonzero(keep)).long())
    y, gid, key = torch.cat(ys), torch.cat(gids), torch.cat(keys)
    logits, labels = saved["logits"], saved["labels"]
    if saved.get("row_ids") is not None:  # put the rows into the canonical order by key
        rid = saved["row_ids"].long()
        src, dst = torch.sort(rid), torch.sort(key)
        if rid.shape != key.shape or not torch.equal(src.values, dst.values):
            raise ValueError(
                f"{rd}: val_logits.pt row_ids do not match the annotated nodes of fold "
                f"{opts.get('fold', 0)} under {root} (did the data change?)"
            )
        perm = torch.empty_like(dst.indices)
        perm[dst.indices] = src.indices
        logits, labels = logits[perm], labels[perm]
    if labels.shape != y.shape or not torch.equal(labels.long(), y):
        raise ValueError(
            f"{rd}: val_logits.pt rows do not match the annotated nodes of fold "
            f"{opts.get('fold', 0)} under {root} (was the run multi-process, or the data "
            f"changed?)"
        )
    sc = graph_scores(logits.argmax(1), y, gid)
    final = summary.get("final", {})
    fold = {
        "run": str(rd),
        "fold": opts.get("fold", 0),
        "loss": cfg.get("loss"),
        "model": summary.get("model") or cfg.get("model"),
        "graphs": len(test),
        **{m: final.get(m, float("nan")) for m in ("top1", "ece", "nll", "brier")},
        "graph_top1": _over(sc["top1"].tolist())["mean"],
        "graph_class_avg": _over(sc["class_avg"].tolist())["mean"],
    }
    return fold, sc["top1"].tolist(), sc["class_avg"].tolist()


def summarize_cv(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Benchmark scores of finished ``softnce train`` runs on ``celltypegraph`` (one per fold).

    Each run directory must hold ``config.json``, ``summary.json`` and ``val_logits.pt`` (written
    by the harness). The fold's test graphs are re-read from the run's ``data_path`` to map rows
    to graphs: by the saved ``row_ids`` (``graph_id * 2**32 + node index``, see
    :func:`softnce.data.celltypegraph.val_row_ids`) when present, so the row order (lost under multi-process evaluation)
    does not matter; files without ``row_ids`` (older runs) must hold the rows in validation
    order. The stored labels must equal the re-read ones, so a mismatched data path is
    detected. Returns
    ``{"folds": [...], "over_folds": {metric: stats}, "over_graphs": {...}}`` with ``stats`` =
    ``{"n", "mean", "std", "ci_low", "ci_high"}`` (:func:`softnce.metrics.stats.summarize`:
    ``std`` with ``ddof=1``, 95% Student-t interval of the mean): per fold the harness's
    node-pooled ``top1``/``ece``/``nll``/``brier`` (final evaluation) and the benchmark's
    per-graph ``graph_top1``/``graph_class_avg`` averaged over the fold's graphs; ``over_folds``
    = over folds; ``over_graphs`` = over all test graphs of all folds (the aggregation of the
    benchmark's example scripts and leaderboard).
    """
    if not run_dirs:
        raise ValueError("run_dirs must name at least one run directory")
    folds, all_top1, all_cavg = [], [], []
    for rd in run_dirs:
        fold, top1, cavg = _score_run(Path(rd))
        folds.append(fold)
        all_top1 += top1
        all_cavg += cavg
    metrics = ("top1", "ece", "nll", "brier", "graph_top1", "graph_class_avg")
    return {
        "folds": folds,
        "over_folds": {m: _over([f[m] for f in folds]) for m in metrics},
        "over_graphs": {"graph_top1": _over(all_top1), "graph_class_avg": _over(all_cavg)},
    }


CV_MODELS = ("gcn", "deepergcn")
CV_DEFAULT_LOSSES = ("nll", "infonce", "soft-ce", "soft-infonce")
#: columns of the ``cv`` table: (key in ``summarize_cv(...)["over_folds"]``, title, percent)
CV_COLUMNS = (("graph_top1", "top-1 (%)", True),
              ("graph_class_avg", "class-avg excl. 7 (%)", True),
              ("ece", "ECE (15 bins)", False), ("nll", "NLL", False))


class CVError(ValueError):
    """Bad input to ``softnce celltypegraph cv`` (printed as ``error: ...``, exit code 2)."""


def cv_loss_configs(config: str | None = None, losses: Sequence[str] | None = None,
                    model: str | None = None) -> list[tuple[str, Path]]:
    """``[(name, config file)]`` of the ``cv`` command.

    ``config`` is a loss config (it sets ``loss:``; run as is, named by its file stem) or a base
    config such as ``celltypegraph/gcn`` (no ``loss:``), expanded to its siblings
    ``{stem}-{loss}.yaml`` for ``losses`` (default nll, infonce, soft-ce, soft-infonce). Without
    ``config`` the base is ``configs/celltypegraph/{model}.yaml`` (``model`` default gcn).
    """
    from softnce.harness.config import find_preset, load_yaml

    if config is not None and model is not None:
        raise CVError("give either --config or --model, not both")
    if model is not None and model not in CV_MODELS:
        raise CVError(f"--model must be one of {', '.join(CV_MODELS)}; found {model!r}")
    path = find_preset(config if config is not None else f"celltypegraph/{model or 'gcn'}")
    path = path.resolve()
    if "loss" in load_yaml(path):
        if losses:
            raise CVError(f"{path} is a loss config (it sets loss:); --losses needs a base "
                          f"config such as celltypegraph/gcn")
        return [(path.stem, path)]
    names = list(losses) if losses else list(CV_DEFAULT_LOSSES)
    if len(set(names)) != len(names):
        raise CVError(f"--losses lists a loss more than once: {names}")
    avail = sorted(q.stem[len(path.stem) + 1:] for q in path.parent.glob(f"{path.stem}-*.yaml"))
    out = []
    for name in names:
        cand = path.parent / f"{path.stem}-{name}.yaml"
        if not cand.is_file():
            raise CVError(f"unknown loss {name!r} for {path.name}: no {cand.name} next to it; "
                          f"available: {', '.join(avail) or 'none'}")
        out.append((f"{path.stem}-{name}", cand))
    return out


def _run_is_finished(cfg: Any) -> bool:
    """A complete run of exactly ``cfg`` (same config.json) with its val_logits.pt."""
    import json

    from softnce.harness.trainer import _config_diff

    out = Path(cfg.output_dir)
    try:
        summary = json.loads((out / "summary.json").read_text())
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (bool(summary.get("complete")) and (out / "val_logits.pt").is_file()
            and not _config_diff(saved, cfg.to_dict()))


def _plan(entries: Sequence[tuple[str, Path]], folds: Sequence[int], overrides: Sequence[str],
          fields: dict[str, Any], out: Path) -> list[tuple[str, Path, int, Any]]:
    """``[(name, config file, fold, resolved config)]``: every config is resolved and validated
    before anything is trained, so bad input fails at once."""
    from softnce.harness.config import load_config

    plan = []
    for name, path in entries:
        base = load_config(str(path), list(overrides), **fields)
        if base.dataset != "celltypegraph":
            raise CVError(f"{path}: dataset is {base.dataset!r}, not 'celltypegraph'")
        num_folds = (base.dataset_options or {}).get("num_folds", 5)
        bad = [f for f in folds if not (isinstance(num_folds, int) and 0 <= f < num_folds)]
        if bad:
            raise CVError(f"fold index {bad[0]} out of range for {name} "
                          f"(num_folds {num_folds}: folds 0..{num_folds - 1})")
        for k in folds:
            cfg = load_config(str(path), [*overrides, f"dataset_options.fold={k}"],
                              output_dir=str(out / name / f"fold{k}"), **fields)
            cfg.validate()
            plan.append((name, path, k, cfg))
    return plan


def run_cv(
    data_path: str | Path,
    output_dir: str | Path,
    config: str | None = None,
    losses: Sequence[str] | None = None,
    model: str | None = None,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    epochs: int | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    log: Any = print,
    command: str | None = None,
) -> dict[str, Any]:
    """The benchmark's cross-validation protocol in one call.

    For every loss config (:func:`cv_loss_configs`) and fold, resolve the run's config with
    :func:`softnce.harness.config.load_config` (``overrides`` are ``--set KEY=VALUE`` items; the fold is
    set last as ``dataset_options.fold``), train it with :func:`softnce.harness.trainer.train` into
    ``output_dir/<model>-<loss>/fold<k>``, then :func:`summarize_cv` the fold runs of each loss. With
    ``resume`` a finished run of the same config is skipped and an interrupted one resumes from
    its checkpoint (the harness's ``--resume``). Writes ``cv_summary.json`` and ``cv_report.md``
    under ``output_dir`` and returns the summary dict. Raises :class:`CVError`,
    :class:`~softnce.harness.config.ConfigError` or :class:`~softnce.data.DataError` on bad input.
    """
    import json
    import time

    from softnce.harness.trainer import train

    root = Path(data_path)
    if not root.is_dir():
        raise CVError(f"--data-path {str(root)!r} is not a directory. " + WHERE_TO_GET)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise CVError(f"--output-dir {str(out)!r} is a file")
    entries = cv_loss_configs(config, losses, model)
    # without resume every fold starts over (explicitly: the harness refuses to reuse a run dir)
    fields = {"data_path": str(root), "epochs": epochs, "seed": seed, "resume": resume,
              "overwrite": not resume, "quiet": True}
    plan = _plan(entries, folds, overrides, fields, out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    for i, (name, _path, k, cfg) in enumerate(plan, 1):
        if resume and _run_is_finished(cfg):
            log(f"[{i}/{len(plan)}] {name} fold {k}: finished, skipped ({cfg.output_dir})")
            continue
        t0 = time.perf_counter()
        s = train(cfg, log=lambda m: None)
        f = s.get("final", {})
        log(f"[{i}/{len(plan)}] {name} fold {k}: top-1 {f.get('top1', float('nan')):.4f}  "
            f"ECE {f.get('ece', float('nan')):.4f}  NLL {f.get('nll', float('nan')):.4f}  "
            f"({time.perf_counter() - t0:.1f} s)")
    results: dict[str, Any] = {}
    for name, path in entries:
        dirs = [str(out / name / f"fold{k}") for k in folds]
        res = summarize_cv(dirs)
        results[name] = {"config": str(path), "runs": dirs, **res}
    summary = {
        "command": command, "data_path": str(root), "folds": list(folds),
        "overrides": list(overrides), "epochs": epochs, "seed": seed,
        "std": STD_DESCRIPTION,
        "interval": INTERVAL_DESCRIPTION,
        "metrics": {k: t for k, t, _ in CV_COLUMNS},
        "losses": results,
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "cv_report.md").write_text(cv_markdown(summary))
    return summary


def format_cell(stats: dict[str, float], pct: bool, interval: bool = True) -> str:
    """``mean ± std [ci_low, ci_high]`` (in % when ``pct``); ``n/a`` without a finite mean."""
    m, sd, lo, hi = (stats.get(k, float("nan")) for k in ("mean", "std", "ci_low", "ci_high"))
    if not np.isfinite(m):
        return "n/a"
    f = 100.0 if pct else 1.0
    d = 2 if pct else 4
    text = f"{f * m:.{d}f} ± {f * sd:.{d}f}"
    return text + f" [{f * lo:.{d}f}, {f * hi:.{d}f}]" if interval else text


def _value(v: float, pct: bool) -> str:
    return "n/a" if not np.isfinite(v) else f"{100 * v:.2f}" if pct else f"{v:.4f}"


def cv_markdown(summary: dict[str, Any]) -> str:
    """``cv_report.md`` of a :func:`run_cv` summary."""
    head = ["loss"] + [t for _, t, _ in CV_COLUMNS]
    lines = [
        "# CellTypeGraph cross-validation", "",
        f"data: `{summary['data_path']}`; folds {summary['folds']}; "
        + (f"command: `{summary['command']}`" if summary.get("command") else ""), "",
        "Mean ± std over folds [95% interval]: std is the sample standard deviation (ddof=1), "
        "the interval the two-sided 95% Student-t interval of the mean over folds "
        "(softnce.metrics.stats.summarize). top-1 and class-average accuracy (class 7, "
        "embryo sac, excluded) are the benchmark's per-graph scores averaged over each fold's "
        "test graphs; ECE and NLL are node-pooled per fold (final evaluation).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for name, r in summary["losses"].items():
        cells = [format_cell(r["over_folds"][k], pct) for k, _, pct in CV_COLUMNS]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines += ["", "## Per fold", "", "| loss | fold | graphs | " + " | ".join(
        t for _, t, _ in CV_COLUMNS) + " | run |", "|" + "---|" * (len(CV_COLUMNS) + 4)]
    for name, r in summary["losses"].items():
        for f in r["folds"]:
            cells = [_value(f[k], pct) for k, _, pct in CV_COLUMNS]
            lines.append(f"| {name} | {f['fold']} | {f['graphs']} | " + " | ".join(cells)
                         + f" | `{f['run']}` |")
    return "\n".join(lines) + "\n"
