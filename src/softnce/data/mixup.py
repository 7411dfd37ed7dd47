r"""timm's image MixUp/CutMix with sparse two-class targets.

timm's :class:`timm.data.Mixup` returns dense ``(N, C)`` targets

    ``Y = lam * smooth(onehot(y)) + (1 - lam) * smooth(onehot(y.flip(0)))``,
    ``smooth(t) = (1 - eps) t + eps / C``,

with ``lam`` a float (``mode="batch"``) or one value per row (``"pair"``, ``"elem"``; CutMix's
``lam`` is the corrected one, ``1 - box area / image area``). The partner of row ``i`` is row
``N - 1 - i`` in every mode. That is exactly
``SoftTargets.mix(y, y.flip(0), lam, C, eps)``: two classes per row plus a uniform mass, so the
soft-target losses cost O(N k) instead of O(N C) per candidate row.

:class:`SparseMixup` is timm's ``Mixup`` (same constructor, same random draws from numpy's global
RNG, the same mixed images) whose ``__call__`` returns those sparse targets. ``to_dense()`` of its
targets is within one ulp of the exact target (timm's formula in float64) and within two ulp of
timm's float32 targets, whose own arithmetic rounds more (tested).

Example::

    >>> from softnce.data.mixup import SparseMixup
    >>> mix = SparseMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=1000)
    >>> images, targets = mix(images, labels)       # targets: SoftTargets, k = 2
    >>> loss = loss_fn(model(images), targets)      # SoftTargetInfoNCE or soft-target CE
"""

from __future__ import annotations

import torch

from softnce._optional import require
from softnce.targets import SoftTargets

__all__ = ["SparseMixup", "sparse_mixup_target"]

_Mixup = require("timm.data", "images", "SparseMixup (timm's MixUp/CutMix)").Mixup


def sparse_mixup_target(target: torch.Tensor, num_classes: int, lam: float | torch.Tensor = 1.0,
                        smoothing: float = 0.0) -> SoftTargets:
    """Sparse twin of ``timm.data.mixup.mixup_target`` (single-label): ``SoftTargets`` with k = 2.

    Args:
        target: (N,) integer labels.
        num_classes: C.
        lam: float, or a tensor with N elements (timm's (N, 1) per-row ``lam``).
        smoothing: label smoothing ``eps`` in [0, 1].
    """
    if isinstance(lam, torch.Tensor):
        lam = lam.detach().reshape(-1)  # SoftTargets.mix forms the weights in float64
    labels = target.long().reshape(-1)
    return SoftTargets.mix(labels, labels.flip(0), lam, num_classes, smoothing)


class SparseMixup(_Mixup):
    """timm's ``Mixup`` returning :class:`~softnce.targets.SoftTargets` (see the module docstring).

    Takes timm's ``Mixup`` arguments; ``multi_label=True`` is refused (multi-label targets are
    not rows on the simplex).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self, "multi_label", False):  # older timm releases lack it
            raise ValueError("SparseMixup: multi_label must be False (soft targets are rows on "
                             "the simplex); found multi_label=True")

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, SoftTargets]:
        if len(x) % 2:
            raise ValueError(f"SparseMixup: the batch size must be even (timm pairs row i with "
                             f"row N - 1 - i); found {len(x)}")
        if self.mode == "elem":
            lam = self._mix_elem(x)
        elif self.mode == "pair":
            lam = self._mix_pair(x)
        else:
            lam = self._mix_batch(x)
        return x, sparse_mixup_target(target, self.num_classes, lam, self.label_smoothing)
