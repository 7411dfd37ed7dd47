"""The ``softnce toy`` grid (:class:`ToyConfig`) and its run: every (DGP, level, seed) problem
fitted by every applicable estimator, plus the sample-size sweep (:func:`run_experiment`)."""

from __future__ import annotations

import csv
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from softnce.experiments.toy.estimators import APPLICABLE, ESTIMATORS, FitSettings, fit_many
from softnce.experiments.toy.generators import (
    DGPS,
    _check_dgp,
    _check_positive_int,
    _generator,
    conditional_kl,
    expected_target,
    generate,
    make_true_weights,
    prediction_kl,
    relative_error,
    uncertainty,
)

__all__ = ["FIELDS", "ToyConfig", "quick_config", "run_experiment"]


@dataclass
class ToyConfig:
    """The grid. ``scales`` are the ``s`` of categorical/CC (uncertainty ``1/s``); ``epsilons``
    the smoothing of ``smoothed`` at ``smoothing_scale``; the sample-size sweep runs ``sweep_n``
    at ``sweep_scale`` (categorical, CC) and ``sweep_epsilon`` (smoothed)."""

    dgps: tuple[str, ...] = DGPS
    estimators: tuple[str, ...] | None = None  # None: every applicable one
    seeds: int = 5
    n: int = 20_000
    n_test: int = 4096
    classes: int = 3
    dim: int = 2
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    smoothing_scale: float = 4.0
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)
    sweep_n: tuple[int, ...] = (1250, 2500, 5000, 10_000, 20_000)
    sweep_scale: float = 4.0
    sweep_epsilon: float = 0.2
    w_seed: int = 0
    fit: FitSettings = field(default_factory=FitSettings)

    def validate(self) -> ToyConfig:
        for d in self.dgps:
            _check_dgp(d)
        if not self.dgps:
            raise ValueError("dgps must name at least one data-generating process")
        if self.estimators is not None:
            for e in self.estimators:
                if e not in ESTIMATORS:
                    raise ValueError(f"estimators must be in {tuple(ESTIMATORS)}; found {e!r}")
        _check_positive_int("seeds", self.seeds, 2)
        _check_positive_int("n", self.n, 2)
        _check_positive_int("n_test", self.n_test)
        _check_positive_int("classes", self.classes, 2)
        _check_positive_int("dim", self.dim)
        for name in ("scales", "epsilons", "sweep_n"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for s in (*self.scales, self.smoothing_scale, self.sweep_scale):
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"scales must be positive and finite; found {s!r}")
        for e in (*self.epsilons, self.sweep_epsilon):
            if not 0 <= e < 1:
                raise ValueError(f"epsilons must lie in [0, 1); found {e!r}")
        for m in self.sweep_n:
            _check_positive_int("sweep_n entries", m, 2)
        self.fit.validate()
        return self

    def estimators_for(self, dgp: str) -> tuple[str, ...]:
        names = APPLICABLE[dgp]
        return names if self.estimators is None else tuple(e for e in names
                                                           if e in self.estimators)

    def levels(self, dgp: str) -> list[tuple[float, float]]:
        """(s, eps) pairs of the uncertainty axis of ``dgp``."""
        if dgp == "smoothed":
            return [(self.smoothing_scale, e) for e in self.epsilons]
        return [(s, 0.0) for s in self.scales]

    def sweep_level(self, dgp: str) -> tuple[float, float]:
        return (self.smoothing_scale, self.sweep_epsilon) if dgp == "smoothed" \
            else (self.sweep_scale, 0.0)


def quick_config() -> ToyConfig:
    """The ``--quick`` grid: a smoke test of the whole pipeline, not a measurement."""
    return ToyConfig(seeds=2, n=1500, n_test=512, scales=(1.0, 4.0), epsilons=(0.0, 0.2),
                     sweep_n=(500, 1500),
                     fit=FitSettings(epochs=3, min_steps=30, batch_size=128, queue_size=256,
                                     num_negatives=64, lbfgs_max_iter=100))



