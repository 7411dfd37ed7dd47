"""CalibrationMetric (torchmetrics) against CalibrationMeter, one process and two gloo processes."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("torchmetrics")
from _helpers import free_port, run_workers  # noqa: E402
from softnce import SoftTargets  # noqa: E402
from softnce.metrics import CalibrationMeter  # noqa: E402
from softnce.metrics.torchmetric import CalibrationMetric  # noqa: E402

C = 7
KEYS = ["top1", "top5", "ece", "mce", "classwise_ece", "nll", "brier", "n"]


def _batches(kind: str, seed: int = 0, sizes=(13, 1, 30, 8)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        z = 3 * torch.randn(n, C, generator=g)
        y = torch.randint(0, C, (n,), generator=g)
        if kind == "dense":
            y = torch.softmax(2 * torch.randn(n, C, generator=g), 1)
        elif kind == "sparse":
            y = SoftTargets.mix(y, y.flip(0), 0.7, C, smoothing=0.1)
        out.append((z, y))
    return out


@pytest.mark.parametrize("kind", ["labels", "dense", "sparse"])
def test_metric_equals_the_meter(kind):
    metric = CalibrationMetric(num_classes=C, n_bins=10, temperature=0.7)
    meter = CalibrationMeter(n_bins=10, inputs="logits", temperature=0.7, num_classes=C,
                             keep_confidences=False)
    for z, y in _batches(kind):
        metric.update(z, y)
        meter.update(z, y)
    got, want = metric.compute(), meter.compute()
    assert set(got) == set(KEYS)
    for k in KEYS:
        assert got[k].dtype == torch.float64
        assert float(got[k]) == pytest.approx(want[k], rel=1e-12, abs=1e-12), k
    metric.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        empty = metric.compute()
    assert float(empty["n"]) == 0 and torch.isnan(empty["ece"])


def test_metric_checks_its_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        CalibrationMetric(num_classes=0)
    with pytest.raises(ValueError, match="temperature"):
        CalibrationMetric(num_classes=3, temperature=-1.0)
    with pytest.raises(ValueError, match="inputs"):
        CalibrationMetric(num_classes=3, inputs="auto")
    m = CalibrationMetric(num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        m.update(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        m.update(torch.randn(2, 4), torch.tensor([0, 1]))  # wrong number of classes


def _worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        metric = CalibrationMetric(num_classes=C, n_bins=10)
        batches = _batches("dense", seed=3)
        for z, y in batches[rank::2]:  # uneven: rank 0 sees 13 + 30 samples, rank 1 sees 1 + 8
            metric.update(z, y)
        got = {k: float(v) for k, v in metric.compute().items()}
        torch.save(got, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_metric_under_two_gloo_processes(tmp_path):
    run_workers(_worker, (free_port(), str(tmp_path)), nprocs=2, timeout=120)
    meter = CalibrationMeter(n_bins=10, inputs="logits", num_classes=C, keep_confidences=False)
    for z, y in _batches("dense", seed=3):
        meter.update(z, y)
    want = meter.compute()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for k in KEYS:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), (rank, k)
