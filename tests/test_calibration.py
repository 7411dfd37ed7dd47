"""Tests for softnce.calibration: oracle (torchmetrics), hand-computed cases, soft targets,
streaming vs one-shot, two-process gloo, temperature scaling, plots and bad input."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _helpers import free_port as _free_port
from _helpers import run_workers
from softnce.metrics import (
    CalibrationMeter,
    ReliabilityCurve,
    TemperatureScaler,
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    plot_reliability_diagram,
    reliability_curve,
    top_k_accuracy,
)
from softnce.metrics.functional import _bin_index

METRIC_FNS = {
    "ece": expected_calibration_error,
    "mce": maximum_calibration_error,
    "ace": adaptive_calibration_error,
    "classwise_ece": classwise_calibration_error,
}


def _one_shot(probs, targets, n_bins=15, topk=(1, 5)) -> dict[str, float]:
    out = {f"top{k}": float(v) for k, v in top_k_accuracy(probs, targets, k=topk).items()}
    for name, fn in METRIC_FNS.items():
        out[name] = float(fn(probs, targets, n_bins))
    out["nll"] = float(negative_log_likelihood(probs, targets))
    out["brier"] = float(brier_score(probs, targets))
    out["n"] = float(probs.shape[0])
    return out


def _random_problem(n, c, seed, scale=2.0, dtype=torch.float64, soft=False):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g) * scale).to(dtype)
    if soft:
        targets = torch.softmax(torch.randn(n, c, generator=g) * 3, dim=1).to(dtype)
    else:
        targets = torch.randint(0, c, (n,), generator=g)
    return logits, targets


def _assert_dicts_close(a: dict, b: dict, tol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if math.isnan(b[k]):
            assert math.isnan(a[k]), k
        else:
            assert a[k] == pytest.approx(b[k], abs=tol, rel=0), (k, a[k], b[k])


# ------------------------------------------------------------------------------ oracle


@pytest.mark.parametrize("n_bins", [1, 3, 10, 15, 22])
@pytest.mark.parametrize("num_classes", [2, 7])
def test_ece_mce_match_torchmetrics(n_bins, num_classes):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels = _random_problem(
        3000, num_classes, seed=n_bins * 10 + num_classes, dtype=torch.float32
    )
    probs = logits.softmax(dim=1)
    # torchmetrics puts a confidence of exactly 1.0 in a hidden extra bin; keep away from it
    assert float(probs.max()) < 1.0
    ours_ece = float(expected_calibration_error(probs, labels, n_bins))
    ours_mce = float(maximum_calibration_error(probs, labels, n_bins))
    ref_ece = float(
        tm.multiclass_calibration_error(probs, labels, num_classes, n_bins=n_bins, norm="l1")
    )
    ref_mce = float(
        tm.multiclass_calibration_error(probs, labels, num_classes, n_bins=n_bins, norm="max")
    )
    assert ours_ece == pytest.approx(ref_ece, abs=1e-6, rel=0)
    assert ours_mce == pytest.approx(ref_mce, abs=1e-6, rel=0)
    assert ours_ece > 0.01  # random labels: badly calibrated, so the comparison is not vacuous


# ------------------------------------------------------------------------------ hand-computed

# C = 3; confidences 0.45 (bin 0 of 2) and 0.85 (bin 1 of 2); label 0 = correct, 1 = wrong.
HAND_PROBS = torch.tensor(
    [
        [0.45, 0.35, 0.20],
        [0.45, 0.35, 0.20],
        [0.85, 0.10, 0.05],
        [0.85, 0.10, 0.05],
        [0.85, 0.10, 0.05],
    ]
)
HAND_LABELS = torch.tensor([0, 1, 0, 0, 1])


def test_hand_all_bins_occupied():
    # bin 0: conf .45, acc 1/2 -> gap .05 * 2/5; bin 1: conf .85, acc 2/3 -> gap 11/60 * 3/5
    ece = expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=2)
    assert float(ece) == pytest.approx(0.05 * 2 / 5 + (0.85 - 2 / 3) * 3 / 5, abs=1e-6)
    assert float(ece) == pytest.approx(0.13, abs=1e-6)
    mce = maximum_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=2)
    assert float(mce) == pytest.approx(0.85 - 2 / 3, abs=1e-6)
    curve = reliability_curve(HAND_PROBS, HAND_LABELS, n_bins=2)
    assert curve.count.tolist() == [2, 3]
    assert curve.accuracy.tolist() == pytest.approx([0.5, 2 / 3])
    assert curve.confidence.tolist() == pytest.approx([0.45, 0.85])
    assert curve.bin_edges.tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert curve.ece == pytest.approx(float(ece))
    assert curve.mce == pytest.approx(float(mce))


def test_hand_empty_bins():
    ece = expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=10)
    assert float(ece) == pytest.approx(0.13, abs=1e-6)  # same groups, 8 empty bins ignored
    mce = maximum_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=10)
    assert float(mce) == pytest.approx(0.85 - 2 / 3, abs=1e-6)  # empty bins do not count
    curve = reliability_curve(HAND_PROBS, HAND_LABELS, n_bins=10)
    assert curve.count.tolist() == [0, 0, 0, 0, 2, 0, 0, 0, 3, 0]
    empty = curve.count == 0
    assert torch.isnan(curve.accuracy[empty]).all() and torch.isnan(curve.confidence[empty]).all()
    assert curve.n == 5


def test_bin_index_edges_zero_and_one():
    for n_bins in (1, 2, 4, 15):
        v = torch.tensor([0.0, 0.5, 1.0])
        idx = _bin_index(v, n_bins).tolist()
        assert idx[0] == 0 and idx[2] == n_bins - 1
        assert idx[1] == n_bins // 2  # left-closed bins: 0.5 opens bin n/2 for even n
    # a top-1 confidence of exactly 0 (only possible without value checks) -> first bin
    curve = reliability_curve(
        torch.zeros(2, 3), torch.tensor([0, 1]), n_bins=4, validate_args=False
    )
    assert curve.count.tolist() == [2, 0, 0, 0]


def test_hand_confidence_exactly_one_and_zero_probabilities():
    probs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 1, 0])
    curve = reliability_curve(probs, labels, n_bins=4)
    assert curve.count.tolist() == [0, 0, 1, 2]  # 1.0 in the last bin, not outside
    assert curve.count.numel() == 4
    # last bin: conf 1, acc 1/2 -> 1/2 * 2/3; bin 2: conf .6, acc 1 -> .4 * 1/3
    assert float(expected_calibration_error(probs, labels, 4)) == pytest.approx(1.4 / 3)
    assert float(maximum_calibration_error(probs, labels, 4)) == pytest.approx(0.5)
    # classwise: class 0 bins {1,1 | y 1,0} and {.6 | 1}: 1 + .4; class 1: p=0,0 (first bin,
    # y 0,1) -> 1 and p=.3 (y 0) -> .3; class 2: p=0,0,.1 all in bin 0, y 0 -> .1
    cw = classwise_calibration_error(probs, labels, 4)
    assert float(cw) == pytest.approx((1.4 + 1.3 + 0.1) / 9)


def test_hand_ace():
    probs = torch.tensor(
        [
            [0.3, 0.25, 0.25, 0.2],
            [0.4, 0.3, 0.2, 0.1],
            [0.6, 0.2, 0.1, 0.1],
            [0.9, 0.05, 0.03, 0.02],
        ]
    )
    labels = torch.tensor([1, 0, 0, 0])  # acc 0, 1, 1, 1
    # two equal-mass bins: {.3, .4} acc .5 conf .35; {.6, .9} acc 1 conf .75
    assert float(adaptive_calibration_error(probs, labels, 2)) == pytest.approx(0.2)
    perm = torch.tensor([3, 1, 0, 2])
    assert float(adaptive_calibration_error(probs[perm], labels[perm], 2)) == pytest.approx(0.2)
    # N < n_bins: every sample alone -> mean |acc - conf|
    assert float(adaptive_calibration_error(probs, labels, 10)) == pytest.approx(0.35)


def test_ace_tied_confidences_do_not_depend_on_order():
    probs = torch.tensor([[0.5, 0.3, 0.2]] * 6 + [[0.8, 0.1, 0.1]] * 2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 0])
    ref = float(adaptive_calibration_error(probs, labels, 3))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        perm = torch.randperm(8, generator=g)
        assert float(adaptive_calibration_error(probs[perm], labels[perm], 3)) == ref


def test_hand_brier_nll_topk():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    labels = torch.tensor([0, 2])
    assert float(brier_score(probs, labels)) == pytest.approx((0.14 + 0.78) / 2, abs=1e-6)
    assert float(negative_log_likelihood(probs, labels)) == pytest.approx(
        -(math.log(0.7) + math.log(0.3)) / 2, abs=1e-6
    )
    acc = top_k_accuracy(probs, labels, k=(1, 2, 5))
    assert {k: float(v) for k, v in acc.items()} == pytest.approx({1: 0.5, 2: 1.0, 5: 1.0})
    # an int k returns a tensor; k > C is clamped to C
    assert float(top_k_accuracy(probs, labels, k=1)) == pytest.approx(0.5)
    assert float(top_k_accuracy(probs.log(), labels, k=100)) == 1.0


def test_perfectly_calibrated_model_ece_shrinks_with_n():
    def ece_at(n, seed):
        g = torch.Generator().manual_seed(seed)
        probs = torch.softmax(torch.randn(n, 10, generator=g, dtype=torch.float64) * 2, dim=1)
        labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
        return float(expected_calibration_error(probs, labels))

    small, medium, large = ece_at(300, 0), ece_at(5_000, 1), ece_at(100_000, 2)
    assert small > medium > large
    assert large < 0.01


def test_perfectly_wrong_model():
    n, c = 50, 4
    labels = torch.arange(n) % c
    probs = F.one_hot((labels + 1) % c, c).float()
    assert float(expected_calibration_error(probs, labels)) == 1.0
    assert float(maximum_calibration_error(probs, labels)) == 1.0
    assert float(adaptive_calibration_error(probs, labels)) == 1.0
    assert float(brier_score(probs, labels)) == 2.0
    assert float(top_k_accuracy(probs, labels, k=1)) == 0.0
    # p(true) = 0 is clamped at finfo(float32).tiny: finite, about 87.3
    nll = float(negative_log_likelihood(probs, labels))
    assert nll == pytest.approx(-math.log(torch.finfo(torch.float32).tiny))
    # classwise: every class has p=1 where y=0 and p=0 where y=1 -> 1/C * 2 per class
    assert float(classwise_calibration_error(probs, labels)) == pytest.approx(2 / c)


def test_classwise_matches_per_class_binary_ece():
    logits, labels = _random_problem(800, 5, seed=3)
    probs = logits.softmax(1)
    manual = 0.0
    for c in range(5):
        p = probs[:, c]
        y = (labels == c).double()
        idx = _bin_index(p, 15)
        for b in range(15):
            m = idx == b
            manual += float((y[m].sum() - p[m].sum()).abs()) / 800
    assert float(classwise_calibration_error(probs, labels)) == pytest.approx(manual / 5)


# ------------------------------------------------------------------------------ soft targets


def test_one_hot_soft_targets_equal_integer_labels():
    logits, labels = _random_problem(500, 6, seed=4)
    probs = logits.softmax(1)
    onehot = F.one_hot(labels, 6).double()
    _assert_dicts_close(
        _one_shot(probs, onehot, n_bins=12), _one_shot(probs, labels, n_bins=12), tol=1e-12
    )
    curve_a = reliability_curve(probs, onehot)
    curve_b = reliability_curve(probs, labels)
    assert torch.equal(curve_a.count, curve_b.count)


def test_soft_targets_use_target_mass_on_predicted_class():
    probs = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    soft = torch.tensor([[0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)
    # bin of 1: conf .8, acc .6 and conf .7, acc .5 -> same last bin with n_bins=2
    ece = float(expected_calibration_error(probs, soft, 2))
    assert ece == pytest.approx(abs((0.6 + 0.5) - (0.8 + 0.7)) / 2)
    nll = (
        -(0.6 * math.log(0.8) + 0.4 * math.log(0.2) + 0.5 * math.log(0.3) + 0.5 * math.log(0.7)) / 2
    )
    assert float(negative_log_likelihood(probs, soft)) == pytest.approx(nll)
    brier = ((0.2**2 + 0.2**2) + (0.2**2 + 0.2**2)) / 2
    assert float(brier_score(probs, soft)) == pytest.approx(brier)
    assert float(top_k_accuracy(probs, soft, k=1)) == pytest.approx(0.55)


def test_soft_targets_object_with_to_dense():
    class FakeSoftTargets:  # the duck-typed part of softnce.SoftTargets
        def __init__(self, dense):
            self.dense = dense

        def to_dense(self, dtype=torch.float32):
            return self.dense.to(dtype)

    logits, labels = _random_problem(200, 4, seed=5)
    probs = logits.softmax(1)
    st = FakeSoftTargets(F.one_hot(labels, 4).float())
    assert float(expected_calibration_error(probs, st)) == pytest.approx(
        float(expected_calibration_error(probs, labels)), abs=1e-12
    )


def test_real_soft_targets_from_softnce():
    import softnce.targets as targets_mod  # the project's own module: fail, never skip
    logits, labels = _random_problem(300, 5, seed=6)
    probs = logits.softmax(1)
    st = targets_mod.SoftTargets.label_smoothing(labels, 5, 0.1)
    dense = st.to_dense(dtype=torch.float64)
    assert float(brier_score(probs, st)) == pytest.approx(float(brier_score(probs, dense)))
    meter = CalibrationMeter(inputs="logits")
    meter.update(logits, st)
    _assert_dicts_close(meter.compute(), _one_shot(probs, dense), tol=1e-9)


# ------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("inputs", ["logits", "probs", "auto"])
def test_streaming_equals_one_shot(inputs, soft):
    logits, targets = _random_problem(1000, 8, seed=7, soft=soft)
    temperature = 1.7
    probs = torch.softmax(logits / temperature, dim=1)
    meter = CalibrationMeter(n_bins=13, inputs=inputs, temperature=temperature)
    feed = logits if inputs != "probs" else logits.softmax(1)  # probs get re-tempered
    start = 0
    for size in (1, 0, 250, 333, 16, 400):
        meter.update(feed[start : start + size], targets[start : start + size])
        start += size
    assert start == 1000
    got = meter.compute()
    assert list(got) == ["top1", "top5", "ece", "mce", "ace", "classwise_ece", "nll", "brier", "n"]
    _assert_dicts_close(got, _one_shot(probs, targets, n_bins=13), tol=1e-9)
    assert meter.resolved_inputs == ("probs" if inputs == "probs" else "logits")
    # compute() does not consume the state
    _assert_dicts_close(meter.compute(), got, tol=0)
    curve = meter.reliability_curve()
    assert curve.ece == pytest.approx(got["ece"], abs=1e-12)


def test_auto_detects_probabilities():
    logits, labels = _random_problem(300, 5, seed=8, dtype=torch.float32)
    probs = logits.softmax(1)
    meter = CalibrationMeter()
    meter.update(probs, labels)
    assert meter.resolved_inputs == "probs"
    _assert_dicts_close(meter.compute(), _one_shot(probs, labels), tol=1e-9)
    with pytest.raises(ValueError, match="detected as probabilities"):
        meter.update(logits, labels)  # later batch contradicts the auto decision
    meter.reset()
    meter.update(logits, labels)
    assert meter.resolved_inputs == "logits"


def test_update_stats_for_unmaterialised_probabilities():
    logits, labels = _random_problem(600, 9, seed=9)
    probs = logits.softmax(1)
    lp = logits.log_softmax(1)
    conf, pred = probs.max(1)
    acc = (pred == labels).double()
    nll = -lp.gather(1, labels[:, None]).squeeze(1)
    brier = probs.square().sum(1) - 2 * probs.gather(1, labels[:, None]).squeeze(1) + 1
    top = logits.topk(3, dim=1).indices
    topk = {1: acc, 3: (top == labels[:, None]).any(1).double()}
    meter = CalibrationMeter(topk=(1, 3), inputs="logits")
    for sl in (slice(0, 100), slice(100, 600)):
        meter.update_stats(
            conf[sl],
            acc[sl],
            nll[sl],
            brier[sl],
            {k: v[sl] for k, v in topk.items()},
            predictions=pred[sl],
        )
    got = meter.compute()
    ref = _one_shot(probs, labels, topk=(1, 3))
    assert math.isnan(got["classwise_ece"])
    ref["classwise_ece"] = math.nan
    _assert_dicts_close(got, ref, tol=1e-9)
    assert torch.equal(meter.prediction_counts(), torch.bincount(pred, minlength=9))


def test_meter_without_confidences_and_empty_meter():
    logits, labels = _random_problem(200, 5, seed=10)
    meter = CalibrationMeter(keep_confidences=False, topk=(1,))
    empty = meter.compute()
    assert empty["n"] == 0 and all(math.isnan(v) for k, v in empty.items() if k != "n")
    meter.update(logits, labels)
    got = meter.compute()
    assert "ace" not in got and list(got) == [
        "top1",
        "ece",
        "mce",
        "classwise_ece",
        "nll",
        "brier",
        "n",
    ]
    assert got["ece"] == pytest.approx(float(expected_calibration_error(logits.softmax(1), labels)))
    assert meter._confs == []  # nothing grows with N
    meter.reset()
    assert meter.compute()["n"] == 0


def test_inputs_requiring_grad(recwarn):
    logits, labels = _random_problem(100, 4, seed=17)
    logits.requires_grad_(True)
    meter = CalibrationMeter(inputs="logits")
    meter.update(logits, labels)
    meter.update_stats(
        *(torch.full((3,), 0.5, requires_grad=True) for _ in range(4)),
        {1: torch.ones(3), 5: torch.ones(3)},
    )
    res = meter.compute()
    probs = logits.softmax(1)
    assert float(expected_calibration_error(probs, labels)) >= 0
    assert float(classwise_calibration_error(probs, labels)) >= 0
    assert float(adaptive_calibration_error(probs, labels)) >= 0
    assert res["n"] == 103
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]
    # Brier and NLL stay differentiable (usable as losses)
    (brier_score(probs, labels) + negative_log_likelihood(probs, labels)).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_meter_on_cuda_matches_cpu():
    logits, labels = _random_problem(2000, 12, seed=11, dtype=torch.float32)
    cpu, gpu = CalibrationMeter(inputs="logits"), CalibrationMeter(inputs="logits")
    for zb, yb in zip(logits.split(700), labels.split(700)):
        cpu.update(zb, yb)
        gpu.update(zb.cuda(), yb.cuda())
    assert gpu._bins.device.type == "cuda" and gpu._bins.dtype == torch.float64
    _assert_dicts_close(gpu.compute(), cpu.compute(), tol=1e-6)


# ------------------------------------------------------------------------------ distributed

DDP_SIZES = (37, 91)  # uneven local sizes; rank 1 gives the empty meter no data


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        logits, labels = _random_problem(sum(DDP_SIZES), 6, seed=12)
        _, soft = _random_problem(sum(DDP_SIZES), 6, seed=13, soft=True)
        lo = sum(DDP_SIZES[:rank])
        sl = slice(lo, lo + DDP_SIZES[rank])
        hard_meter = CalibrationMeter(inputs="logits", n_bins=10)
        soft_meter = CalibrationMeter(inputs="logits", n_bins=10)
        lonely = CalibrationMeter(inputs="logits", n_bins=10)
        for part in (slice(sl.start, sl.start + 5), slice(sl.start + 5, sl.stop)):
            hard_meter.update(logits[part], labels[part])
            soft_meter.update(logits[part], soft[part])
        if rank == 0:
            lonely.update(logits[:40], labels[:40])
        result = {
            "hard": hard_meter.compute(),
            "soft": soft_meter.compute(),
            "lonely": lonely.compute(),
            "pred_counts": hard_meter.prediction_counts().tolist(),
            "curve_count": hard_meter.reliability_curve().count.tolist(),
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_gives_global_numbers(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_workers(_ddp_worker, (2, _free_port(), str(tmp_path)), nprocs=2, timeout=300)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    logits, labels = _random_problem(sum(DDP_SIZES), 6, seed=12)
    _, soft = _random_problem(sum(DDP_SIZES), 6, seed=13, soft=True)
    probs = logits.softmax(1)
    ref_hard = _one_shot(probs, labels, n_bins=10)
    ref_soft = _one_shot(probs, soft, n_bins=10)
    ref_lonely = _one_shot(probs[:40], labels[:40], n_bins=10)
    for res in results:
        _assert_dicts_close(res["hard"], ref_hard, tol=1e-9)
        _assert_dicts_close(res["soft"], ref_soft, tol=1e-9)
        _assert_dicts_close(res["lonely"], ref_lonely, tol=1e-9)
        assert res["hard"]["n"] == sum(DDP_SIZES)
        assert res["pred_counts"] == torch.bincount(probs.argmax(1), minlength=6).tolist()
        assert res["curve_count"] == reliability_curve(probs, labels, 10).count.tolist()


# ------------------------------------------------------------------------------ temperature


def test_temperature_scaler_recovers_known_temperature():
    g = torch.Generator().manual_seed(14)
    logits = torch.randn(20_000, 10, generator=g) * 2
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)  # calibrated
    scaler = TemperatureScaler().fit(3.0 * logits, labels)
    assert isinstance(scaler, TemperatureScaler)
    assert scaler.temperature == pytest.approx(3.0, rel=0.05)
    rep = scaler.report()
    assert rep["nll_after"] < rep["nll_before"]
    assert rep["ece_after"] < 0.5 * rep["ece_before"]
    assert torch.allclose(scaler.transform(3.0 * logits), 3.0 * logits / scaler.temperature)
    assert torch.allclose(scaler.predict_proba(3.0 * logits).sum(-1), torch.ones(20_000))


def test_temperature_scaler_never_worse_than_identity_and_soft_labels():
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(3000, 5, generator=g, dtype=torch.float64)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    scaler = TemperatureScaler().fit(logits, labels)
    rep = scaler.report()
    assert rep["nll_after"] <= rep["nll_before"] + 1e-12
    assert scaler.temperature == pytest.approx(1.0, rel=0.15)
    # soft labels: one-hot gives the same temperature as integer labels
    soft = TemperatureScaler().fit(2 * logits, F.one_hot(labels, 5).double())
    hard = TemperatureScaler().fit(2 * logits, labels)
    assert soft.temperature == pytest.approx(hard.temperature, rel=1e-6)
    # separable data pushes T to the lower bound instead of diverging
    sep = torch.eye(4, dtype=torch.float64).repeat(10, 1) * 5
    t = TemperatureScaler(bounds=(0.05, 20)).fit(sep, torch.arange(4).repeat(10))
    assert 0.05 <= t.temperature < 0.2
    with pytest.raises(RuntimeError, match="fit"):
        TemperatureScaler().report()


# ------------------------------------------------------------------------------ plots


def _read_png(path: Path):
    image_mod = pytest.importorskip("PIL.Image")
    with image_mod.open(path) as im:
        im.load()
        return im.size


def test_reliability_plot_single_several_and_svg(tmp_path):
    logits, labels = _random_problem(500, 6, seed=16, dtype=torch.float32)
    probs = logits.softmax(1)
    fig = plot_reliability_diagram((probs, labels), tmp_path / "one.png", n_bins=10)
    w1, h1 = _read_png(tmp_path / "one.png")
    assert w1 > 100 and h1 > 100
    assert len(fig.axes) == 2  # reliability + histogram
    meter = CalibrationMeter(inputs="logits")
    meter.update(logits * 3, labels)
    fig = plot_reliability_diagram(
        {"probs": (probs, labels), "curve": reliability_curve(probs, labels), "meter": meter},
        tmp_path / "sub" / "three.png",
        title="three models",
    )
    w3, _ = _read_png(tmp_path / "sub" / "three.png")
    assert w3 > 2 * w1 and len(fig.axes) == 6
    legend_texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    ece = float(expected_calibration_error(probs, labels))
    assert any(f"ECE = {100 * ece:.2f}%" in t for t in legend_texts)
    plot_reliability_diagram(
        reliability_curve(probs, labels), tmp_path / "one.svg", show_histogram=False
    )
    text = (tmp_path / "one.svg").read_text()
    assert "<svg" in text and text.rstrip().endswith("</svg>")
    fig = plot_reliability_diagram({"a": (probs, labels)})  # no path: nothing written
    assert fig.axes
    with pytest.raises(ValueError, match="path"):
        plot_reliability_diagram((probs, labels), tmp_path / "x.jpg2")
    with pytest.raises(TypeError, match="curves_or_dict"):
        plot_reliability_diagram({"bad": 3})
    with pytest.raises(ValueError, match="curves_or_dict"):
        plot_reliability_diagram({})


def test_reliability_curve_type():
    curve = reliability_curve(HAND_PROBS, HAND_LABELS, 2)
    assert isinstance(curve, ReliabilityCurve) and curve.n_bins == 2


# ------------------------------------------------------------------------------ bad input

GOOD_P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
GOOD_Y = torch.tensor([0, 2])
ALL_FNS = [
    expected_calibration_error,
    maximum_calibration_error,
    adaptive_calibration_error,
    classwise_calibration_error,
    reliability_curve,
]


@pytest.mark.parametrize("fn", ALL_FNS + [brier_score, negative_log_likelihood])
@pytest.mark.parametrize(
    ("probs", "targets", "match"),
    [
        (torch.tensor([[0.7, 0.2, 0.2], [0.1, 0.1, 0.8]]), GOOD_Y, "sum to 1"),
        (torch.tensor([[1.2, -0.2, 0.0], [0.1, 0.1, 0.8]]), GOOD_Y, "non-negative"),
        (torch.tensor([[math.nan, 0.2, 0.1], [0.1, 0.1, 0.8]]), GOOD_Y, "NaN"),
        (torch.tensor([[2.0, 1.0, -1.0], [0.1, 0.1, 0.8]]) * 3, GOOD_Y, "non-negative"),
        (GOOD_P, torch.tensor([0, 3]), r"labels must be in \[0, 3\)"),
        (GOOD_P, torch.tensor([-1, 0]), r"labels must be in \[0, 3\)"),
        (GOOD_P, torch.tensor([0, 1, 2]), "3 labels but the predictions have 2"),
        (GOOD_P, torch.tensor([[0.5, 0.5, 0.0]]), "shape"),
        (GOOD_P, torch.tensor([[0.5, 0.6, 0.0], [0.0, 0.0, 1.0]]), "sum to 1"),
        (GOOD_P, torch.tensor([[1.5, -0.5, 0.0], [0.0, 0.0, 1.0]]), "non-negative"),
        (GOOD_P, torch.zeros(2, 3, 1), "shape"),
        (GOOD_P[0], GOOD_Y[:1], r"shape \(N, C\)"),
        (GOOD_P[:0], GOOD_Y[:0], "at least one sample"),
    ],
)
def test_bad_inputs_raise_value_error(fn, probs, targets, match):
    with pytest.raises(ValueError, match=match):
        fn(probs, targets)


@pytest.mark.parametrize("fn", ALL_FNS)
@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_n_bins(fn, n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        fn(GOOD_P, GOOD_Y, n_bins)


def test_bad_dtypes_raise_type_error():
    with pytest.raises(TypeError, match="integer class labels"):
        expected_calibration_error(GOOD_P, torch.tensor([0.0, 2.0]))
    with pytest.raises(TypeError, match="floating-point"):
        expected_calibration_error(torch.tensor([[1, 0], [0, 1]]), torch.tensor([0, 1]))


def test_validate_args_false_skips_value_checks_only():
    bad = torch.tensor([[0.7, 0.2, 0.2], [0.1, 0.1, 0.8]])
    expected_calibration_error(bad, GOOD_Y, validate_args=False)  # no value check
    with pytest.raises(ValueError, match="shape"):
        expected_calibration_error(bad, GOOD_Y[None], validate_args=False)
    with pytest.raises(ValueError, match="1 labels but the predictions have 2 rows"):
        expected_calibration_error(bad, GOOD_Y[:1], validate_args=False)


def test_top_k_bad_inputs():
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(GOOD_P, GOOD_Y, k=0)
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(GOOD_P, GOOD_Y, k=())
    with pytest.raises(ValueError, match="NaN"):
        top_k_accuracy(torch.tensor([[math.nan, 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be in"):
        top_k_accuracy(GOOD_P, torch.tensor([0, 5]))


def test_meter_bad_inputs():
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationMeter(n_bins=0)
    with pytest.raises(ValueError, match="inputs"):
        CalibrationMeter(inputs="scores")
    with pytest.raises(ValueError, match="temperature"):
        CalibrationMeter(temperature=0.0)
    with pytest.raises(ValueError, match="num_classes"):
        CalibrationMeter(num_classes=0)
    with pytest.raises(ValueError, match="topk"):
        CalibrationMeter(topk=(1, 1))
    meter = CalibrationMeter(inputs="logits", num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3"):
        meter.update(torch.randn(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        meter.update(torch.tensor([[math.nan, 0.0, 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be in"):
        meter.update(torch.randn(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="sum to 1"):
        CalibrationMeter(inputs="probs").update(torch.rand(4, 3) + 0.5, torch.zeros(4).long())
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        meter.update(torch.randn(3), torch.tensor([0, 1, 2]))
    stats = CalibrationMeter(topk=(1, 5))
    c, one = torch.full((3,), 0.5), torch.ones(3)
    with pytest.raises(ValueError, match="missing"):
        stats.update_stats(c, one, one, one, {1: one})
    with pytest.raises(ValueError, match="confidences must be in"):
        stats.update_stats(c + 1, one, one, one, {1: one, 5: one})
    with pytest.raises(ValueError, match="brier"):
        stats.update_stats(c, one, one, one * 3, {1: one, 5: one})
    with pytest.raises(ValueError, match="2 entries but confidences has 3"):
        stats.update_stats(c, one[:2], one, one, {1: one, 5: one})
    with pytest.raises(TypeError, match="predictions"):
        stats.update_stats(c, one, one, one, {1: one, 5: one}, predictions=one)


def test_temperature_scaler_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        TemperatureScaler(temperature=-1.0)
    with pytest.raises(ValueError, match="bounds"):
        TemperatureScaler(bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="finite"):
        TemperatureScaler().fit(torch.tensor([[math.nan, 1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels"):
        TemperatureScaler().fit(torch.randn(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="2 labels but the predictions have 3 rows"):
        TemperatureScaler().fit(torch.randn(3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        TemperatureScaler().fit(torch.randn(3), torch.tensor([0, 1, 0]))
