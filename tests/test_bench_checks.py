"""benchmarks/bench_checks.py runs end to end on a tiny size, aggregates correctly and refuses
bad arguments. No assertion on the times themselves."""

from __future__ import annotations

import json

from _helpers import import_benchmark, run_benchmark


def test_bench_checks_two_processes(tmp_path):
    out = tmp_path / "checks.json"
    r = run_benchmark("bench_checks", "--sizes", "8x5,6x3", "--processes", "2",
                      "--rounds", "2", "--threads", "1", "--json", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert len(d["runs"]) == 2 and d["target"] == 1.1
    methods = {"ours-dense", "ours-ST-k1", "ours-ST-k2", "softCE-ST-k2"}
    assert set(d["table"]) == {"8x5", "6x3"}
    for size, rows in d["table"].items():
        assert set(rows) == methods
        for m, v in rows.items():
            vals = [run[size][m] for run in d["runs"]]
            assert all(x > 0 for x in vals)
            assert v["min"] == min(vals) and v["max"] == max(vals)
            assert v["met"] == (v["median"] <= 1.1)
    assert "process 2/2 done" in r.stdout and "worst median" in r.stdout
    assert "# softnce from " in r.stdout and "(git " in r.stdout
    rows = [line.split()[:2] for line in r.stdout.splitlines() if not line.startswith("#")]
    assert ["8x5", "ours-dense+v"] in rows and ["6x3", "softCE-ST-k2+v"] in rows
    assert not list(tmp_path.glob("*.tmp"))


def test_aggregate_takes_median_min_max_over_processes():
    bench_checks = import_benchmark("bench_checks")
    runs = [{"1x2": {"a": 1.0}}, {"1x2": {"a": 1.3}}, {"1x2": {"a": 1.05}}]
    t = bench_checks.aggregate(runs)["1x2"]["a"]
    assert (t["median"], t["min"], t["max"], t["met"]) == (1.05, 1.0, 1.3, True)
    runs[2]["1x2"]["a"] = 1.2
    assert bench_checks.aggregate(runs)["1x2"]["a"]["met"] is False


def test_bench_checks_rejects_bad_arguments(tmp_path):
    for args, msg in ((["--sizes", "8y5"], "--sizes items must look like 256x100"),
                      (["--sizes", "0x5"], "--sizes items must look like 256x100"),
                      (["--processes", "0"], "--processes must be >= 1, got 0")):
        r = run_benchmark("bench_checks", *args, cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
