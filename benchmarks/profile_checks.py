"""Where the time of ``validate_args=True`` goes, piece by piece, for dense targets.

Run from the repository root (nothing else running)::

    .venv/bin/python benchmarks/profile_checks.py                  # N=256, C=100, 30 rounds
    .venv/bin/python benchmarks/profile_checks.py --size 512x1000 --rounds 20

For :func:`softnce.soft_target_infonce` with dense (N, C) targets and a noise vector
(``tau = 0.5``), in one process: each round times a block of ``--calls`` calls
with ``validate_args=False`` and then a block with ``validate_args=True``, and records the
difference per call. It does so for the full checks and for three variants that replace one
piece of them, for the duration of their block only, by a stand-in that costs nothing:

* ``no target stats``: the dense targets' three reductions (:func:`simplex_row_stats`) replaced
  by constants (the three reads stay);
* ``no noise stats``: the noise vector's two reductions (:func:`_noise_check`) skipped;
* ``no reads``: the whole one-scalar check (:func:`_all_finite`: the reads and the sums it
  takes) replaced by ``True``.

Printed, for the forward alone and for forward+backward: the median over the rounds of the
extra microseconds per call of each variant, the unchecked call's median time, and (full minus
variant) the share of each piece. Variants and sides alternate within each round. No test
asserts these times.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import time

import torch

TAU = 0.5


def parse_size(text: str) -> tuple[int, int]:
    """``"256x100"`` -> ``(256, 100)`` (ValueError naming the value)."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 1 for p in parts):
        raise ValueError(f"--size must look like 256x100 (N x C, both >= 2); found {text!r}")
    return int(parts[0]), int(parts[1])


@contextlib.contextmanager
def variant(name: str):
    """The library with one piece of its checks replaced (see the module docstring)."""
    import softnce._scores as S
    import softnce.infonce as F

    # (module, name) pairs as the losses look them up: infonce imported _noise_check
    saved = {(m, k): getattr(m, k) for m, k in ((S, "simplex_row_stats"), (F, "_noise_check"),
                                                (S, "_all_finite"))}
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    if name == "no target stats":
        S.simplex_row_stats = lambda rows: (one, one, zero)
    elif name == "no noise stats":
        F._noise_check = lambda *a, **k: None
    elif name == "no reads":
        S._all_finite = lambda *a, **k: True
    elif name != "full checks":
        raise ValueError(f"unknown variant {name!r}")
    try:
        yield
    finally:
        for (m, k), v in saved.items():
            setattr(m, k, v)


VARIANTS = ("full checks", "no target stats", "no noise stats", "no reads")


def measure(n: int, c: int, rounds: int, calls: int, backward: bool, seed: int = 0) -> dict:
    """``{"noval_us": median unchecked call, variant: median extra us per call}``."""
    from softnce import soft_target_infonce

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, requires_grad=True)
    y = torch.softmax(torch.randn(n, c, generator=g), 1)
    q = torch.softmax(torch.randn(c, generator=g), 0)

    def block(validate: bool) -> float:
        t = time.perf_counter()
        for _ in range(calls):
            loss = soft_target_infonce(z, y, q, TAU, validate_args=validate)
            if backward:
                loss.backward()
        return (time.perf_counter() - t) / calls * 1e6

    block(False), block(True)  # warm-up
    base: list[float] = []
    extra: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        for name in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            off = block(False)
            with variant(name):
                on = block(True)
            base.append(off)
            extra[name].append(on - off)
    out = {"noval_us": statistics.median(base)}
    out.update({v: statistics.median(x) for v, x in extra.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="256x100", help="N x C (default 256x100)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=200, help="calls per timed block")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, as bench_losses.py)")
    a = p.parse_args(argv)
    try:
        n, c = parse_size(a.size)
    except ValueError as e:
        p.error(str(e))
    if a.rounds < 1 or a.calls < 1:
        p.error(f"--rounds and --calls must be >= 1; found {a.rounds} and {a.calls}")
    if a.threads is not None:
        if a.threads < 1:
            p.error(f"--threads must be >= 1; found {a.threads}")
        torch.set_num_threads(a.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# profile_checks  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: python benchmarks/profile_checks.py --size {n}x{c} --rounds {a.rounds} "
          f"--calls {a.calls}" + (f" --threads {a.threads}" if a.threads else ""))
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, load average (1 min) at start {load:.1f}; "
          f"dense targets with noise, tau={TAU}; medians over rounds of blocks of "
          f"{a.calls} calls")
    for backward in (False, True):
        m = measure(n, c, a.rounds, a.calls, backward)
        full = m["full checks"]
        print(f"{'forward+backward' if backward else 'forward'}: unchecked call "
              f"{m['noval_us']:.1f} us; validate_args=True adds {full:.1f} us "
              f"({full / m['noval_us'] * 100:.1f}%)")
        for v in VARIANTS[1:]:
            print(f"    {v:16} adds {m[v]:6.1f} us  -> that piece: {full - m[v]:5.1f} us")


if __name__ == "__main__":
    main()
