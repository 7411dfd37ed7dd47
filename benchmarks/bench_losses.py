"""Forward+backward time and peak memory of the soft-target InfoNCE implementations.

Run from the repository root::

    .venv/bin/python benchmarks/bench_losses.py            # full grid (a few minutes on 2 cores)
    .venv/bin/python benchmarks/bench_losses.py --quick    # the two target sizes and one small one
    .venv/bin/python benchmarks/bench_losses.py --device cuda

Methods (all with the same MixUp targets, noise distribution ``q`` and temperature):

* ``ours-dense``   :func:`softnce.soft_target_infonce` with dense (N, C) targets: one product
  ``(z / tau) Y^T`` plus a per-candidate offset (for C < M: ``(z / tau - log q) Y^T``, the
  elementwise work on the smaller side), O(N M C) time, O(N M + N C) memory;
* ``ours-ST-k1``   the same with ``SoftTargets`` label smoothing (k = 1 component + uniform mass);
* ``ours-ST-k2``   the same with ``SoftTargets`` MixUp of smoothed labels (k = 2 + uniform);
* ``naive-NxMxC``  the published formulation, written here:
  ``s = (((z / tau)[:, None, :] - log q) * y[None, :, :]).sum(-1)`` then
  ``cross_entropy(s, arange(N))``; it materialises (N, M, C) tensors and is skipped where its
  estimated peak (one float32 (N, N, C) tensor, as measured) exceeds ``--max-naive-gib``;
* ``softCE-dense`` soft-target cross-entropy as timm writes it,
  ``(-y * log_softmax(z / tau)).sum(-1).mean()``, with the dense MixUp targets (the baseline
  for the "SoftTargets at most 1.5x soft-target CE" target);
* ``softCE-ST-k2`` :func:`softnce.soft_target_cross_entropy` with the ``SoftTargets``;
* ``gemm-floor``   ``F.cross_entropy((z / tau - log q) @ Y.T, arange(N))``: the floor for dense
  targets (one GEMM, no checks);
* ``...+v``        the same call with the default ``validate_args=True`` (column ``v/noval``:
  its time over the ``validate_args=False`` run; target <= 1.1x at every size).

The ratio columns ``this/gemm`` and ``v/noval`` are *paired*: the two calls are timed in
alternating order for several rounds and the column is the median of the per-round ratios, so a
shared machine's drift between two separately timed methods does not enter them.

Targets checked at the end: ``ours-ST-k2+v`` <= 0.5x ``softCE-dense`` at N=1024, C=20000;
``ours-dense+v`` <= 1.1x ``gemm-floor`` at N=512/1024, C=1000 and N=256, C=10000; every
``+v`` <= 1.1x its unchecked run.

Time: median wall-clock time of ``loss.backward()`` including the forward pass, after warm-up,
over several repeats (the machine may be shared, hence medians). Memory: peak bytes of tensors
allocated during one forward+backward *above what was allocated before it* (inputs and targets
excluded, the logits' gradient included). On CUDA this is ``torch.cuda.max_memory_allocated``
minus the allocation before the call; on CPU it is the running sum of the allocation/free events
that ``torch.profiler.profile(profile_memory=True)`` records from PyTorch's CPU allocator,
maximised over time (the same quantity; it does not see memory outside PyTorch tensors).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # silence the profiler's "no GPU" log line

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from softnce import SoftTargets, soft_target_cross_entropy, soft_target_infonce  # noqa: E402

GiB = 2**30
MiB = 2**20
TAU = 0.5
SMOOTHING = 0.1

FULL_GRID = [(n, c) for n in (256, 1024) for c in (100, 1000, 10000, 100000)]
EXTRA = [(512, 1000), (1024, 20000)]
QUICK_GRID = [(256, 1000), (512, 1000), (1024, 1000), (256, 10000), (1024, 20000)]
# at most this many interleaved rounds per ratio (fewer once the time budget is spent): at ~1 ms
# per call the per-round ratios scatter by +-15% on a 2-core machine, their median far less
PAIRED_ROUNDS = 61
BLOCK_S = 0.01  # seconds of calls per method in one paired round (at least one call)
BLOCK_MAX_CALLS = 50


@dataclass
class Data:
    dense: torch.Tensor  # (N, C) MixUp targets, dense
    st1: SoftTargets  # label smoothing, k = 1
    st2: SoftTargets  # MixUp of smoothed labels, k = 2
    q: torch.Tensor
    log_q: torch.Tensor


def make_data(n: int, c: int, device: torch.device, seed: int = 0) -> Data:
    gen = torch.Generator().manual_seed(seed)
    la = torch.randint(c, (n,), generator=gen)
    lb = la.flip(0)  # timm's MixUp pairs the batch with its reverse
    lam = float(torch.distributions.Beta(0.8, 0.8).sample())
    st2 = SoftTargets.mix(la, lb, lam, c, smoothing=SMOOTHING).to(device)
    st1 = SoftTargets.label_smoothing(la, c, smoothing=SMOOTHING).to(device)
    q = torch.rand(c, generator=gen) + 0.1
    q = (q / q.sum()).to(device)
    return Data(st2.to_dense(), st1, st2, q, q.log())


def naive_nxmxc(z: torch.Tensor, y: torch.Tensor, log_q: torch.Tensor, tau: float) -> torch.Tensor:
    """The published formulation: an (N, M, C) broadcast, then cross-entropy with arange labels."""
    s = (((z / tau)[:, None, :] - log_q) * y[None, :, :]).sum(-1)
    return F.cross_entropy(s, torch.arange(z.shape[0], device=z.device))


def soft_ce_timm(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.sum(-y * F.log_softmax(z / tau, dim=-1), dim=-1).mean()


def gemm_floor(z: torch.Tensor, y: torch.Tensor, log_q: torch.Tensor, tau: float) -> torch.Tensor:
    """The floor for dense targets: one GEMM and a cross-entropy, no checks."""
    return F.cross_entropy((z / tau - log_q) @ y.T, torch.arange(z.shape[0], device=z.device))


METHODS: dict[str, Callable[[torch.Tensor, Data], torch.Tensor]] = {
    "ours-dense": lambda z, d: soft_target_infonce(z, d.dense, d.q, TAU, validate_args=False),
    "ours-dense+v": lambda z, d: soft_target_infonce(z, d.dense, d.q, TAU),
    "ours-ST-k1": lambda z, d: soft_target_infonce(z, d.st1, d.q, TAU, validate_args=False),
    "ours-ST-k1+v": lambda z, d: soft_target_infonce(z, d.st1, d.q, TAU),
    "ours-ST-k2": lambda z, d: soft_target_infonce(z, d.st2, d.q, TAU, validate_args=False),
    "ours-ST-k2+v": lambda z, d: soft_target_infonce(z, d.st2, d.q, TAU),
    "gemm-floor": lambda z, d: gemm_floor(z, d.dense, d.log_q, TAU),
    "naive-NxMxC": lambda z, d: naive_nxmxc(z, d.dense, d.log_q, TAU),
    "softCE-dense": lambda z, d: soft_ce_timm(z, d.dense, TAU),
    "softCE-ST-k2": lambda z, d: soft_target_cross_entropy(z, d.st2, TAU, validate_args=False),
    "softCE-ST-k2+v": lambda z, d: soft_target_cross_entropy(z, d.st2, TAU),
}


def naive_peak_estimate(n: int, c: int) -> int:
    """One float32 (N, N, C) tensor (the measured peak, e.g. 1003 MiB at N=512, C=1000)."""
    return n * n * c * 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(fn: Callable, z: torch.Tensor, data: Data, read: bool = True) -> float | None:
    """One forward+backward; with ``read`` the loss value (a host read: on a GPU a sync)."""
    z.grad = None
    loss = fn(z, data)
    loss.backward()
    return float(loss.detach()) if read else None


@contextlib.contextmanager
def quiet_stderr():
    """Silence C++ log lines of the profiler (file descriptor 2) for the duration."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_step(fn: Callable, z: torch.Tensor, data: Data, device: torch.device
                     ) -> tuple[float, int]:
    """One forward+backward; returns (loss, peak bytes allocated above the allocation before)."""
    z.grad = None
    gc.collect()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        value = step(fn, z, data)
        sync(device)
        return value, torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = step(fn, z, data)
    # "[memory]" events: +bytes on allocation, -bytes on free, from the CPU allocator
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return value, peak


