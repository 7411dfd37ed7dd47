"""``softnce study``: every study's --quick end to end, resume, --jobs, bad input, verdicts."""

from __future__ import annotations

import csv
import json
import re
import shutil

import pytest

from softnce.cli import main
from softnce.experiments import runner, study


def _study(argv, out):
    return main(["study", *argv, "--output-dir", str(out)])


def _label_noise_supported() -> bool:
    from softnce.data import DATASETS, DataError
    from softnce.harness.config import TrainConfig

    cfg = TrainConfig.from_dict({"dataset": "digits",
                                 "dataset_options": {"label_noise": 0.1}})
    try:
        DATASETS.get("digits")(cfg)
    except DataError:
        return False
    return True


QUICK = [("smoothing", []), ("batch-size", []), ("head", []), ("temperature", []),
         ("noise", []), ("datasets", []),
         ("custom", ["--grid", "smoothing=0,0.1", "--grid", "batch_size=32,128",
                     "--losses", "soft-ce,soft-infonce"])]


@pytest.mark.parametrize("name,extra", QUICK, ids=[q[0] for q in QUICK])
def test_quick_study_writes_outputs(tmp_path, capsys, name, extra):
    out = tmp_path / name
    assert _study([name, "--quick", *extra], out) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("planned ") and "estimate" in stdout
    summary = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == len(summary["runs"]) > 0
    assert {"loss", "seed", "split", "top1", "ece", "nll"} <= set(rows[0])
    assert summary["settings"]["split"] in ("test", "validation")
    assert summary["settings"]["seeds"] == [0, 1]
    assert summary["statement"].startswith("95% Student-t intervals over seeds (ddof=1)")
    report = (out / "report.md").read_text()
    assert report.startswith(f"# softnce study {name}")
    assert "95% Student-t intervals over seeds (ddof=1); paired differences against" in report
    assert f"Split: **{summary['settings']['split']}**" in report
    assert "`softnce study " in report and (out / "metrics.png").is_file()
    for r in summary["runs"]:
        assert (out / r["run_dir"] / "summary.json").is_file()
    for c in summary["cells"]:
        assert c["metrics"]["top1"]["n"] == 2 and c["metrics"]["top1"]["ci_low"] is not None
    for v in summary["verdicts"]:
        assert v["verdict"] in ("holds", "does not hold", "inconclusive")
        assert v["sentence"].endswith(")") and v["verdict"] in v["sentence"]
    if name == "batch-size":  # the references are swept over the batch size only
        refs = [r for r in rows if r["loss"] == "soft-ce"]
        assert refs and {r["negatives"] for r in refs} == {"-"}
    if name == "noise":
        assert summary["settings"]["reference"] == "infonce"
        assert summary["settings"]["dataset"] == "synthetic"


def test_label_noise_study(tmp_path, capsys):
    out = tmp_path / "ln"
    if _label_noise_supported():
        assert _study(["label-noise", "--quick", "--quiet"], out) == 0
        assert (out / "report.md").is_file()
        return
    with pytest.raises(SystemExit) as e:
        _study(["label-noise", "--quick", "--quiet"], out)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "softnce study: error:" in err and "label_noise" in err
    assert not out.exists()  # nothing trained


def _strip_wall(text: str) -> str:
    text = re.sub(r"Wall time: [0-9.]+ s\.", "Wall time: X s.", text)
    return re.sub(r'"wall_time_s": [0-9.e+-]+', '"wall_time_s": X', text)


ARGS = ["smoothing", "--quick", "--quiet", "--losses", "soft-ce,soft-infonce", "--seeds", "2",
        "--set", "max_steps=3"]


