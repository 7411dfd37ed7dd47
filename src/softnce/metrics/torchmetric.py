r"""The calibration meter as a ``torchmetrics.Metric`` (needs ``torchmetrics``).

:class:`CalibrationMetric` gives ECE, MCE, classwise ECE, NLL, Brier and top-k accuracy of
:class:`~softnce.metrics.CalibrationMeter` inside torchmetrics' machinery (Lightning's
``self.log``, ``MetricCollection``, ``sync_dist``). Unlike torchmetrics' own
``MulticlassCalibrationError`` it accepts soft targets (``(N, C)`` rows on the simplex or
:class:`~softnce.SoftTargets`): "correct" is the target mass on the predicted class.

State: fixed-size float64 sums, all with ``dist_reduce_fx="sum"``, so DDP costs one all-reduce of
``3 M + 3 C M + 3 + len(topk)`` numbers whatever the data size:

* ``bins`` (3, M): count, sum of top-1 confidence, sum of top-1 correctness per bin;
* ``classwise`` (3, C, M): count, sum of ``p_c``, sum of ``y_c`` per class and bin;
* ``scalars`` (3 + len(topk),): number of samples, NLL sum, Brier sum, top-k correctness sums.

The equal-mass ACE needs every sample's confidence and is left out (use the meter for it).
Each batch goes through the meter's own ``update``, so the numbers are the meter's exactly.

Example::

    >>> from softnce.metrics.torchmetric import CalibrationMetric
    >>> metric = CalibrationMetric(num_classes=10, temperature=loss_fn.temperature)
    >>> metric.update(logits, targets)            # labels, dense soft targets or SoftTargets
    >>> metric.compute()["ece"]                   # 0-dim float64 tensors
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from softnce._optional import require
from softnce.metrics._inputs import _as_topk, _check_n_bins
from softnce.metrics.functional import _classwise_from_sums, _ece_from_sums, _mce_from_sums
from softnce.metrics.meter import CalibrationMeter

__all__ = ["CalibrationMetric"]

_Metric = require("torchmetrics", "loops", "CalibrationMetric (torchmetrics)").Metric


class CalibrationMetric(_Metric):
    """ECE, MCE, classwise ECE, NLL, Brier and top-k accuracy as a ``torchmetrics.Metric``.

    Args:
        num_classes: C (fixes the size of the classwise state).
        n_bins: number of equal-width bins M (the meter's binning).
        inputs: ``"logits"`` (``softmax(x / temperature)``) or ``"probs"``.
        temperature: softmax temperature ``> 0``; with soft-target InfoNCE pass the loss's
            ``temperature`` so the metric sees ``softmax(z / tau)``.
        topk: the ``k`` of the ``"top{k}"`` keys.
        validate_args: value checks on every batch (the meter's).
        **kwargs: torchmetrics' ``Metric`` keyword arguments (``sync_on_compute``, ...).

    ``compute()`` returns a dict of 0-dim float64 tensors with the keys ``top{k}``, ``ece``,
    ``mce``, ``classwise_ece``, ``nll``, ``brier``, ``n`` (NaN metrics and ``n = 0`` before any
    sample).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_classes: int, n_bins: int = 15,
                 inputs: Literal["logits", "probs"] = "logits", temperature: float = 1.0,
                 topk: int | Sequence[int] = (1, 5), validate_args: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if inputs not in ("logits", "probs"):
            raise ValueError(f"inputs must be 'logits' or 'probs'; found {inputs!r}")
        # the meter checks num_classes, temperature and topk with the library's vocabulary
        self._meter_args = dict(n_bins=_check_n_bins(n_bins), inputs=inputs,
                                temperature=temperature, num_classes=num_classes,
                                keep_confidences=False, topk=_as_topk(topk, "topk"),
                                validate_args=validate_args)
        CalibrationMeter(**self._meter_args)
        self.num_classes, self.n_bins = int(num_classes), int(n_bins)
        self.topk = self._meter_args["topk"]
        f64 = torch.float64
        self.add_state("bins", torch.zeros(3, self.n_bins, dtype=f64), dist_reduce_fx="sum")
        self.add_state("classwise", torch.zeros(3, self.num_classes, self.n_bins, dtype=f64),
                       dist_reduce_fx="sum")
        self.add_state("scalars", torch.zeros(3 + len(self.topk), dtype=f64),
                       dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Any) -> None:
        """Add a batch: ``(N, C)`` logits (or probabilities) and labels / soft targets."""
        meter = CalibrationMeter(**self._meter_args)
        meter.update(preds, target)
        if meter._n == 0:
            return
        dev = self.bins.device
        self.bins += meter._bins.to(dev)
        self.classwise += meter._cw.to(dev)
        n = torch.tensor([float(meter._n)], dtype=torch.float64, device=dev)
        self.scalars += torch.cat([n, meter._scalars.to(dev)])

    def compute(self) -> dict[str, Tensor]:
        n = self.scalars[0]
        keys = [f"top{k}" for k in self.topk] + ["ece", "mce", "classwise_ece", "nll", "brier"]
        if float(n) == 0:
            out = {k: torch.full((), float("nan"), dtype=torch.float64) for k in keys}
            out["n"] = n.clone()
            return out
        s = self.scalars
        vals = [s[3 + i] / n for i in range(len(self.topk))]
        vals += [_ece_from_sums(self.bins), _mce_from_sums(self.bins),
                 _classwise_from_sums(self.classwise), s[1] / n, s[2] / n]
        out = {k: v.to(torch.float64) for k, v in zip(keys, vals)}
        out["n"] = n.clone()
        return out
