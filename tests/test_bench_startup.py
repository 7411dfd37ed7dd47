"""benchmarks/bench_startup.py runs end to end (one round, one epoch): the script that measures
the speed issue's start-up targets keeps working. No assertion on the times themselves."""

from __future__ import annotations

import json
import sys

from _helpers import import_benchmark, run_benchmark


def test_bench_startup_one_round(tmp_path):
    out = tmp_path / "startup.json"
    r = run_benchmark("bench_startup", "--rounds", "1", "--epochs", "1",
                      "--json", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert set(d["median_s"]) == {"import torch", "softnce --help",
                                  "softnce train --dataset digits --epochs 1"}
    assert all(len(t) == 1 and t[0] > 0 for t in d["times_s"].values())
    assert set(d["targets"]) == {"help_vs_import_torch", "train_wall_s"}
    assert all(isinstance(v["met"], bool) for v in d["targets"].values())
    assert "softnce --help / import torch" in r.stdout and "train wall" in r.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_startup_rejects_zero_rounds(tmp_path):
    r = run_benchmark("bench_startup", "--rounds", "0", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "--rounds must be >= 1, got 0" in r.stderr


def test_bench_startup_reports_a_failing_command(tmp_path):
    bench_startup = import_benchmark("bench_startup")
    try:
        bench_startup.time_once([sys.executable, "-c", "raise SystemExit(3)"], tmp_path, "x")
    except SystemExit as e:
        assert "exited 3" in str(e)
    else:
        raise AssertionError("a failing command must not be timed as if it worked")
