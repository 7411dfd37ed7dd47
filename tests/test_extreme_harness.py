"""The ``extreme-synthetic`` data set and ``softnce train --head embedding`` end to end."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from softnce.data import DATASETS, DataError
from softnce.data.extreme import ExtremeGaussian, build_extreme_synthetic, hash_normal


def _cfg(c=300, **opts):
    return SimpleNamespace(num_classes=c, dataset_options=opts, seed=0)


# ------------------------------------------------------------------------------ data set
def test_registered_and_deterministic():
    assert "extreme-synthetic" in DATASETS.names()
    a = build_extreme_synthetic(_cfg(n_val=50))
    b = build_extreme_synthetic(_cfg(n_val=50))
    idx = [5, 0, 2999, 17]
    xa, ya = a.train.batch(idx)
    xb, yb = b.train.batch(idx)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.shape == (4, 64) and xa.dtype == torch.float32 and ya.dtype == torch.int64
    assert torch.equal(a.val_true_probs, b.val_true_probs)
    # single items equal batch rows, whatever the order of requests
    x17, y17 = a.train[17]
    assert torch.equal(x17, xa[3]) and int(y17) == int(ya[3])
    other = build_extreme_synthetic(_cfg(n_val=50, seed=1))
    assert not torch.equal(other.train.batch(idx)[0], xa)
    assert not torch.equal(a.val.batch([0, 1])[0], a.train.batch([0, 1])[0])  # split streams


def test_shapes_labels_and_loader():
    bundle = build_extreme_synthetic(_cfg(c=250, dim=8))
    assert bundle.num_classes == 250 and bundle.input_shape == (8,)
    assert len(bundle.train) == 2500 and len(bundle.val) == 500
    assert bundle.default_model == "head-only" and bundle.kind == "tabular"
    counts = torch.bincount(bundle.train_labels, minlength=250)
    assert torch.all(counts == 10)  # balanced: every class 10 times
    assert torch.equal(bundle.train_labels, bundle.train.labels)
    loader = DataLoader(bundle.train, batch_size=64, shuffle=False)
    x, y = next(iter(loader))
    xr, yr = bundle.train.batch(list(range(64)))
    assert torch.equal(x, xr) and torch.equal(y, yr)


def test_samples_follow_the_gaussian_model():
    z = hash_normal(3, 2, np.arange(4000), 50).ravel()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    from scipy import stats

    assert stats.kstest(z[:20000], "norm").pvalue > 1e-3
    ds = build_extreme_synthetic(_cfg(c=20, dim=6, sigma=0.3, n_train=4000)).train
    x, y = ds.batch(np.arange(4000))
    resid = x - ds.prototypes(y.numpy())
    assert abs(float(resid.std()) - 0.3) < 0.01
    # prototype scale: E||mu||^2 = separation^2 = 1
    assert abs(float((ds.prototypes(np.arange(20)) ** 2).sum(1).mean()) - 1.0) < 0.25


def test_true_posterior_matches_direct_computation():
    bundle = build_extreme_synthetic(_cfg(c=40, dim=5, sigma=0.25, n_val=30, imbalance=3.0))
    p = bundle.val_true_probs
    assert p.shape == (30, 40)
    torch.testing.assert_close(p.sum(1), torch.ones(30))
    x, _ = bundle.val.batch(np.arange(30))
    mu = bundle.val.prototypes(np.arange(40)).double()
    pi = bundle.extra["class_prior"].double()
    logits = -((x.double()[:, None, :] - mu[None]) ** 2).sum(-1) / (2 * 0.25**2) + pi.log()
    torch.testing.assert_close(p, torch.softmax(logits, 1).float(), rtol=1e-4, atol=1e-6)
    assert float(pi[0] / pi[-1]) == pytest.approx(3.0)


def test_imbalanced_labels_follow_the_prior():
    bundle = build_extreme_synthetic(_cfg(c=10, imbalance=8.0, n_train=40000, n_val=10))
    freq = torch.bincount(bundle.train_labels, minlength=10).double() / 40000
    torch.testing.assert_close(freq, bundle.extra["class_prior"].double(), atol=0.01, rtol=0)


def test_large_label_space_is_lazy():
    bundle = build_extreme_synthetic(_cfg(c=1_000_000, n_val=1000))
    assert bundle.val_true_probs is None  # 1000 x 10^6 would not fit: not computed
    assert len(bundle.train) == 10_000_000
    # only the labels are stored; any batch is generated on demand
    held = [t for t in vars(bundle.train).values() if isinstance(t, torch.Tensor)]
    assert sum(t.numel() for t in held) == 10_000_000
    x, y = bundle.train.batch([9_999_999, 0])
    assert x.shape == (2, 64) and int(y[0]) == 999_999


@pytest.mark.parametrize("opts,match", [
    ({"sigmaa": 1}, "unknown dataset_options 'sigmaa'"),
    ({"sigma": 0}, "sigma must be a number > 0"),
    ({"dim": 2.5}, "dim must be an integer"),
    ({"imbalance": 0.5}, "imbalance must be a number >= 1"),
])
def test_bad_options_raise_data_error(opts, match):
    with pytest.raises(DataError, match=match):
        build_extreme_synthetic(_cfg(**opts))
    with pytest.raises(DataError, match="num_classes must be an int >= 2"):
        build_extreme_synthetic(_cfg(c=1))


def test_index_errors():
    ds = ExtremeGaussian(torch.arange(5), 3, 1.0, 1.0, 0, 2)
    with pytest.raises(IndexError):
        ds[5]
    assert torch.equal(ds[-1][0], ds[4][0])


# ----------------------------------------------------------------------- harness end to end
def _train(tmp_path, name, *extra):
    from softnce.cli import main

    out = tmp_path / name
    argv = ["train", "--dataset", "extreme-synthetic", "--num-classes", "2000",
            "--epochs", "3", "--batch-size", "256", "--lr", "0.05", "--quiet",
            "--output-dir", str(out), "--set", "cpu_threads=1", "--set", "tensorboard=false",
            "--set", "dataset_options.n_train=8000", "--set", "dataset_options.n_val=1000",
            *extra]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text()), out


def test_train_embedding_head_beats_chance_and_matches_the_linear_head(tmp_path):
    """The same run with ``--head embedding`` (no (N, C) logits, chunked evaluation) and with
    ``--head linear`` (full logits) follows the same trajectory: same init, same loss values up to
    rounding. Label smoothing + MixUp exercise the uniform part (mean row of E)."""
    mix = ["--set", "smoothing=0.1", "--set", "mixup=0.2"]
    emb, out = _train(tmp_path, "emb", "--head", "embedding", *mix)
    lin, _ = _train(tmp_path, "lin", "--head", "linear", *mix)
    chance = 1 / 2000
    assert emb["model"] == "head-only"
    assert emb["final"]["top1"] > 200 * chance  # > 0.1; chance is 0.0005
    assert emb["final"]["nll"] < math.log(2000) - 1.0
    assert not (out / "val_logits.pt").exists()  # the eval_stats hook never builds (N, C)
    for key in ("top1", "top5"):  # at most two of the 1000 samples may flip by rounding
        assert emb["final"][key] == pytest.approx(lin["final"][key], abs=2e-3), key
    for key in ("nll", "brier", "ece", "train_loss"):
        assert emb["final"][key] == pytest.approx(lin["final"][key], rel=1e-4), key


def test_train_embedding_head_hundred_thousand_classes(tmp_path):
    """``--num-classes 100000`` on CPU: hard-label InfoNCE with sampled negatives and the MLP
    backbone; a few steps, evaluation over all 10^5 classes in chunks."""
    from softnce.cli import main

    out = tmp_path / "big"
    argv = ["train", "--dataset", "extreme-synthetic", "--num-classes", "100000",
            "--head", "embedding", "--model", "mlp", "--loss", "infonce", "--negatives", "sampled",
            "--max-steps", "4", "--batch-size", "128", "--quiet", "--output-dir", str(out),
            "--set", "cpu_threads=1", "--set", "tensorboard=false",
            "--set", "dataset_options.n_val=300", "--set", "model_options.hidden=[64]"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4
    final = summary["final"]
    assert final["n"] == 300
    assert all(math.isfinite(final[k]) for k in ("nll", "brier", "ece", "train_loss"))
    assert 0 <= final["top5"] <= 1 and final["nll"] == pytest.approx(math.log(1e5), rel=0.05)