def time_method(fn: Callable, z: torch.Tensor, data: Data, device: torch.device, warmup: int,
                repeats: int, min_repeats: int, budget_s: float
                ) -> tuple[float, int, list[float]]:
    """Warm-up (the first warm-up run also measures peak memory), then timed repeats: at least
    ``min_repeats``, at most ``repeats``, no new one once ``budget_s`` seconds have passed."""
    value, peak = peak_memory_step(fn, z, data, device)
    for _ in range(warmup - 1):
        step(fn, z, data, read=False)
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < min_repeats or
                                    time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        step(fn, z, data, read=False)
        sync(device)
        times.append(time.perf_counter() - t0)
    return value, peak, times


def paired_ratio(fa: Callable, fb: Callable, z: torch.Tensor, data: Data, device: torch.device,
                 rounds: int, min_rounds: int, budget_s: float) -> tuple[float, int]:
    """Median over interleaved rounds of ``time(fa) / time(fb)``, the order alternating each
    round: both see the same machine state, so drifts of a shared machine cancel in the ratio
    (timing the two methods one after the other does not). Each round times a block of
    ``calls`` forward+backward steps of each method, as many as take about
    ``BLOCK_S`` seconds (as :mod:`timeit`'s autorange does): one sub-millisecond call is at
    the mercy of timer and scheduler noise, a block of them is not."""
    def once(fn: Callable, calls: int = 1) -> float:
        t0 = time.perf_counter()
        for _ in range(calls):  # no host read per call: a +v method's own sync is what is timed
            step(fn, z, data, read=False)
        sync(device)
        return time.perf_counter() - t0

    once(fa), once(fb)  # warm both
    calls = max(1, min(BLOCK_MAX_CALLS, math.ceil(BLOCK_S / max(once(fb), 1e-9))))
    ratios: list[float] = []
    start = time.perf_counter()
    while len(ratios) < rounds and (len(ratios) < min_rounds or
                                    time.perf_counter() - start < budget_s):
        if len(ratios) % 2:
            ta = once(fa, calls)
            tb = once(fb, calls)
        else:
            tb = once(fb, calls)
            ta = once(fa, calls)
        ratios.append(ta / tb)
    return statistics.median(ratios), len(ratios)