def test_resume_of_a_killed_study_gives_the_same_report(tmp_path, monkeypatch, capsys):
    a = tmp_path / "a"
    assert _study(ARGS, a) == 0
    ref = {f: _strip_wall((a / f).read_text()) for f in ("report.md", "summary.json",
                                                          "results.csv")}
    # kill 1: some run directories gone, one summary.json gone (a run killed mid-training)
    shutil.rmtree(a / "runs" / "smoothing=0.1" / "soft-infonce")
    (a / "runs" / "smoothing=0" / "soft-ce" / "seed1" / "summary.json").unlink()
    calls = []
    real = runner._train_one
    monkeypatch.setattr(runner, "_train_one", lambda cfg: calls.append(cfg) or real(cfg))
    assert _study(ARGS, a) == 0
    assert len(calls) == 3  # only the missing runs trained
    for f, text in ref.items():
        assert _strip_wall((a / f).read_text()) == text, f

    # kill 2: the training raises after 3 runs; the rerun finishes the other 5
    b = tmp_path / "b"
    count = {"n": 0}

    def dying(cfg):
        count["n"] += 1
        if count["n"] > 3:
            raise KeyboardInterrupt
        return real(cfg)

    monkeypatch.setattr(runner, "_train_one", dying)
    with pytest.raises(KeyboardInterrupt):
        _study(ARGS, b)
    calls.clear()
    monkeypatch.setattr(runner, "_train_one", lambda cfg: calls.append(cfg) or real(cfg))
    assert _study(ARGS, b) == 0
    assert len(calls) == 5
    for f, text in ref.items():
        assert _strip_wall((b / f).read_text()).replace(str(b), str(a)) == text, f

    # a different grid in the same directory is refused, --overwrite replaces it
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        _study([*ARGS, "--seeds", "3"], a)
    assert e.value.code == 2 and "holds a different study" in capsys.readouterr().err


def test_jobs_2_equals_jobs_1(tmp_path):
    args = ["custom", "--grid", "smoothing=0,0.2", "--losses", "soft-ce", "--seeds", "2",
            "--quick", "--quiet", "--set", "max_steps=3"]
    assert _study(args, tmp_path / "j1") == 0
    assert _study([*args, "--jobs", "2"], tmp_path / "j2") == 0
    assert (tmp_path / "j1" / "results.csv").read_text() == \
        (tmp_path / "j2" / "results.csv").read_text()


