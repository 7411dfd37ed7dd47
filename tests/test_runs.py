"""Runs you can use: model.json / best.pt, softnce.load_run, softnce evaluate / calibrate /
predict (issue 14)."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from softnce.harness.config import load_config
from softnce.harness.runs import RunError, load_run, split_logits
from softnce.harness.trainer import train

# calibration and test sizes differ, so a spy on the fitted sample count tells them apart
SPLIT = {"calibration_fraction": 0.15, "test_fraction": 0.25}


def _train(out: Path, **kw) -> dict:
    cfg = load_config(None, None, dataset="digits", epochs=kw.pop("epochs", 2), batch_size=128,
                      output_dir=str(out), quiet=True, tensorboard=False,
                      dataset_options=dict(SPLIT), **kw)
    return train(cfg, log=lambda m: None)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "plain"
    _train(out)
    return out


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ema"
    _train(out, epochs=1, ema=0.5)
    return out


@pytest.fixture()
def run_copy(plain_run, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(plain_run, dst)
    return dst


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from softnce.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _softmax(t: dict) -> torch.Tensor:
    return torch.softmax(t["logits"].double() / t["temperature"], 1).float()


# ------------------------------------------------------------------------- run directory
def test_run_dir_describes_itself(plain_run):
    info = json.loads((plain_run / "model.json").read_text())
    assert info["model"] == "mlp"
    assert info["dataset"]["kind"] == "tabular" and info["dataset"]["num_classes"] == 10
    assert info["dataset"]["input_shape"] == [64]
    assert info["class_names"] == [str(i) for i in range(10)]
    pre = info["preprocessing"]
    assert pre["type"] == "standardize" and len(pre["mean"]) == len(pre["std"]) == 64
    assert info["temperature"] == 1.0 and info["ema"] is False
    summary = json.loads((plain_run / "summary.json").read_text())
    assert "top-1" in summary["best_metric"] and "NLL" in summary["best_metric"]
    best = torch.load(plain_run / "best.pt", map_location="cpu", weights_only=True)
    assert set(best["model"]) == set(torch.load(plain_run / "checkpoint.pt",
                                                weights_only=True)["model"])
    assert best["record"]["step"] == summary["best"]["step"]


def test_last_matches_trainer_test_logits(plain_run):
    run = load_run(plain_run, checkpoint="last")
    assert not run.model.training and run.weights_file == "checkpoint.pt"
    assert run.class_names == [str(i) for i in range(10)] and run.temperature == 1.0
    bundle = run.build_data()
    x = bundle.test.tensors[0]
    want = _softmax(torch.load(plain_run / "test_logits.pt", weights_only=True))
    torch.testing.assert_close(run.predict_proba(x, preprocessed=True), want,
                               atol=1e-5, rtol=1e-4)
    raw = x * bundle.extra["std"] + bundle.extra["mean"]  # the features before standardising
    torch.testing.assert_close(run.predict_proba(raw), want, atol=1e-5, rtol=1e-4)


def test_best_is_the_best_calibration_evaluation(plain_run):
    run = load_run(plain_run)  # checkpoint="best"
    assert run.weights_file == "best.pt"
    summary = json.loads((plain_run / "summary.json").read_text())
    bundle = run.build_data()
    logits, labels = split_logits(run, bundle, "calibration")
    from softnce.harness.evaluation import metrics_from_logits

    m = metrics_from_logits(logits, labels, 1.0)
    assert m["top1"] == pytest.approx(summary["best"]["top1"], abs=1e-6)
    assert m["nll"] == pytest.approx(summary["best"]["nll"], rel=1e-4)
    if summary["best"]["step"] == summary["final"]["step"]:
        want = _softmax(torch.load(plain_run / "test_logits.pt", weights_only=True))
        torch.testing.assert_close(run.predict_proba(bundle.test.tensors[0], preprocessed=True),
                                   want, atol=1e-5, rtol=1e-4)


def test_ema_run_loads_ema_weights(ema_run):
    ckpt = torch.load(ema_run / "checkpoint.pt", weights_only=True)
    ema = {k[len("module."):]: v for k, v in ckpt["ema"].items()}
    for checkpoint in ("last", "best"):
        run = load_run(ema_run, checkpoint=checkpoint)
        sd = run.model.state_dict()
        assert all(torch.equal(sd[k], ema[k]) for k in sd)
        assert any(not torch.equal(sd[k], ckpt["model"][k]) for k in sd)
    want = _softmax(torch.load(ema_run / "test_logits.pt", weights_only=True))
    run = load_run(ema_run, checkpoint="last")
    got = run.predict_proba(run.build_data().test.tensors[0], preprocessed=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_old_run_without_model_json(run_copy):
    (run_copy / "model.json").unlink()
    (run_copy / "best.pt").unlink()
    run = load_run(run_copy, checkpoint="last")
    assert run.kind == "tabular" and run.num_classes == 10
    summary = json.loads((run_copy / "summary.json").read_text())
    if summary["best"]["step"] == summary["final"]["step"]:
        assert load_run(run_copy).weights_file == "checkpoint.pt"
    else:
        with pytest.raises(RunError, match="no best.pt"):
            load_run(run_copy)


# ------------------------------------------------------------------------- safety
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_code_carrying_checkpoint_refused(run_copy, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    with open(run_copy / "best.pt", "wb") as fh:
        pickle.dump({"model": _Payload(marker)}, fh, protocol=2)
    with pytest.raises(ValueError, match="not a weights-only checkpoint"):
        load_run(run_copy)
    code, _, err = run_cli(["evaluate", str(run_copy)], capsys)
    assert code == 2 and "not a weights-only checkpoint" in err and "Traceback" not in err
    code, _, err = run_cli(["predict", str(run_copy), "split:test", "--output",
                            str(tmp_path / "p.csv")], capsys)
    assert code == 2 and "not a weights-only" in err
    assert not marker.exists()
    torch.save({"model": _Payload(marker)}, run_copy / "checkpoint.pt")
    with pytest.raises(RunError, match="not a weights-only"):
        load_run(run_copy, checkpoint="last")
    assert not marker.exists()


def test_import_softnce_stays_light():
    code = ("import sys, softnce; assert 'softnce.harness' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith('softnce'));"
            "assert callable(softnce.load_run); assert 'softnce.harness.runs' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------- commands
def test_evaluate_calibrate_predict_end_to_end(run_copy, tmp_path, capsys, monkeypatch):
    from softnce.metrics import TemperatureScaler

    splits = json.loads((run_copy / "summary.json").read_text())["splits"]
    assert splits["calibration"] != splits["test"]
    fitted: list[int] = []
    orig = TemperatureScaler.fit

    def spy(self, logits, labels, **kw):
        fitted.append(len(labels))
        return orig(self, logits, labels, **kw)

    monkeypatch.setattr(TemperatureScaler, "fit", spy)

    # evaluate
    code, out, err = run_cli(["evaluate", str(run_copy), "--split", "test"], capsys)
    assert code == 0, err
    res_dir = run_copy / "evaluation" / "best-test"
    res = json.loads((res_dir / "evaluation.json").read_text())
    assert (res_dir / "reliability.png").stat().st_size > 0
    assert res["n"] == splits["test"] and set(res) >= {"raw", "ts", "temperature_ts"}
    assert "TS (T=" in out and fitted == [splits["calibration"]]
    code, _, err = run_cli(["evaluate", str(run_copy), "--split", "test"], capsys)
    assert code == 2 and "--overwrite" in err
    assert run_cli(["evaluate", str(run_copy), "--split", "test", "--overwrite"], capsys)[0] == 0

    # calibrate: fitted on the calibration split only
    fitted.clear()
    code, out, err = run_cli(["calibrate", str(run_copy)], capsys)
    assert code == 0, err
    assert fitted == [splits["calibration"]]
    cal = json.loads((run_copy / "calibration.json").read_text())["checkpoints"]["best"]
    assert cal["fitted_on"] == "calibration" and cal["n_calibration"] == splits["calibration"]
    assert cal["test"]["after"]["top1"] == cal["test"]["before"]["top1"]
    assert "test after" in out
    run = load_run(run_copy)
    assert run.temperature == pytest.approx(cal["temperature"]) and run.temperature != 1.0
    assert load_run(run_copy, checkpoint="last").calibration is None  # per checkpoint

    # predict: split, .npz and .csv of raw features agree with load_run
    bundle = run.build_data()
    raw = (bundle.test.tensors[0] * bundle.extra["std"] + bundle.extra["mean"]).numpy()
    want = run.predict_proba(raw)
    np.savez(tmp_path / "x.npz", x=raw)
    np.savetxt(tmp_path / "x.csv", raw, delimiter=",", header=",".join(
        f"f{i}" for i in range(64)), comments="")
    for i, src in enumerate(("split:test", str(tmp_path / "x.npz"), str(tmp_path / "x.csv"))):
        dst = tmp_path / f"p{i}.csv"
        code, out, err = run_cli(["predict", str(run_copy), src, "--output", str(dst),
                                  "--topk", "3"], capsys)
        assert code == 0, err
        assert "(calibrated)" in out
        import csv

        rows = list(csv.DictReader(open(dst)))
        assert len(rows) == splits["test"]
        top = want.topk(3, 1)
        for r in (0, 7, len(rows) - 1):
            assert int(rows[r]["top1"]) == int(top.indices[r, 0])
            assert rows[r]["top2_name"] == run.class_names[int(top.indices[r, 1])]
            assert float(rows[r]["top1_prob"]) == pytest.approx(float(top.values[r, 0]),
                                                                abs=1e-5)
        if src == "split:test":
            assert rows[0]["label"] == str(int(bundle.test.tensors[1][0]))
    code, _, err = run_cli(["predict", str(run_copy), "split:test", "--output",
                            str(tmp_path / "p0.csv")], capsys)
    assert code == 2 and "already exists" in err


def test_bad_inputs_exit_2(run_copy, tmp_path, capsys):
    def fails(argv, needle):
        code, _, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        assert needle in err and "Traceback" not in err, err

    out = str(tmp_path / "p.csv")
    fails(["evaluate", str(tmp_path / "missing")], "not a run directory")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((run_copy / "config.json").read_text())
    fails(["calibrate", str(unfinished)], "not a finished run")
    summary = json.loads((run_copy / "summary.json").read_text())
    shutil.copytree(run_copy, tmp_path / "incomplete")
    (tmp_path / "incomplete" / "summary.json").write_text(json.dumps({**summary,
                                                                      "complete": False}))
    fails(["predict", str(tmp_path / "incomplete"), "split:test", "--output", out],
          "not a finished run")
    np.savez(tmp_path / "bad.npz", x=np.zeros((4, 5), np.float32))
    fails(["predict", str(run_copy), str(tmp_path / "bad.npz"), "--output", out],
          "expects 64")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,6\n")
    fails(["predict", str(run_copy), str(tmp_path / "bad.csv"), "--output", out], "expects 64")
    fails(["predict", str(run_copy), str(tmp_path / "nothing.npz"), "--output", out],
          "no such file")
    fails(["predict", str(run_copy), str(tmp_path), "--output", out], "tabular run")
    fails(["predict", str(run_copy), "split:train", "--output", out], "split:test")
    fails(["predict", str(run_copy), "split:test", "--output", out, "--topk", "0"], "--topk")
    Path(out).write_text("x\n")
    fails(["predict", str(run_copy), "split:test", "--output", out], "already exists")
    # a data set whose classes differ from the run's
    cfg = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**cfg, "dataset": "wine",
                                                      "dataset_options": {}}))
    fails(["evaluate", str(run_copy), "--output-dir", str(tmp_path / "ev")], "3 classes")
    fails(["calibrate", str(run_copy)], "trained on 10 classes")


# ------------------------------------------------------------------- image and graph runs
def _image_tree(root: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for col, name in enumerate(("red", "green", "blue")):
            for i in range(n):
                arr = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
                arr[..., col] += 150
                p = root / split / name / f"{name}_{i}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(p)


def test_image_run_predicts_a_folder_with_class_names(tmp_path, capsys):
    """An ImageFolder run trained with timm MixUp/CutMix (sparse targets): load_run knows the
    class names and the eval transform; predict on a folder of images matches load_run."""
    pytest.importorskip("timm")
    import csv

    from PIL import Image

    from softnce.harness.runs import image_transform

    data = tmp_path / "data"
    _image_tree(data)
    out = tmp_path / "run"
    cfg = load_config(None, None, dataset="imagefolder", data_path=str(data), model="cnn",
                      input_size=16, loss="soft-infonce", mixup=0.8, cutmix=1.0, smoothing=0.1,
                      epochs=2, batch_size=8, output_dir=str(out), quiet=True, tensorboard=False,
                      dataset_options={"calibration_fraction": 0.25, "split_seed": 0})
    train(cfg, log=lambda m: None)
    run = load_run(out)
    assert run.kind == "image" and run.class_names == ["blue", "green", "red"]
    assert run_cli(["calibrate", str(out), "--data-path", str(data)], capsys)[0] == 0
    run = load_run(out)
    code, msg, err = run_cli(["predict", str(out), str(data / "val"), "--output",
                              str(tmp_path / "p.csv")], capsys)
    assert code == 0, err
    assert "(calibrated)" in msg
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    files = sorted((data / "val").rglob("*.png"))
    assert [r["id"] for r in rows] == [str(p.relative_to(data / "val")) for p in files]
    tf = image_transform(run)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in files])
    want = run.predict_proba(x, preprocessed=True)
    for r, row in enumerate(rows):
        assert row["top1_name"] == run.class_names[int(want[r].argmax())]
        assert float(row["top1_prob"]) == pytest.approx(float(want[r].max()), abs=1e-5)
    code, _, err = run_cli(["predict", str(out), str(tmp_path / "p.csv"), "--output",
                            str(tmp_path / "q.csv")], capsys)
    assert code == 2 and "tabular run" in err


def test_graph_run_evaluates_and_predicts_its_validation_split(tmp_path, capsys):
    """CellTypeGraph holds a fold's held-out graphs as its validation split (no test split)."""
    pytest.importorskip("torch_geometric")
    import csv

    from softnce.data.celltypegraph import make_synthetic

    data = tmp_path / "ctg"
    make_synthetic(data, num_stacks=10, seed=1, min_cells=12, max_cells=20)
    out = tmp_path / "run"
    cfg = load_config(None, None, dataset="celltypegraph", data_path=str(data), model="gcn",
                      model_options={"hidden": 16}, loss="soft-infonce", smoothing=0.1,
                      epochs=2, output_dir=str(out), quiet=True, tensorboard=False)
    train(cfg, log=lambda m: None)
    run = load_run(out)
    assert run.kind == "graph"
    code, _, err = run_cli(["evaluate", str(out), "--split", "test"], capsys)
    assert code == 2 and "no test split" in err
    assert not (out / "evaluation" / "best-test").exists()   # nothing written on error
    code, _, err = run_cli(["evaluate", str(out), "--split", "val"], capsys)
    assert code == 0, err
    res = json.loads((out / "evaluation" / "best-calibration" / "evaluation.json").read_text())
    code, _, err = run_cli(["predict", str(out), "split:val", "--output",
                            str(tmp_path / "g.csv")], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "g.csv")))
    assert len(rows) == res["n"] > 0
    top1 = np.mean([r["top1"] == r["label"] for r in rows])
    assert top1 == pytest.approx(res["raw"]["top1"], abs=1e-9)
    code, _, err = run_cli(["predict", str(out), str(tmp_path), "--output",
                            str(tmp_path / "h.csv")], capsys)
    assert code == 2 and "graph run" in err
