"""How much the harness costs over a bare PyTorch loop, measured in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_harness.py            # digits, nll, 30 epochs, 5 rounds
    .venv/bin/python benchmarks/bench_harness.py --loss soft-infonce --repeats 5

Both sides train the same model (``softnce.models.build_model`` on the same bundle), with the
same AdamW parameter groups (``softnce.harness.optim.weight_decay_groups``), the same learning
rate schedule, the same batches (a seeded shuffle per epoch, the batch size and ``drop_last``
the harness uses) and the same number of evaluations (one pass over the calibration split per
epoch), on one intra-op thread (what the harness uses for small models). The harness side is
``softnce.harness.trainer.train`` and its time is the training loop as the run records it
(``time_s`` of the last ``metrics.jsonl`` line: from the first step to the last evaluation,
checkpoints, metric records and logits included); the end-of-run test evaluation is not in it.
The bare side is a plain ``for epoch / for batch`` loop with the same loss module.

The measurement is paired: one untimed warm-up round of each side first (the first run in a
process pays one-off costs: lazy imports, allocator growth), then ``--repeats`` rounds that
time both sides back to back, in an order that alternates between rounds, so drift in the
machine's load hits both alike. Printed: each side's median over the rounds, and the ratio
harness / bare as the median of the per-round ratios (``--json`` writes the same numbers,
atomically). No test asserts these times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

TARGET = 1.3


def bare_loop(cfg, bundle) -> float:
    from softnce.harness.losses import build_loss
    from softnce.harness.optim import weight_decay_groups
    from softnce.harness.state import lr_at, seed_everything
    from softnce.models import build_model

    seed_everything(cfg.seed)
    model = build_model(cfg.model or bundle.default_model, bundle, cfg)
    criterion = build_loss(cfg, bundle)
    opt = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    xs, ys = bundle.train.tensors
    xv, yv = bundle.val.tensors
    n = len(ys)
    steps = n // cfg.batch_size if n > cfg.batch_size else 1
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    step = 0
    for _epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for b in range(steps):
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = xs[idx], ys[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg, steps)
            loss = criterion(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            for b in range(0, len(yv), cfg.resolved_eval_batch_size):
                z = model(xv[b:b + cfg.resolved_eval_batch_size])
                torch.softmax(z, 1).max(1)
    return time.perf_counter() - t0


def harness_loop(cfg) -> float:
    from softnce.harness.trainer import train

    with tempfile.TemporaryDirectory() as d:
        cfg.output_dir = str(Path(d) / "run")
        train(cfg, log=lambda m: None)
        lines = (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()
        return float(json.loads(lines[-1])["time_s"])


def paired_rounds(run_a, run_b, repeats: int, warmup: bool = True
                  ) -> tuple[list[float], list[float], list[float]]:
    """Times of ``run_a`` and ``run_b`` (callables returning seconds) over ``repeats`` rounds,
    order alternating (a first in even rounds), after one untimed call of each when
    ``warmup``; returns ``(a_times, b_times, per-round b / a)``."""
    if warmup:
        run_a(), run_b()
    ta, tb, ratios = [], [], []
    for r in range(repeats):
        if r % 2 == 0:
            a = run_a()
            b = run_b()
        else:
            b = run_b()
            a = run_a()
        ta.append(a)
        tb.append(b)
        ratios.append(b / a if a > 0 else math.nan)
    return ta, tb, ratios


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--loss", default="nll")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None, help="also write the numbers here (atomically)")
    a = p.parse_args(argv)
    if a.epochs < 1 or a.repeats < 1:
        p.error(f"--epochs and --repeats must be >= 1; found {a.epochs} and {a.repeats}")
    torch.set_num_threads(1)
    from softnce.data import DATASETS
    from softnce.harness.config import TrainConfig

    cfg = TrainConfig(dataset=a.dataset, loss=a.loss, epochs=a.epochs, quiet=True,
                      tensorboard=False, cpu_threads=1).validate()
    bundle = DATASETS.get(a.dataset)(cfg)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = (f"python benchmarks/bench_harness.py --dataset {a.dataset} --loss {a.loss} "
               f"--epochs {a.epochs} --repeats {a.repeats}")
    print(f"# bench_harness  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: {command}")
    print(f"# torch {torch.__version__}, 1 thread, load average (1 min) at start {load:.1f} "
          f"on {os.cpu_count()} CPUs; one warm-up round, then paired rounds (order alternating)")
    bare, harn, ratios = paired_rounds(lambda: bare_loop(cfg, bundle),
                                       lambda: harness_loop(TrainConfig(**cfg.to_dict())),
                                       a.repeats)
    mb, mh, ratio = statistics.median(bare), statistics.median(harn), statistics.median(ratios)
    verdict = "MET" if ratio <= TARGET else "NOT MET"
    print(f"bare PyTorch loop : median {mb:.2f} s  ({', '.join(f'{t:.2f}' for t in bare)})")
    print(f"softnce harness   : median {mh:.2f} s  ({', '.join(f'{t:.2f}' for t in harn)})")
    print(f"harness / bare    : {ratio:.2f}x (median of per-round ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)}; target <= {TARGET}x): {verdict}")
    if a.json:
        from softnce.harness.state import _atomic_write_text

        _atomic_write_text(Path(a.json), json.dumps({
            "command": command, "torch": torch.__version__, "load_average": load,
            "bare_s": bare, "harness_s": harn, "ratios": ratios, "ratio": ratio,
            "target": TARGET, "verdict": verdict}, indent=2) + "\n")


if __name__ == "__main__":
    main()
