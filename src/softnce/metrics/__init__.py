r"""Calibration and accuracy metrics: ECE, MCE, ACE, classwise ECE, Brier, NLL, top-k accuracy.

Every function takes ``probs`` of shape ``(N, C)`` (rows are probability vectors) and
``targets`` that are either ``(N,)`` integer class labels, ``(N, C)`` soft targets (rows are
probability vectors) or a :class:`softnce.SoftTargets` object (anything with a
``to_dense(dtype=...)`` method, densified on the fly). With soft targets "correct" for the
top-1 prediction :math:`\hat y_i = \arg\max_c p_{ic}` means the *target mass on the predicted
class*, :math:`a_i = y_{i\hat y_i}`; with integer labels :math:`a_i = 1[\hat y_i = y_i]`, so
one-hot soft targets give exactly the numbers of integer labels.

Binning (equal width, shared by ECE, MCE, classwise ECE and :func:`reliability_curve`): the
edges are ``torch.linspace(0, 1, n_bins + 1)`` in the confidences' dtype and bin ``b`` is the
half-open interval :math:`[b/M, (b+1)/M)` for :math:`b < M - 1`; the last bin is closed,
:math:`[(M-1)/M, 1]`. A confidence of exactly 0 lands in the first bin and exactly 1 in the last
bin. This is the convention of ``torchmetrics``' ``multiclass_calibration_error`` (``norm="l1"``
/ ``"max"``) except that torchmetrics puts a confidence of exactly 1.0 into a hidden extra bin
``M`` (``bucketize(..., right=True) - 1`` without clamping); we clamp it into the last bin.

Functions return 0-dim ``float64`` tensors on the inputs' device (``top_k_accuracy`` with a
sequence of ``k`` returns a ``dict``). :class:`CalibrationMeter` accumulates the same metrics
over batches with memory independent of the number of samples (except the equal-mass ACE) and
all-reduces under ``torch.distributed``. :class:`TemperatureScaler` fits one temperature on
validation logits (Guo et al. 2017).

References:
    * G. W. Brier (1950). Verification of forecasts expressed in terms of probability.
      Monthly Weather Review 78(1).
    * C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger (2017). On Calibration of Modern Neural
      Networks. ICML.
    * M. Kull, M. Perello-Nieto, M. Kängsepp, T. Silva Filho, H. Song, P. Flach (2019). Beyond
      temperature scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet
      calibration. NeurIPS.
    * J. Nixon, M. Dusenberry, L. Zhang, G. Jerfel, D. Tran (2019). Measuring Calibration in
      Deep Learning. CVPR Workshops.
"""

from __future__ import annotations

from softnce.metrics.functional import (
    adaptive_calibration_error,
    brier_score,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    negative_log_likelihood,
    top_k_accuracy,
)
from softnce.metrics.meter import CalibrationMeter
from softnce.metrics.reliability import (
    ReliabilityCurve,
    plot_reliability_diagram,
    reliability_curve,
)
from softnce.metrics.scaling import TemperatureScaler

__all__ = [
    "CalibrationMeter",
    "ReliabilityCurve",
    "TemperatureScaler",
    "adaptive_calibration_error",
    "brier_score",
    "classwise_calibration_error",
    "expected_calibration_error",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "plot_reliability_diagram",
    "reliability_curve",
    "top_k_accuracy",
]
