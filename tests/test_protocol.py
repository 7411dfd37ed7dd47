"""The held-out protocol: three-way splits, test metrics raw and after temperature scaling fitted
on the calibration split only, label noise on training labels only, TemperatureScaler bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softnce.data import DATASETS
from softnce.data.tabular import apply_label_noise, three_way_split
from softnce.harness.config import TrainConfig
from softnce.harness.evaluation import heldout_metrics
from softnce.harness.trainer import train
from softnce.metrics import TemperatureScaler


def _bundle(name, **opts):
    return DATASETS.get(name)(TrainConfig(dataset=name, dataset_options=opts).validate())


@pytest.mark.parametrize("name", ["digits", "wine", "breast-cancer", "synthetic", "mnist1d"])
def test_embedded_sets_have_disjoint_train_calibration_test(name):
    b = _bundle(name)
    n = {"train": len(b.train), "calibration": len(b.val), "test": len(b.test)}
    assert {k: b.splits[k] for k in n} == n and min(n.values()) > 0
    if name in ("digits", "wine", "breast-cancer"):  # rows of one pool: no row in two splits
        rows = [{tuple(np.round(r.numpy(), 5)) for r in d.tensors[0]} for d in
                (b.train, b.val, b.test)]
        assert not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    if name == "synthetic":
        assert b.test_true_probs.shape == (len(b.test), b.num_classes)


def test_three_way_split_is_seeded_stratified_and_disjoint():
    y = np.repeat(np.arange(5), 40)
    tr, ca, te = three_way_split(y, 0.2, 0.2, seed=3)
    assert len(set(tr) | set(ca) | set(te)) == len(y) == len(tr) + len(ca) + len(te)
    assert np.bincount(y[te]).tolist() == [8] * 5 and np.bincount(y[ca]).tolist() == [8] * 5
    again = three_way_split(y, 0.2, 0.2, seed=3)
    assert all((a == b).all() for a, b in zip((tr, ca, te), again))
    other = three_way_split(y, 0.2, 0.2, seed=4)
    assert not (other[2] == te).all()


def test_label_noise_touches_training_labels_only():
    clean, noisy = _bundle("digits"), _bundle("digits", label_noise=0.4)
    yt0, yt1 = clean.train.tensors[1], noisy.train.tensors[1]
    frac = float((yt0 != yt1).float().mean())
    assert 0.35 < frac < 0.45
    assert torch.equal(clean.val.tensors[1], noisy.val.tensors[1])
    assert torch.equal(clean.test.tensors[1], noisy.test.tensors[1])
    y = np.arange(1000) % 7
    flipped = apply_label_noise(y, 1.0, 7, seed=0)
    assert (flipped != y).all() and flipped.min() >= 0 and flipped.max() < 7


def test_temperature_is_fitted_on_the_calibration_split_only():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (4000,), generator=g)
    base = torch.randn(4000, 5, generator=g)
    base[torch.arange(4000), labels] += 2.0
    cal, test = slice(0, 2000), slice(2000, 4000)
    # calibration logits are 3x sharper than the test logits: the fit on the calibration split
    # finds a T three times the one a fit on the test split would find
    out = heldout_metrics(3 * base[cal], labels[cal], base[test], labels[test], temperature=1.0)
    t_cal = TemperatureScaler().fit(3 * base[cal], labels[cal]).temperature
    t_test = TemperatureScaler().fit(base[test], labels[test]).temperature
    assert out["temperature_ts"] == pytest.approx(t_cal)
    assert t_cal / t_test == pytest.approx(3.0, rel=0.1)
    nll_at_cal_t = float(torch.nn.functional.cross_entropy(base[test].double() / t_cal,
                                                           labels[test]))
    assert out["nll_ts"] == pytest.approx(nll_at_cal_t, rel=1e-6)
    assert out["top1_ts"] == out["top1"]


def test_run_summary_reports_test_metrics_with_scaling_fitted_on_calibration(tmp_path,
                                                                             monkeypatch):
    seen = []
    fit = TemperatureScaler.fit

    def spy(self, logits, labels, **kw):
        seen.append(len(logits))
        return fit(self, logits, labels, **kw)

    monkeypatch.setattr(TemperatureScaler, "fit", spy)
    cfg = TrainConfig(dataset="digits", loss="soft-ce", smoothing=0.1, epochs=1, quiet=True,
                      output_dir=str(tmp_path / "r"))
    s = train(cfg)
    assert s["splits"]["calibration"] == 360 and s["splits"]["test"] == 360
    assert seen == [360]  # one fit, on the calibration split
    for k in ("top1", "ece", "ace", "nll", "brier"):
        assert math.isfinite(s["test"][k]) and math.isfinite(s["test"][f"{k}_ts"])
    assert s["test"]["temperature_ts"] > 0


def test_temperature_scaler_bounds_that_exclude_one():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 4, generator=g)
    y = torch.randint(0, 4, (500,), generator=g)
    s = TemperatureScaler(bounds=(2.0, 10.0)).fit(z, y)
    assert 2.0 <= s.temperature <= 10.0
    rep = s.report()
    nll_at = float(torch.nn.functional.cross_entropy(z.double() / s.temperature, y))
    assert rep["nll_after"] == pytest.approx(nll_at, rel=1e-9)
    assert rep["nll_before"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        z.double(), y)), rel=1e-9)


def test_steps_per_epoch_do_not_depend_on_how_the_step_is_split(tmp_path):
    from softnce.harness.trainer import Trainer

    def steps(**kw):
        cfg = TrainConfig(dataset="digits", loss="nll", epochs=1, quiet=True, max_steps=1,
                          output_dir=str(tmp_path / str(len(list(tmp_path.iterdir())))), **kw)
        tr = Trainer(cfg)
        tr.run()
        return tr.steps_per_epoch

    assert steps(batch_size=64) == steps(batch_size=16, accum_steps=4) == 1077 // 64


def test_metrics_share_the_validation_vocabulary():
    """One tolerance rule (dtype-aware) and one temperature checker for the metrics too."""
    from softnce.metrics import CalibrationMeter, expected_calibration_error

    y = torch.tensor([0, 1, 2, 0])
    p = torch.softmax(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 1)
    bf = (p * 0.9985).to(torch.bfloat16)  # rows sum to ~0.9985: valid in bfloat16
    assert math.isfinite(float(expected_calibration_error(bf, y)))
    with pytest.raises(ValueError, match="must sum to 1"):
        expected_calibration_error(p * 0.9, y)
    with pytest.raises(TypeError, match="temperature"):
        CalibrationMeter(temperature="hot")
    with pytest.raises(TypeError, match="temperature"):
        TemperatureScaler(temperature=None)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaler(temperature=-1.0)


@pytest.mark.parametrize("loss, extra", [("infonce", {}), ("soft-infonce", {"smoothing": 0.1}),
                                         ("infonce", {"noise": "uniform"})])
def test_accumulation_sees_the_whole_step_as_candidates(tmp_path, loss, extra):
    """--batch-size 16 --set accum_steps=4 trains like --batch-size 64: the same first-step
    loss and the same weights after it (up to float rounding), for the InfoNCE losses."""
    from softnce.harness.trainer import Trainer

    def one_step(name, **kw):
        cfg = TrainConfig(dataset="digits", loss=loss, epochs=1, max_steps=1, quiet=True,
                          model_options={"dropout": 0.0}, output_dir=str(tmp_path / name),
                          **extra, **kw)
        tr = Trainer(cfg)
        tr.run()
        return tr.records[-1]["train_loss"], {k: v.clone() for k, v in
                                              tr.model.state_dict().items()}

    loss64, w64 = one_step("b64", batch_size=64)
    loss16, w16 = one_step("b16", batch_size=16, accum_steps=4)
    assert loss16 == pytest.approx(loss64, rel=1e-5)
    for k in w64:
        torch.testing.assert_close(w16[k], w64[k], rtol=1e-4, atol=1e-6)
