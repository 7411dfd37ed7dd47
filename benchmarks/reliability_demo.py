"""Reliability diagram of a synthetic over-confident classifier before/after temperature scaling.

A "true" model draws logits ``z ~ N(0, scale^2 I)`` over ``C`` classes and labels
``y ~ Categorical(softmax(z))``, so ``softmax(z)`` is perfectly calibrated. The over-confident
model reports ``sharpen * z``. :class:`softnce.calibration.TemperatureScaler` is fitted on a
validation split and both versions are scored on a disjoint test split with
:class:`softnce.calibration.CalibrationMeter`; the script prints the metrics and writes the
reliability diagram used in the README (``docs/img/reliability_demo.png``).

Usage::

    python benchmarks/reliability_demo.py [--out docs/img/reliability_demo.png] [--seed 0]

CPU only, a few seconds; no data is downloaded.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from softnce.calibration import CalibrationMeter, TemperatureScaler, plot_reliability_diagram


def make_split(n: int, num_classes: int, scale: float, sharpen: float, g: torch.Generator):
    z = torch.randn(n, num_classes, generator=g) * scale
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return sharpen * z, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/reliability_demo.png"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--n-val", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=20_000)
    ap.add_argument("--scale", type=float, default=2.0, help="std of the true logits")
    ap.add_argument("--sharpen", type=float, default=2.5, help="over-confidence factor")
    ap.add_argument("--n-bins", type=int, default=15)
    ap.add_argument("--dpi", type=int, default=100)
    args = ap.parse_args()

    g = torch.Generator().manual_seed(args.seed)
    val_logits, val_labels = make_split(args.n_val, args.classes, args.scale, args.sharpen, g)
    test_logits, test_labels = make_split(args.n_test, args.classes, args.scale, args.sharpen, g)

    t0 = time.perf_counter()
    scaler = TemperatureScaler(n_bins=args.n_bins).fit(val_logits, val_labels)
    fit_s = time.perf_counter() - t0

    meters = {
        "over-confident (T = 1)": CalibrationMeter(n_bins=args.n_bins, inputs="logits"),
        f"temperature-scaled (T = {scaler.temperature:.3f})": CalibrationMeter(
            n_bins=args.n_bins, inputs="logits", temperature=scaler.temperature
        ),
    }
    for meter in meters.values():
        for zb, yb in zip(test_logits.split(4096), test_labels.split(4096)):
            meter.update(zb, yb)

    print(
        f"synthetic: C={args.classes}, val N={args.n_val}, test N={args.n_test}, "
        f"true logit std={args.scale}, over-confidence factor={args.sharpen}, seed={args.seed}"
    )
    print(
        f"fitted temperature on val: {scaler.temperature:.4f} (fit {fit_s:.2f}s, "
        f"expected about {args.sharpen})"
    )
    rep = scaler.report()
    print(
        f"val  NLL {rep['nll_before']:.4f} -> {rep['nll_after']:.4f}, "
        f"ECE {100 * rep['ece_before']:.2f}% -> {100 * rep['ece_after']:.2f}%"
    )
    keys = ["top1", "top5", "ece", "mce", "ace", "classwise_ece", "nll", "brier"]
    print(f"{'test split':<34}" + "".join(f"{k:>14}" for k in keys))
    for name, meter in meters.items():
        res = meter.compute()
        cells = [
            f"{100 * res[k]:13.2f}%" if k not in ("nll", "brier") else f"{res[k]:14.4f}"
            for k in keys
        ]
        print(f"{name:<34}" + "".join(cells))

    plot_reliability_diagram(
        meters,
        args.out,
        title="Synthetic over-confident classifier, test split",
        dpi=args.dpi,
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
