"""benchmarks/bench_harness.py runs end to end (one epoch, one round) and pairs its rounds:
the script behind the harness-vs-bare-loop figure keeps working. No assertion on the times."""

from __future__ import annotations

import json

from _helpers import import_benchmark, run_benchmark


def test_bench_harness_one_round(tmp_path):
    out = tmp_path / "harness.json"
    r = run_benchmark("bench_harness", "--epochs", "1", "--repeats", "1",
                      "--json", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert len(d["bare_s"]) == len(d["harness_s"]) == len(d["ratios"]) == 1
    assert d["bare_s"][0] > 0 and d["harness_s"][0] > 0
    assert abs(d["ratio"] - d["harness_s"][0] / d["bare_s"][0]) < 1e-12
    assert d["verdict"] in ("MET", "NOT MET") and d["target"] == 1.3
    assert "harness / bare" in r.stdout and "--epochs 1 --repeats 1" in r.stdout
    assert not list(tmp_path.glob("*.tmp"))


def test_bench_harness_rejects_zero_repeats(tmp_path):
    r = run_benchmark("bench_harness", "--repeats", "0", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "--repeats must be >= 1" in r.stderr


def test_paired_rounds_warm_up_alternate_and_pair():
    bench_harness = import_benchmark("bench_harness")
    calls: list[str] = []
    times = {"a": iter([9.0, 1.0, 2.0, 4.0]), "b": iter([9.0, 3.0, 2.0, 2.0])}

    def side(name):
        def run():
            calls.append(name)
            return next(times[name])
        return run

    ta, tb, ratios = bench_harness.paired_rounds(side("a"), side("b"), 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating
    assert ta == [1.0, 2.0, 4.0] and tb == [3.0, 2.0, 2.0] and ratios == [3.0, 1.0, 0.5]