def ratio_pairs(names) -> list[tuple[str, str]]:
    """(checked, unchecked) for every ``+v`` method, and the dense loss against the GEMM floor."""
    pairs = [(m, m[:-2]) for m in names if m.endswith("+v") and m[:-2] in names]
    if "gemm-floor" in names:
        pairs += [(m, "gemm-floor") for m in ("ours-dense", "ours-dense+v") if m in names]
    return pairs


def fmt_ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:9.1f}" if ms >= 10 else f"{ms:9.2f}"


def fmt_mib(nbytes: int | None) -> str:
    return "        -" if nbytes is None else f"{nbytes / MiB:9.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"only {QUICK_GRID}, fewer repeats")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--repeats", type=int, default=None,
                        help="maximum timed repeats per method (default 15, quick 7)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timing per method after which no more repeats start "
                             "once --min-repeats are done (default 3, quick 1.5)")
    parser.add_argument("--min-repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed runs before timing (>= 1; the first measures memory)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--max-naive-gib", type=float, default=3.0,
                        help="skip the N x M x C form when its estimated peak (one float32 "
                             "(N, N, C) tensor) exceeds this many GiB (default 3: the machine "
                             "is shared; 8 adds N=1024, C=1000 at ~17 s per step on 2 cores)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated NxC list overriding the grid, e.g. 512x1000")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (7 if args.quick else 15)
    budget = args.budget if args.budget is not None else (1.5 if args.quick else 3.0)
    if args.sizes:
        grid = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    else:
        grid = QUICK_GRID if args.quick else FULL_GRID + EXTRA

    dev_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                     f"{torch.get_num_threads()} torch threads")
    print(f"# bench_losses  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"# torch {torch.__version__}, device {device} ({dev_name}), python "
          f"{platform.python_version()}, {platform.platform()}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average (1 min) at start: {load:.1f} on {os.cpu_count()} CPUs")
    if device.type == "cpu" and load > (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        print("# WARNING: the machine is busy; multi-threaded timings then include scheduler "
              "stalls of every parallel region (try --threads 1)")
    print(f"# tau={TAU}, MixUp lam~Beta(0.8,0.8) with smoothing {SMOOTHING}; time = median "
          f"forward+backward over {args.min_repeats}..{repeats} repeats ({budget:g} s budget) "
          f"after {args.warmup} warm-up; peak = extra tensor memory during one forward+backward")
    header = (f"{'N':>5} {'C':>6}  {'method':<14} {'median ms':>9} {'min ms':>9} {'reps':>4} "
              f"{'peak MiB':>9}  {'naive/this t':>12} {'naive/this mem':>14} "
              f"{'this/softCE t':>13} {'this/gemm t':>11} {'v/noval t':>9}")
    print(header)
    print("-" * len(header))

    results: dict[tuple[int, int, str], tuple[float, int | None]] = {}
    t_start = time.perf_counter()
    for n, c in grid:
        data = make_data(n, c, device)
        z = torch.randn(n, c, device=device).mul_(3).requires_grad_()
        values: dict[str, float] = {}
        rows = {}
        for name, fn in METHODS.items():
            if name == "naive-NxMxC" and naive_peak_estimate(n, c) > args.max_naive_gib * GiB:
                rows[name] = None
                continue
            value, peak, times = time_method(fn, z, data, device, args.warmup, repeats,
                                             args.min_repeats, budget)
            values[name] = value
            rows[name] = (statistics.median(times), min(times), len(times), peak)
            results[(n, c, name)] = (statistics.median(times), peak)
            gc.collect()
        paired = {pair: paired_ratio(METHODS[pair[0]], METHODS[pair[1]], z, data, device,
                                     PAIRED_ROUNDS, 2 * args.min_repeats + 1, budget)[0]
                  for pair in ratio_pairs(list(values))}
        for pair, r in paired.items():
            results[(n, c, f"{pair[0]}/{pair[1]}")] = (r, None)
        naive = rows.get("naive-NxMxC")
        soft_ce = rows["softCE-dense"]
        for name, row in rows.items():
            if row is None:
                est = naive_peak_estimate(n, c) / GiB
                print(f"{n:5d} {c:6d}  {name:<14} skipped: estimated peak {est:.1f} GiB > "
                      f"{args.max_naive_gib:g} GiB")
                continue
            med, best, reps, peak = row
            r_t = f"{naive[0] / med:12.1f}" if naive and name.startswith("ours") else " " * 12
            r_m = (f"{naive[3] / peak:14.1f}" if naive and name.startswith("ours") and peak
                   else " " * 14)
            r_ce = f"{med / soft_ce[0]:13.2f}" if name != "softCE-dense" else " " * 13
            g = paired.get((name, "gemm-floor"))
            r_g = f"{g:11.2f}" if g is not None else " " * 11
            v = paired.get((name, name[:-2]))
            r_v = f"{v:9.2f}" if v is not None else " " * 9
            print(f"{n:5d} {c:6d}  {name:<14} {fmt_ms(med)} {fmt_ms(best)} {reps:4d} "
                  f"{fmt_mib(peak)}  {r_t} {r_m} {r_ce} {r_g} {r_v}")
        # the implementations compute the same loss (the naive form is the reference)
        if "naive-NxMxC" in values:
            diff = abs(values["ours-dense"] - values["naive-NxMxC"])
            print(f"{'':13}  check: |ours-dense - naive| = {diff:.2e} (loss "
                  f"{values['naive-NxMxC']:.4f}), |ours-ST-k2 - ours-dense| = "
                  f"{abs(values['ours-ST-k2'] - values['ours-dense']):.2e}")
        else:
            print(f"{'':13}  check: |ours-ST-k2 - ours-dense| = "
                  f"{abs(values['ours-ST-k2'] - values['ours-dense']):.2e}")
        del z, data
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"# total benchmark time {time.perf_counter() - t_start:.0f} s")
    print("# targets:")
    key = (512, 1000)
    if (*key, "naive-NxMxC") in results and (*key, "ours-dense") in results:
        (tn, mn), (to, mo) = results[(*key, "naive-NxMxC")], results[(*key, "ours-dense")]
        ok = tn / to >= 20 and mn / mo >= 50
        print(f"#   N=512, C=1000: ours-dense {tn / to:.0f}x faster (target >= 20x) and "
              f"{mn / mo:.0f}x less peak memory (target >= 50x) than N x M x C: "
              f"{'MET' if ok else 'MISSED'}")
    key = (1024, 20000)
    if (*key, "ours-ST-k2") in results:
        ce = results[(*key, "softCE-dense")][0]
        for name in ("ours-ST-k1+v", "ours-ST-k2+v"):
            r = results[(*key, name)][0] / ce
            print(f"#   N=1024, C=20000: {name} takes {r:.2f}x the time of soft-target CE "
                  f"(target <= 0.5x): {'MET' if r <= 0.5 else 'MISSED'}")
    for key in ((512, 1000), (1024, 1000), (256, 10000)):
        if (*key, "ours-dense+v/gemm-floor") in results:
            r = results[(*key, "ours-dense+v/gemm-floor")][0]
            print(f"#   N={key[0]}, C={key[1]}: ours-dense+v takes {r:.2f}x the GEMM floor "
                  f"(target <= 1.1x): {'MET' if r <= 1.1 else 'MISSED'}")
    worst = max(((results[(n, c, m)][0], n, c, m.split("/")[0]) for (n, c, m) in results
                 if m.endswith("+v/" + m.split("/")[0][:-2]) and "/" in m), default=None)
    if worst:
        r, n, c, m = worst
        print(f"#   validate_args=True vs False: worst {r:.2f}x ({m} at N={n}, C={c}) "
              f"(target <= 1.1x everywhere): {'MET' if r <= 1.1 else 'MISSED'}")
    print("# ratio columns this/gemm and v/noval: median of per-round ratios over interleaved "
          f"rounds (order alternating; each round times a block of calls of about {BLOCK_S:g} s "
          "per method), not a ratio of the medians above")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
