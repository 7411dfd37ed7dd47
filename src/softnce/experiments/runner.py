"""One multi-run runner for the commands that train grids (``softnce study``, ``softnce compare``).

:func:`run_all` takes planned runs ``(cell, loss, seed, TrainConfig)`` and trains each through
:func:`softnce.harness.trainer.train` (the one training loop), in the order given or ``jobs``
at a time in worker processes (``concurrent.futures.ProcessPoolExecutor``, ``spawn`` context).

* Resume: a run whose directory holds a complete ``summary.json`` written for the same
  configuration (``config.json`` equal up to the runtime-only keys) is not trained again; its
  summary is read back. An incomplete run directory (a killed run) is removed and the run is
  trained from the start, so a killed grid rerun gives the same numbers as an uninterrupted one
  (each training is deterministic on CPU given its seed).
* ``jobs > 1``: every run gets ``cpu_threads: 1`` (the workers would otherwise fight for the
  cores); the summaries come back in plan order, so the results do not depend on ``jobs``.
* Output: one ``planned ...`` line with a rough time estimate, then one line per finished run
  (unless ``quiet``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PlannedRun", "completed_summary", "estimate_seconds", "run_all"]


@dataclass
class PlannedRun:
    """One training of a grid: the cell (``{axis: value label}``), loss name, seed, config."""

    cell: dict[str, Any]
    loss: str
    seed: int
    config: Any  # TrainConfig
    label: str = field(default="")

    @property
    def run_dir(self) -> Path:
        return Path(self.config.output_dir)


def _comparable(d: Mapping[str, Any]) -> dict[str, Any]:
    from softnce.harness.config import RUNTIME_ONLY_KEYS

    return {k: v for k, v in json.loads(json.dumps(dict(d), default=str)).items()
            if k not in RUNTIME_ONLY_KEYS}


def completed_summary(run_dir: str | Path, config: Any) -> dict[str, Any] | None:
    """The run's ``summary.json`` if it is complete and was written for ``config``, else None."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not summary.get("complete"):
        return None
    if _comparable(saved) != _comparable(config.to_dict()):
        return None
    return summary


def estimate_seconds(configs: Sequence[Any]) -> float:
    """A rough wall-time guess for training ``configs`` one after another on a CPU.

    Calibrated on small tabular models (digits MLP: ~0.2 s per epoch at batch size 64, plus
    ~0.3 s per run for building data and model); step cost scales with 64 / batch size. Image
    models are far slower; the progress lines refine the guess after each run.
    """
    total = 0.0
    for c in configs:
        epochs = c.epochs if c.max_steps is None else min(c.epochs, max(1, c.max_steps // 20))
        total += 0.3 + 0.2 * epochs * max(0.25, 64 / max(1, c.batch_size))
    return total


def _train_one(config: Any) -> dict[str, Any]:
    """Worker entry point (top level so that it pickles)."""
    from softnce.harness.trainer import train

    return train(config, log=lambda m: None)


def _fmt_metrics(summary: Mapping[str, Any]) -> str:
    m = summary.get("test") or summary.get("final") or {}
    parts = []
    for key, name in (("top1", "top-1"), ("ece", "ECE"), ("nll", "NLL"), ("ece_ts", "ECE(TS)")):
        if isinstance(m.get(key), (int, float)):
            parts.append(f"{name} {m[key]:.4f}")
    return "  ".join(parts)


def run_all(
    runs: Sequence[PlannedRun],
    jobs: int = 1,
    quiet: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train (or reuse) every planned run; returns their summaries in plan order."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1; found {jobs}")
    results: list[dict[str, Any] | None] = [None] * len(runs)
    todo: list[int] = []
    for i, r in enumerate(runs):
        if jobs > 1:
            r.config = r.config.replace(cpu_threads=1)
        done = completed_summary(r.run_dir, r.config)
        if done is not None:
            results[i] = done
        else:
            todo.append(i)
    est = estimate_seconds([runs[i].config for i in todo]) / min(jobs, max(1, len(todo)))
    echo(f"planned {len(runs)} run(s): {len(runs) - len(todo)} already complete, "
         f"{len(todo)} to train with {jobs} job(s); estimate ~{est:.0f} s (rough)")
    if not todo:
        return results  # type: ignore[return-value]
    for i in todo:  # a killed run: start it over (deterministic, so nothing is lost)
        if runs[i].run_dir.exists():
            shutil.rmtree(runs[i].run_dir)

    t_start = time.perf_counter()
    finished = 0

    def report(i: int, seconds: float) -> None:
        nonlocal finished
        finished += 1
        if quiet:
            return
        r = runs[i]
        elapsed = time.perf_counter() - t_start
        left = elapsed / finished * (len(todo) - finished)
        echo(f"[{finished}/{len(todo)}] {r.label or r.run_dir} {r.loss} seed {r.seed}: "
             f"{_fmt_metrics(results[i] or {})}  ({seconds:.1f} s; ~{left:.0f} s left)")

    if jobs == 1:
        for i in todo:
            t0 = time.perf_counter()
            results[i] = _train_one(runs[i].config)
            report(i, time.perf_counter() - t0)
        return results  # type: ignore[return-value]

    import multiprocessing as mp
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
        started = {pool.submit(_train_one, runs[i].config): (i, time.perf_counter())
                   for i in todo}
        pending = set(started)
        while pending:
            done_set, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in done_set:
                i, t0 = started[fut]
                exc = fut.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                results[i] = fut.result()
                report(i, time.perf_counter() - t0)
    return results  # type: ignore[return-value]
