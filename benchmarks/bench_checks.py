"""What ``validate_args=True`` costs, measured in several fresh processes.

Run from the repository root::

    .venv/bin/python benchmarks/bench_checks.py                       # N=256, C=100, 8 processes
    .venv/bin/python benchmarks/bench_checks.py --sizes 256x100,512x1000 --processes 4

For every size and every checked method of ``benchmarks/bench_losses.py`` (the ``+v`` rows:
dense targets, ``SoftTargets`` k = 1 and k = 2, soft-target CE) it measures the paired ratio
``time(validate_args=True) / time(validate_args=False)`` exactly as ``bench_losses.py`` does
(interleaved rounds in alternating order, blocks of about 10 ms of forward+backward calls per
method, the median of the per-round ratios), once in each of ``--processes`` fresh Python
processes, run one after the other (never two at once). Why several processes: at small sizes
the ratio of one process depends on that process's memory layout, and the spread between
processes (several hundredths at N=256, C=100 on a 2-core machine) is larger than the spread
within one. The table gives, per size and method, the median over the processes and their
minimum and maximum; the verdict compares the median with the speed issue's target (checked
at most 1.1x unchecked). ``--json`` also writes every process's ratios (atomically).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = 1.1
CHECKED = ("ours-dense", "ours-ST-k1", "ours-ST-k2", "softCE-ST-k2")


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"256x100,512x1000"`` -> ``[(256, 100), (512, 1000)]`` (ValueError naming the item)."""
    sizes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"--sizes items must look like 256x100 (N x C, positive); "
                             f"found {item!r}")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def worker(sizes: list[tuple[int, int]], rounds: int, threads: int | None) -> dict:
    """One process's paired ratios: ``{"NxC": {method: ratio}}``."""
    import torch

    sys.path.insert(0, str(HERE))
    import bench_losses as B

    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    out: dict[str, dict[str, float]] = {}
    for n, c in sizes:
        data = B.make_data(n, c, device)
        z = torch.randn(n, c, device=device).mul_(3).requires_grad_()
        out[f"{n}x{c}"] = {
            m: B.paired_ratio(B.METHODS[m + "+v"], B.METHODS[m], z, data, device, rounds,
                              rounds, budget_s=1e9)[0]
            for m in CHECKED}
    return out


def softnce_source() -> str:
    """Where the workers import softnce from, and that checkout's commit (the workers inherit
    the environment, so ``PYTHONPATH=<other checkout>/src`` measures another version)."""
    r = subprocess.run([sys.executable, "-c", "import softnce; print(softnce.__file__)"],
                       capture_output=True, text=True)
    path = Path(r.stdout.strip()).parent if r.returncode == 0 else None
    if path is None:
        return "(not importable)"
    g = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    commit = g.stdout.strip() if g.returncode == 0 else "unknown"
    return f"from {path} (git {commit})"


def aggregate(runs: list[dict]) -> dict:
    """Median, minimum and maximum over the processes, per size and method, and the verdict
    of each median against :data:`TARGET`."""
    table: dict[str, dict[str, dict]] = {}
    for size in runs[0]:
        table[size] = {}
        for m in runs[0][size]:
            vals = [r[size][m] for r in runs]
            med = statistics.median(vals)
            table[size][m] = {"median": med, "min": min(vals), "max": max(vals),
                              "met": med <= TARGET}
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="256x100", help="comma-separated NxC list (default 256x100)")
    p.add_argument("--processes", type=int, default=8,
                   help="fresh processes, run one after the other (default 8)")
    p.add_argument("--rounds", type=int, default=41,
                   help="interleaved rounds per ratio in each process (default 41)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    try:
        sizes = parse_sizes(a.sizes)
    except ValueError as e:
        p.error(str(e))
    for name in ("processes", "rounds", "threads"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.worker:
        print(json.dumps(worker(sizes, a.rounds, a.threads)))
        return 0

    cmd = " ".join([os.path.basename(sys.executable)] + sys.argv)
    print(f"# bench_checks  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: {cmd}")
    print(f"# python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs, "
          f"{a.threads} torch threads; {a.processes} processes x {a.rounds} paired rounds")
    print(f"# softnce {softnce_source()}")
    runs, t0 = [], time.perf_counter()
    for i in range(a.processes):
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker",
                            "--sizes", a.sizes, "--rounds", str(a.rounds),
                            "--threads", str(a.threads)], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"bench_checks: error: worker {i + 1} failed:\n{r.stderr}", file=sys.stderr)
            return 1
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(f"# process {i + 1}/{a.processes} done ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    table = aggregate(runs)
    print(f"{'size':>10}  {'method':<14} {'median':>7} {'min':>6} {'max':>6}  verdict (median "
          f"<= {TARGET}x)")
    for size, rows in table.items():
        for m, v in rows.items():
            print(f"{size:>10}  {m + '+v':<14} {v['median']:>6.3f}x {v['min']:>5.3f}x "
                  f"{v['max']:>5.3f}x  {'MET' if v['met'] else 'MISSED'}")
    worst = max(((s, m, v) for s, rows in table.items() for m, v in rows.items()),
                key=lambda t: t[2]["median"])
    print(f"# worst median: {worst[2]['median']:.3f}x ({worst[1]}+v at {worst[0]}); "
          f"{'MET' if worst[2]['met'] else 'MISSED'}; total {time.perf_counter() - t0:.0f} s")
    if a.json is not None:
        tmp = a.json.with_name(a.json.name + ".tmp")
        tmp.write_text(json.dumps({"command": cmd, "target": TARGET, "runs": runs,
                                   "table": table}, indent=2) + "\n")
        os.replace(tmp, a.json)  # atomic: a reader never sees half a file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
