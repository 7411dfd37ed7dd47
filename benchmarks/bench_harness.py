"""How much the harness costs over a bare PyTorch loop, measured in one run.

Run from the repository root::

    .venv/bin/python benchmarks/bench_harness.py            # digits, nll, 30 epochs, 3 repeats
    .venv/bin/python benchmarks/bench_harness.py --loss soft-infonce --repeats 5

Both sides train the same model (``softnce.models.build_model`` on the same bundle), with the
same AdamW parameter groups (``softnce.harness.optim.weight_decay_groups``), the same learning
rate schedule, the same batches (a seeded shuffle per epoch, the batch size and ``drop_last``
the harness uses) and the same number of evaluations (one pass over the calibration split per
epoch), on one intra-op thread (what the harness uses for small models). The harness side is
``softnce.harness.trainer.train`` and its time is the training loop as the run records it
(``time_s`` of the last ``metrics.jsonl`` line: from the first step to the last evaluation,
checkpoints, metric records and logits included); the end-of-run test evaluation is not in it.
The bare side is a plain ``for epoch / for batch`` loop with the same loss module. Printed:
medians over ``--repeats`` and the ratio harness / bare. No test asserts these times.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--loss", default="nll")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    from softnce.data import DATASETS
    from softnce.harness.config import TrainConfig

    cfg = TrainConfig(dataset=a.dataset, loss=a.loss, epochs=a.epochs, quiet=True,
                      tensorboard=False, cpu_threads=1).validate()
    bundle = DATASETS.get(a.dataset)(cfg)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_harness  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: python benchmarks/bench_harness.py --dataset {a.dataset} --loss "
          f"{a.loss} --epochs {a.epochs} --repeats {a.repeats}")
    print(f"# torch {torch.__version__}, 1 thread, load average (1 min) at start {load:.1f} "
          f"on {os.cpu_count()} CPUs")
    bare, harn = [], []
    for _ in range(a.repeats):  # interleaved, so drift in machine load hits both sides
        bare.append(bare_loop(cfg, bundle))
        harn.append(harness_loop(TrainConfig(**{**cfg.to_dict()})))
    mb, mh = statistics.median(bare), statistics.median(harn)
    print(f"bare PyTorch loop : median {mb:.2f} s  ({', '.join(f'{t:.2f}' for t in bare)})")
    print(f"softnce harness   : median {mh:.2f} s  ({', '.join(f'{t:.2f}' for t in harn)})")
    ratio = mh / mb if mb > 0 else math.nan
    print(f"harness / bare    : {ratio:.2f}x (target <= 1.3x): "
          f"{'MET' if ratio <= 1.3 else 'NOT MET'}")


if __name__ == "__main__":
    main()
