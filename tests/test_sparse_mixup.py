"""SparseMixup: timm's image MixUp/CutMix with sparse (k = 2) SoftTargets.

Against timm's own ``Mixup`` on the same numpy seed, in every mode timm has (batch, pair, elem),
MixUp only, CutMix only (corrected lambda) and both with switching:
* the mixed images are bit-identical;
* ``to_dense()`` is within 1 ulp (float32) of timm's target formula evaluated in float64 (the
  exact target) and within 2 ulp of timm's float32 targets (timm's own rounding is the rest);
* the losses on the sparse targets equal the losses on timm's dense targets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("timm")
from timm.data import Mixup  # noqa: E402
from timm.data.mixup import mixup_target  # noqa: E402

from softnce import SoftTargetInfoNCE, SoftTargets, soft_target_cross_entropy  # noqa: E402
from softnce.data.mixup import SparseMixup, sparse_mixup_target  # noqa: E402

MODES = ["batch", "pair", "elem"]
ALPHAS = [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)]


def _ulps(a: torch.Tensor, ref: torch.Tensor) -> float:
    spacing = torch.nextafter(ref.abs(), torch.tensor(float("inf"))) - ref.abs()
    return float(((a - ref).abs() / spacing).max())


def _timm_lam(m: Mixup, x: torch.Tensor):
    return {"elem": m._mix_elem, "pair": m._mix_pair, "batch": m._mix_batch}[m.mode](x)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("alphas", ALPHAS)
@pytest.mark.parametrize("num_classes", [10, 1000])
def test_sparse_mixup_matches_timm(mode, alphas, num_classes):
    worst_exact = worst_timm = 0.0
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 3, 16, 16, generator=g)
        y = torch.randint(0, num_classes, (8,), generator=g)
        kw = dict(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode, prob=0.8,
                  label_smoothing=0.1, num_classes=num_classes)
        np.random.seed(seed)
        xa, ta = Mixup(**kw)(x.clone(), y)
        np.random.seed(seed)
        m = Mixup(**kw)
        lam = _timm_lam(m, x.clone())
        torch.set_default_dtype(torch.float64)
        try:
            exact = mixup_target(y, num_classes, lam.double() if torch.is_tensor(lam) else lam,
                                 0.1)
        finally:
            torch.set_default_dtype(torch.float32)
        np.random.seed(seed)
        xb, tb = SparseMixup(**kw)(x.clone(), y)
        assert torch.equal(xa, xb)
        assert isinstance(tb, SoftTargets) and tb.k == 2 and tb.shape == ta.shape
        dense = tb.to_dense(torch.float32)
        worst_exact = max(worst_exact, _ulps(dense, exact.float()))
        worst_timm = max(worst_timm, _ulps(dense, ta))
        assert torch.allclose(tb.to_dense(torch.float64), exact, rtol=0, atol=1e-7)
    assert worst_exact <= 1.0
    assert worst_timm <= 2.0


def test_sparse_targets_give_the_dense_losses():
    np.random.seed(0)
    c = 50
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, c, (16,))
    kw = dict(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", label_smoothing=0.1, num_classes=c)
    np.random.seed(1)
    _, dense = Mixup(**kw)(x.clone(), y)
    np.random.seed(1)
    _, sparse = SparseMixup(**kw)(x.clone(), y)
    z = torch.randn(16, c, dtype=torch.float64)
    q = torch.softmax(torch.randn(c, dtype=torch.float64), 0)
    loss = SoftTargetInfoNCE(q, temperature=0.7)
    torch.testing.assert_close(loss(z, sparse), loss(z, dense.double()), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(soft_target_cross_entropy(z, sparse),
                               soft_target_cross_entropy(z, dense.double()),
                               rtol=1e-6, atol=1e-6)


def test_lam_near_one_keeps_its_digits():
    # 1 - lam computed in float32 after rounding lam would lose every digit of the partner weight
    t = sparse_mixup_target(torch.tensor([0, 1]), 3, lam=1 - 3e-9, smoothing=0.0)
    assert t.weights[0, 1].item() == pytest.approx(3e-9, rel=1e-6)
    lam64 = torch.full((2, 1), 1 - 3e-9, dtype=torch.float64)   # a per-row float64 lam
    t = sparse_mixup_target(torch.tensor([0, 1]), 3, lam=lam64, smoothing=0.0)
    assert t.weights[:, 1].tolist() == pytest.approx([3e-9, 3e-9], rel=1e-6)


def test_sparse_mixup_refuses_odd_batches_and_multi_label():
    with pytest.raises(ValueError, match="batch size must be even"):
        SparseMixup(num_classes=5)(torch.randn(3, 3, 4, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="multi_label"):
        SparseMixup(num_classes=5, multi_label=True)