BAD = [
    (["nope"], "unknown study 'nope'"),
    (["custom"], "needs a grid"),
    (["custom", "--grid", "nosuchkey=1,2"], "unknown config key 'nosuchkey'"),
    (["custom", "--grid", "smoothing="], "empty list of values"),
    (["custom", "--grid", "smoothing=0,2", "--losses", "soft-ce"],
     "smoothing must be in [0, 1)"),
    (["custom", "--grid", "batch_size=abc"], "batch_size must be an integer"),
    (["custom", "--grid", "lr.x=1"], "dotted keys only reach"),
    (["custom", "--grid", "model_options.x=a/b"], "cannot name a directory"),
    (["custom", "--grid", "dataset_options.x=.."], "cannot name a directory"),
    (["smoothing", "--grid", "smoothing=0,0.1"], "only applies to study custom"),
    (["custom", "--grid", "negatives=batch,queue", "--losses", "nll,infonce"],
     "does not apply to loss 'nll'"),
    (["custom", "--grid", "smoothing=0,0.1", "--losses", "nll"], "does not apply to loss"),
    (["temperature", "--losses", "nll,soft-ce"], "temperature must be 1"),
    (["smoothing", "--losses", "soft-ce,../x"], "cannot name a directory"),
    (["smoothing", "--losses", "soft-ce,bogus"], "unknown compare loss"),
    (["smoothing", "--reference", "nll"], "--reference 'nll' is not among the losses"),
    (["smoothing", "--set", "smoothing=0.1"], "the study sweeps that key"),
    (["noise", "--dataset", "digits"], "sets the data sets itself"),
    (["smoothing", "--dataset", "nosuchdata"], "unknown dataset"),
    (["smoothing", "--jobs", "0"], "--jobs must be >= 1"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_input_exits_2_before_training(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        _study([*argv, "--quick"], out)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "softnce study: error:" in err and message in err, err
    assert not out.exists()


def _rows(values):
    """Constructed results: {loss: [ece per seed]} in one cell."""
    return [{"cell": {"smoothing": "0.1"}, "cell_name": "smoothing=0.1", "loss": loss,
             "seed": s, "split": "test", "splits": None, "run_dir": "x",
             "metrics": {"top1": 0.9, "ece": v, "ece_ts": 0.02}}
            for loss, vs in values.items() for s, v in enumerate(vs)]


def test_verdict_sentences_come_from_verdict(monkeypatch):
    axes = [study._axis("smoothing", [0.1])]
    rows = _rows({"soft-ce": [0.050, 0.060, 0.055], "soft-infonce": [0.030, 0.041, 0.034]})
    agg = study.aggregate(rows, axes, ["soft-ce", "soft-infonce"], "soft-ce")
    by = {v["metric"]: v for v in agg["verdicts"]}
    assert by["ece"]["sentence"].startswith(
        "at smoothing=0.1: soft-infonce has lower ECE than soft-ce: holds (diff -0.0200 [")
    assert by["ece_ts"]["verdict"] == "inconclusive"  # identical values: zero-width interval
    assert "after temperature scaling" in by["ece_ts"]["sentence"]
    assert by["top1"]["sentence"].startswith("at smoothing=0.1: soft-infonce has higher top-1")
    rows = _rows({"soft-ce": [0.03, 0.04, 0.035], "soft-infonce": [0.05, 0.061, 0.054]})
    agg = study.aggregate(rows, axes, ["soft-ce", "soft-infonce"], "soft-ce")
    assert {v["metric"]: v["verdict"] for v in agg["verdicts"]}["ece"] == "does not hold"

    seen = []

    def fake(diff, better):
        seen.append((round(diff["mean"], 6), better))
        return "inconclusive"

    monkeypatch.setattr("softnce.metrics.stats.verdict", fake)
    agg = study.aggregate(rows, axes, ["soft-ce", "soft-infonce"], "soft-ce")
    assert (0.02, "lower") in seen and (0.0, "higher") in seen
    assert all(v["verdict"] == "inconclusive" for v in agg["verdicts"])


def test_runner_reuses_only_complete_matching_runs(tmp_path):
    from softnce.harness.config import TrainConfig

    cfg = TrainConfig.from_dict({"dataset": "digits", "model": "mlp", "epochs": 1,
                                 "max_steps": 2, "quiet": True, "tensorboard": False,
                                 "output_dir": str(tmp_path / "r")})
    r = runner.PlannedRun({}, "soft-infonce", 0, cfg)
    lines = []
    [s] = runner.run_all([r], echo=lines.append)
    assert s["complete"] and runner.completed_summary(tmp_path / "r", cfg) is not None
    assert runner.completed_summary(tmp_path / "r", cfg.replace(lr=0.5)) is None
    assert runner.completed_summary(tmp_path / "r", cfg.replace(cpu_threads=1)) is not None
    assert lines[0].startswith("planned 1 run(s): 0 already complete, 1 to train")
    lines.clear()
    runner.run_all([r], echo=lines.append)
    assert lines == ["planned 1 run(s): 1 already complete, 0 to train with 1 job(s); "
                     "estimate ~0 s (rough)"]


def test_test_split_and_scaled_metrics_are_used_when_the_harness_writes_them(tmp_path,
                                                                             monkeypatch):
    """The protocol block ``"test"`` (raw and ``_ts`` metrics) wins over ``"final"``."""
    real = runner._train_one

    def with_test_block(cfg):
        s = real(cfg)
        f = s["final"]
        s["test"] = {**{k: f[k] for k in ("top1", "top5", "ece", "ace", "mce", "nll", "brier")},
                     **{k + "_ts": f[k] / 2 for k in ("ece", "nll")}, "temperature_ts": 1.5}
        s["splits"] = {"train": 1, "calibration": 2, "test": 3}
        return s

    monkeypatch.setattr(runner, "_train_one", with_test_block)
    out = tmp_path / "t"
    assert _study(["custom", "--grid", "smoothing=0,0.1", "--losses", "soft-ce,soft-infonce",
                   "--quick", "--quiet", "--set", "max_steps=2"], out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["split"] == "test"
    assert summary["settings"]["splits"] == {"train": 1, "calibration": 2, "test": 3}
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert {"ece_ts", "nll_ts", "temperature_ts"} <= set(header)
    assert any(v["metric"] == "ece_ts" for v in summary["verdicts"])
    assert (out / "ece_scaling.png").is_file()
    report = (out / "report.md").read_text()
    assert "Split: **test**" in report and "ECE after temperature scaling" in report