@dataclass
class _Truth:
    x: torch.Tensor
    eta: torch.Tensor
    mean_target: torch.Tensor


FIELDS = ("phase", "dgp", "estimator", "scale", "epsilon", "uncertainty", "n", "seed", "rel_err",
          "kl", "pred_kl", "steps", "fit_seconds")


def _print(msg: str) -> None:
    print(msg, flush=True)


def run_experiment(config: ToyConfig, out: Path | None = None,
                   log: Callable[[str], None] = _print) -> list[dict]:
    """Run the grid and the sample-size sweep; returns one dict per fit (and writes
    ``toy_runs.csv`` into ``out`` when given).

    Work is grouped by (phase, DGP, n): all (level, seed) problems of a group are fitted together
    (:func:`fit_many`); ``fit_seconds`` is the group's time for the estimator divided by its
    number of problems. A sweep point that is also a grid point reuses the grid's fits.
    """
    config.validate()
    w0 = make_true_weights(config.classes, config.dim, config.w_seed)
    rows: list[dict] = []
    cache: dict[tuple, dict] = {}
    groups: list[tuple[str, str, int, list[tuple[float, float]]]] = []
    for dgp in config.dgps:
        groups.append(("grid", dgp, config.n, config.levels(dgp)))
    for dgp in config.dgps:
        for m in config.sweep_n:
            groups.append(("sweep", dgp, m, [config.sweep_level(dgp)]))
    t_start = time.perf_counter()
    truths: dict[tuple, _Truth] = {}
    for gi, (phase, dgp, n, levels) in enumerate(groups):
        names = config.estimators_for(dgp)
        problems = [(scale, eps, seed) for scale, eps in levels for seed in range(config.seeds)]
        t_group = time.perf_counter()
        todo = [pr for pr in problems
                if any((dgp, *pr[:2], n, pr[2], e) not in cache for e in names)]
        if todo:
            data = [generate(dgp, w0, scale, eps, n, seed) for scale, eps, seed in todo]
            xs = torch.stack([dd.x for dd in data])
            hs = torch.stack([dd.hard for dd in data])
            ss = torch.stack([dd.soft for dd in data])
        for name in names:
            if not todo:
                break
            t0 = time.perf_counter()
            fit_seed = zlib.crc32(repr(("fit", phase, dgp, n, name)).encode())
            vs, steps = fit_many(ESTIMATORS[name], xs, hs, ss, config.fit, fit_seed)
            dt = (time.perf_counter() - t0) / len(todo)
            for (scale, eps, seed), v in zip(todo, vs):
                tkey = (dgp, scale, eps, seed)
                if tkey not in truths:
                    x_test = torch.randn(config.n_test, config.dim, dtype=torch.float64,
                                         generator=_generator("test", seed))
                    eta = scale * x_test @ w0.T
                    truths[tkey] = _Truth(x_test, eta, expected_target(dgp, eta, eps))
                truth = truths[tkey]
                f_test = truth.x @ v.T
                cache[(dgp, scale, eps, n, seed, name)] = {
                    "rel_err": relative_error(v, scale * w0),
                    "kl": conditional_kl(dgp, truth.eta, f_test),
                    "pred_kl": prediction_kl(truth.mean_target, f_test),
                    "steps": steps,
                    "fit_seconds": round(dt, 4),
                }
        for scale, eps, seed in problems:
            for name in names:
                rows.append({"phase": phase, "dgp": dgp, "estimator": name, "scale": scale,
                             "epsilon": eps, "uncertainty": uncertainty(dgp, scale, eps),
                             "n": n, "seed": seed, **cache[(dgp, scale, eps, n, seed, name)]})
        log(f"[{gi + 1}/{len(groups)}] {phase} {dgp} n={n}: {len(todo)} problems x "
            f"{len(names)} estimators in {time.perf_counter() - t_group:.1f}s "
            f"(total {time.perf_counter() - t_start:.0f}s)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "toy_runs.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return rows

