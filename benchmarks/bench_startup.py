"""How long the command line takes, whole process, against ``python -c "import torch"``.

Run from the repository root (nothing else running: this times whole processes)::

    .venv/bin/python benchmarks/bench_startup.py                  # 5 interleaved rounds
    .venv/bin/python benchmarks/bench_startup.py --compare        # also the main job (~20 s/round)

Each round starts, in an order that alternates between rounds (so drift in machine load hits
every command alike), fresh interpreters for

* ``python -c "import torch"`` -- the anchor: no softnce command can start faster;
* ``softnce --help``;
* ``softnce train --dataset digits --epochs 30 --quiet`` in a fresh ``--output-dir``;
* with ``--compare``: ``softnce compare --quiet`` (the main job) in a fresh ``--output-dir``.

The commands are the installed console script next to this interpreter (``softnce`` in the
venv), falling back to ``python -m softnce``. Printed: wall-time medians (with every round),
the ratio ``softnce --help`` / ``import torch`` as the median of per-round ratios, and the
speed issue's targets (help <= 1.3x the anchor, train <= 4 s, compare <= 30 s). ``--json``
writes the same numbers. No test asserts these times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_HELP_RATIO = 1.3
TARGET_TRAIN_S = 4.0
TARGET_COMPARE_S = 30.0


def softnce_argv() -> list[str]:
    """The installed ``softnce`` console script beside this interpreter, else ``-m softnce``."""
    script = Path(sys.executable).with_name("softnce")
    if script.exists():
        return [str(script)]
    found = shutil.which("softnce")
    return [found] if found else [sys.executable, "-m", "softnce"]


def commands(with_compare: bool, epochs: int) -> dict[str, list[str]]:
    """Name -> argv; ``{out}`` in an argv is replaced by a fresh output folder per round."""
    cli = softnce_argv()
    cmds = {
        "import torch": [sys.executable, "-c", "import torch"],
        "softnce --help": [*cli, "--help"],
        f"softnce train --dataset digits --epochs {epochs}": [
            *cli, "train", "--dataset", "digits", "--epochs", str(epochs), "--quiet",
            "--output-dir", "{out}"],
    }
    if with_compare:
        cmds["softnce compare"] = [*cli, "compare", "--quiet", "--output-dir", "{out}"]
    return cmds


def time_once(argv: list[str], scratch: Path, tag: str) -> float:
    out = scratch / tag
    argv = [str(out) if a == "{out}" else a for a in argv]
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, cwd=scratch)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"bench_startup: error: {' '.join(argv)} exited {r.returncode}:\n"
                         f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return wall


def run(rounds: int, with_compare: bool, epochs: int) -> dict:
    cmds = commands(with_compare, epochs)
    names = list(cmds)
    times: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as d:
        scratch = Path(d)
        # one untimed warm-up of each, so the first timed round does not pay cold disk caches
        for i, n in enumerate(names):
            time_once(cmds[n], scratch, f"warm{i}")
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            for n in order:
                times[n].append(time_once(cmds[n], scratch, f"r{r}-{names.index(n)}"))
    med = {n: statistics.median(t) for n, t in times.items()}
    help_ratio = statistics.median(h / a for h, a in zip(times["softnce --help"],
                                                         times["import torch"]))
    train_key = names[2]
    targets = {
        "help_vs_import_torch": {"value": help_ratio, "target": TARGET_HELP_RATIO,
                                 "met": help_ratio <= TARGET_HELP_RATIO},
        "train_wall_s": {"value": med[train_key], "target": TARGET_TRAIN_S,
                         "met": med[train_key] <= TARGET_TRAIN_S},
    }
    if with_compare:
        targets["compare_wall_s"] = {"value": med["softnce compare"],
                                     "target": TARGET_COMPARE_S,
                                     "met": med["softnce compare"] <= TARGET_COMPARE_S}
    return {"times_s": times, "median_s": med, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of the train command")
    p.add_argument("--compare", action="store_true", help="also time `softnce compare`")
    p.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error(f"--rounds must be >= 1, got {a.rounds}")
    if a.epochs < 1:
        p.error(f"--epochs must be >= 1, got {a.epochs}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    cmd = " ".join(["python benchmarks/bench_startup.py", f"--rounds {a.rounds}",
                    f"--epochs {a.epochs}"] + (["--compare"] if a.compare else []))
    print(f"# bench_startup  {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"# command: {cmd}")
    print(f"# load average (1 min) at start {load:.1f} on {os.cpu_count()} CPUs; whole "
          "processes, wall time, order alternating per round")
    res = run(a.rounds, a.compare, a.epochs)
    width = max(len(n) for n in res["median_s"])
    for n, m in res["median_s"].items():
        every = ", ".join(f"{t:.2f}" for t in res["times_s"][n])
        print(f"{n:<{width}}  median {m:6.2f} s  ({every})")
    t = res["targets"]
    print("# targets:")
    print(f"#   softnce --help / import torch: {t['help_vs_import_torch']['value']:.2f}x "
          f"(median of per-round ratios; target <= {TARGET_HELP_RATIO}x): "
          f"{'MET' if t['help_vs_import_torch']['met'] else 'MISSED'}")
    print(f"#   train wall: {t['train_wall_s']['value']:.2f} s (target <= {TARGET_TRAIN_S:g} s): "
          f"{'MET' if t['train_wall_s']['met'] else 'MISSED'}")
    if "compare_wall_s" in t:
        print(f"#   compare wall: {t['compare_wall_s']['value']:.1f} s (target <= "
              f"{TARGET_COMPARE_S:g} s): {'MET' if t['compare_wall_s']['met'] else 'MISSED'}")
    if a.json is not None:
        tmp = a.json.with_name(a.json.name + ".tmp")
        tmp.write_text(json.dumps({"command": cmd, **res}, indent=2) + "\n")
        os.replace(tmp, a.json)  # atomic: a reader never sees half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
