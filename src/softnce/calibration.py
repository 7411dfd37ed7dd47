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

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

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

#: Rows of ``probs`` / soft ``targets`` must sum to 1 within this absolute tolerance.
SUM_TOLERANCE = 1e-3

# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _to_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a torch.Tensor or array-like, got {type(x).__name__}"
        ) from err


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _floating(x: Tensor, name: str, what: str) -> Tensor:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of {what}, got dtype {x.dtype}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def _check_2d(x: Tensor, name: str, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C) of {what}, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column, got shape {tuple(x.shape)}")


def _prob_rows_bad(p: Tensor) -> Tensor:
    """Boolean 0-dim tensor: True if any entry is NaN/negative or any row sum is off by > tol."""
    dev = (p.sum(dim=1, dtype=torch.float64) - 1.0).abs()
    return torch.isnan(p).any() | (p < 0).any() | (dev > SUM_TOLERANCE).any()


def _check_prob_values(p: Tensor, name: str, hint: str = "") -> None:
    """Value checks for a (N, C) matrix whose rows must be probability vectors (one sync)."""
    if p.numel() == 0 or not bool(_prob_rows_bad(p)):
        return
    n_nan = int(torch.isnan(p).sum())
    if n_nan:
        raise ValueError(f"{name} must not contain NaN; found {n_nan} NaN entries")
    if bool((p < 0).any()):
        raise ValueError(
            f"{name} must be non-negative probabilities; found minimum {float(p.min()):.6g}{hint}"
        )
    sums = p.sum(dim=1, dtype=torch.float64)
    row = int((sums - 1.0).abs().argmax())
    raise ValueError(
        f"rows of {name} must sum to 1 (tolerance {SUM_TOLERANCE:g}); row {row} sums to "
        f"{float(sums[row]):.6g}{hint}"
    )


def _as_probs(probs: Any, validate_args: bool, name: str = "probs") -> Tensor:
    p = _floating(_to_tensor(probs, name), name, "probabilities")
    _check_2d(p, name, "probabilities")
    if p.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one sample, got shape {tuple(p.shape)}")
    if validate_args:
        _check_prob_values(p, name, "; pass probabilities (e.g. softmax(logits)), not logits")
    return p


def _as_targets(
    targets: Any,
    n: int,
    c: int,
    device: torch.device,
    dtype: torch.dtype,
    validate_args: bool,
    name: str = "targets",
) -> tuple[Tensor, bool]:
    """Return ``(targets, is_soft)``: int64 labels ``(N,)`` or dense soft targets ``(N, C)``."""
    if not isinstance(targets, Tensor) and hasattr(targets, "to_dense"):  # softnce.SoftTargets
        targets = targets.to_dense(dtype=dtype)
    t = _to_tensor(targets, name)
    if t.ndim == 1:
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
            raise TypeError(
                f"{name} of shape (N,) must be integer class labels, got dtype {t.dtype}"
            )
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} labels but the predictions have {n} rows")
        t = t.to(device=device, dtype=torch.long)
        if validate_args and t.numel() > 0 and bool(((t < 0) | (t >= c)).any()):
            raise ValueError(
                f"{name} labels must be in [0, {c}) for {c} classes; found min {int(t.min())}, "
                f"max {int(t.max())}"
            )
        return t, False
    if t.ndim == 2:
        if tuple(t.shape) != (n, c):
            raise ValueError(
                f"soft {name} must have the predictions' shape {(n, c)}, got {tuple(t.shape)}"
            )
        if t.is_complex():
            raise TypeError(f"soft {name} must be real-valued, got dtype {t.dtype}")
        t = t.to(device=device, dtype=dtype)
        if validate_args:
            _check_prob_values(t, f"soft {name}")
        return t, True
    raise ValueError(
        f"{name} must have shape (N,) (integer labels) or (N, C) (soft targets), "
        f"got shape {tuple(t.shape)}"
    )


def _as_topk(k: Any, name: str = "k") -> tuple[int, ...]:
    ks = (k,) if isinstance(k, numbers.Integral) else tuple(k)
    if not ks or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in ks
    ):
        raise ValueError(f"{name} must be a positive integer or a sequence of them, got {k!r}")
    return tuple(int(v) for v in ks)


# --------------------------------------------------------------------------------------------
# per-sample statistics and binning (shared by the functions and the meter)
# --------------------------------------------------------------------------------------------


@dataclass
class _SampleStats:
    conf: Tensor  # (N,) top-1 confidence, input dtype
    acc: Tensor  # (N,) top-1 correctness (0/1 or target mass), input dtype
    pred: Tensor  # (N,) int64 top-1 class
    nll: Tensor  # (N,) float64
    brier: Tensor  # (N,) float64
    topk: dict[int, Tensor]  # k -> (N,) float64


def _top1(probs: Tensor, targets: Tensor, soft: bool) -> tuple[Tensor, Tensor, Tensor]:
    conf, pred = probs.max(dim=1)
    if soft:
        acc = targets.gather(1, pred[:, None]).squeeze(1).to(conf.dtype)
    else:
        acc = (pred == targets).to(conf.dtype)
    return conf, acc, pred


def _nll(probs: Tensor, targets: Tensor, soft: bool, log_probs: Tensor | None = None) -> Tensor:
    """Per-sample ``-sum_c y_c log max(p_c, eps)`` in float64, eps = finfo(dtype).tiny."""
    tiny = torch.finfo(probs.dtype).tiny
    if log_probs is None:
        lp = torch.log(probs.clamp_min(tiny))
    else:
        lp = log_probs.clamp_min(math.log(tiny))
    if soft:
        y = targets.to(torch.float64)
        prod = torch.where(
            y > 0, y * lp.to(torch.float64), torch.zeros((), dtype=y.dtype, device=y.device)
        )
        return -prod.sum(dim=1)
    return -lp.gather(1, targets[:, None]).squeeze(1).to(torch.float64)


def _brier(probs: Tensor, targets: Tensor, soft: bool) -> Tensor:
    """Per-sample ``sum_c (p_c - y_c)^2`` in float64."""
    p = probs.to(torch.float64)
    if soft:
        return (p - targets.to(torch.float64)).square().sum(dim=1)
    p_true = p.gather(1, targets[:, None]).squeeze(1)
    return p.square().sum(dim=1) - 2.0 * p_true + 1.0


def _topk_correct(
    scores: Tensor, targets: Tensor, soft: bool, ks: Sequence[int]
) -> dict[int, Tensor]:
    """k -> per-sample top-k correctness (target mass on the top-k classes for soft targets)."""
    if not ks:
        return {}
    c = scores.shape[1]
    kmax = min(max(ks), c)
    idx = scores.topk(kmax, dim=1, largest=True, sorted=True).indices
    out: dict[int, Tensor] = {}
    for k in ks:
        sel = idx[:, : min(k, c)]
        if soft:
            out[k] = targets.gather(1, sel).to(torch.float64).sum(dim=1)
        else:
            out[k] = (sel == targets[:, None]).any(dim=1).to(torch.float64)
    return out


def _sample_stats(
    probs: Tensor,
    targets: Tensor,
    soft: bool,
    ks: Sequence[int],
    log_probs: Tensor | None = None,
    scores: Tensor | None = None,
) -> _SampleStats:
    conf, acc, pred = _top1(probs, targets, soft)
    return _SampleStats(
        conf=conf,
        acc=acc,
        pred=pred,
        nll=_nll(probs, targets, soft, log_probs),
        brier=_brier(probs, targets, soft),
        topk=_topk_correct(probs if scores is None else scores, targets, soft, ks),
    )


def _bin_index(values: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin of each value in [0, 1]; 0 -> first bin, 1 -> last bin (clamped)."""
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=values.dtype, device=values.device)
    idx = torch.bucketize(values.contiguous(), edges, right=True) - 1
    return idx.clamp_(0, n_bins - 1)


def _bin_sums(conf: Tensor, acc: Tensor, n_bins: int) -> Tensor:
    """``(3, n_bins)`` float64: per-bin count, sum of confidences, sum of accuracies."""
    out = torch.zeros(3, n_bins, dtype=torch.float64, device=conf.device)
    if conf.numel() == 0:
        return out
    conf, acc = conf.detach(), acc.detach()
    idx = _bin_index(conf, n_bins)
    out[0].index_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    out[1].index_add_(0, idx, conf.to(torch.float64))
    out[2].index_add_(0, idx, acc.to(torch.float64))
    return out


def _classwise_sums(probs: Tensor, targets: Tensor, soft: bool, n_bins: int) -> Tensor:
    """``(3, C, n_bins)`` float64: per class and bin of ``p_c``: count, sum p_c, sum y_c."""
    n, c = probs.shape
    probs, targets = probs.detach(), targets.detach()
    out = torch.zeros(3, c * n_bins, dtype=torch.float64, device=probs.device)
    if n == 0:
        return out.view(3, c, n_bins)
    idx = _bin_index(probs, n_bins)  # (N, C)
    flat = (idx + torch.arange(c, device=probs.device)[None, :] * n_bins).reshape(-1)
    out[0] = torch.bincount(flat, minlength=c * n_bins).to(torch.float64)
    out[1].index_add_(0, flat, probs.reshape(-1).to(torch.float64))
    if soft:
        out[2].index_add_(0, flat, targets.reshape(-1).to(torch.float64))
    else:
        true_flat = idx.gather(1, targets[:, None]).squeeze(1) + targets * n_bins
        out[2].index_add_(0, true_flat, torch.ones(n, dtype=torch.float64, device=probs.device))
    return out.view(3, c, n_bins)


def _ece_from_sums(sums: Tensor) -> Tensor:
    r"""ECE = sum_b |B_b|/N |acc_b - conf_b| = sum_b |sum_acc_b - sum_conf_b| / N."""
    n = sums[0].sum()
    if float(n) == 0:
        return torch.full((), math.nan, dtype=torch.float64, device=sums.device)
    return (sums[2] - sums[1]).abs().sum() / n


def _mce_from_sums(sums: Tensor) -> Tensor:
    count = sums[0]
    nonempty = count > 0
    if not bool(nonempty.any()):
        return torch.full((), math.nan, dtype=torch.float64, device=sums.device)
    gaps = (sums[2][nonempty] - sums[1][nonempty]).abs() / count[nonempty]
    return gaps.max()


def _classwise_from_sums(cw: Tensor) -> Tensor:
    r"""classwise-ECE = 1/C sum_c sum_b |B_cb|/N |ybar_cb - pbar_cb|."""
    c = cw.shape[1]
    n = cw[0, 0].sum()  # every sample lands in exactly one bin of class 0
    if float(n) == 0:
        return torch.full((), math.nan, dtype=torch.float64, device=cw.device)
    return (cw[2] - cw[1]).abs().sum() / (n * c)


def _ace(conf: Tensor, acc: Tensor, n_bins: int) -> Tensor:
    r"""Equal-mass (adaptive) top-label calibration error.

    Samples are sorted by ``(confidence, accuracy)`` (lexicographic, so the result does not
    depend on the sample order) and split into ``n_bins`` contiguous groups whose sizes differ
    by at most one (sample at sorted position ``i`` goes to group ``floor(i * M / N)``); then
    ``ACE = sum_b |B_b|/N |acc_b - conf_b|``. Groups are empty only when ``N < n_bins``.
    """
    n = conf.numel()
    if n == 0:
        return torch.full((), math.nan, dtype=torch.float64, device=conf.device)
    conf, acc = conf.detach(), acc.detach()
    order = torch.argsort(acc, stable=True)
    order = order[torch.argsort(conf[order], stable=True)]
    cs = conf[order].to(torch.float64)
    acs = acc[order].to(torch.float64)
    group = torch.arange(n, device=conf.device) * n_bins // n
    diff = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    diff.index_add_(0, group, acs - cs)
    return diff.abs().sum() / n


def _prepare(
    probs: Any, targets: Any, n_bins: int | None, validate_args: bool
) -> tuple[Tensor, Tensor, bool]:
    if n_bins is not None:
        _check_n_bins(n_bins)
    p = _as_probs(probs, validate_args)
    t, soft = _as_targets(targets, p.shape[0], p.shape[1], p.device, p.dtype, validate_args)
    return p, t, soft


# --------------------------------------------------------------------------------------------
# functional API
# --------------------------------------------------------------------------------------------


def expected_calibration_error(
    probs: Any, targets: Any, n_bins: int = 15, *, validate_args: bool = True
) -> Tensor:
    r"""Expected calibration error with equal-width bins (Guo et al. 2017).

    .. math::
        \mathrm{ECE} = \sum_{b=1}^{M} \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) -
        \mathrm{conf}(B_b)\bigr|,

    where :math:`B_b` holds the samples whose top-1 confidence :math:`\max_c p_{ic}` falls in
    bin ``b`` of ``n_bins`` equal-width bins over [0, 1] (0 -> first bin, 1 -> last bin, see the
    module docstring), :math:`\mathrm{conf}(B_b)` is their mean confidence and
    :math:`\mathrm{acc}(B_b)` their mean correctness (target mass on the predicted class for
    soft targets).

    Args:
        probs: ``(N, C)`` probabilities (rows sum to 1).
        targets: ``(N,)`` integer labels, ``(N, C)`` soft targets or ``SoftTargets``.
        n_bins: number of equal-width bins ``M >= 1``.
        validate_args: check values (NaN, negatives, row sums within 1e-3, label range);
            shapes and dtypes are always checked.

    Returns:
        0-dim float64 tensor on ``probs``' device.
    """
    p, t, soft = _prepare(probs, targets, n_bins, validate_args)
    conf, acc, _ = _top1(p, t, soft)
    return _ece_from_sums(_bin_sums(conf, acc, n_bins))


def maximum_calibration_error(
    probs: Any, targets: Any, n_bins: int = 15, *, validate_args: bool = True
) -> Tensor:
    r"""Maximum calibration error (Guo et al. 2017) over the non-empty equal-width bins.

    .. math::
        \mathrm{MCE} = \max_{b:\,|B_b| > 0} \bigl|\mathrm{acc}(B_b) - \mathrm{conf}(B_b)\bigr|.

    Same binning, arguments and return type as :func:`expected_calibration_error`.
    """
    p, t, soft = _prepare(probs, targets, n_bins, validate_args)
    conf, acc, _ = _top1(p, t, soft)
    return _mce_from_sums(_bin_sums(conf, acc, n_bins))


def adaptive_calibration_error(
    probs: Any, targets: Any, n_bins: int = 15, *, validate_args: bool = True
) -> Tensor:
    r"""Adaptive (equal-mass) calibration error of the top-1 confidence (Nixon et al. 2019).

    The samples sorted by confidence are split into ``n_bins`` groups of equal size (sizes
    differ by at most one; ties in confidence are ordered by accuracy so the value does not
    depend on the sample order), and

    .. math::
        \mathrm{ACE} = \sum_{b=1}^{M} \frac{|B_b|}{N}\,\bigl|\mathrm{acc}(B_b) -
        \mathrm{conf}(B_b)\bigr|.

    Nixon et al. define ACE over the scores of *all* classes; this is the top-label variant
    with their adaptive ranges (what calibration libraries usually report as "adaptive ECE").
    Arguments and return type as in :func:`expected_calibration_error`.
    """
    p, t, soft = _prepare(probs, targets, n_bins, validate_args)
    conf, acc, _ = _top1(p, t, soft)
    return _ace(conf, acc, n_bins)


def classwise_calibration_error(
    probs: Any, targets: Any, n_bins: int = 15, *, validate_args: bool = True
) -> Tensor:
    r"""Classwise ECE (Kull et al. 2019): per-class ECE of :math:`p_c` against :math:`y_c`.

    .. math::
        \text{classwise-ECE} = \frac{1}{C} \sum_{c=1}^{C} \sum_{b=1}^{M}
        \frac{|B_{c,b}|}{N}\,\bigl|\bar y_c(B_{c,b}) - \bar p_c(B_{c,b})\bigr|,

    where :math:`B_{c,b}` holds the samples whose probability for class ``c`` (not only the
    predicted one) falls in equal-width bin ``b``, and :math:`y_c = 1[y = c]` (or the soft
    target mass ``y_c``). Arguments and return type as in :func:`expected_calibration_error`.
    """
    p, t, soft = _prepare(probs, targets, n_bins, validate_args)
    return _classwise_from_sums(_classwise_sums(p, t, soft, n_bins))


def brier_score(probs: Any, targets: Any, *, validate_args: bool = True) -> Tensor:
    r"""Multiclass Brier score (Brier 1950), mean over samples of the squared error.

    .. math::
        \mathrm{Brier} = \frac{1}{N} \sum_{i=1}^{N} \sum_{c=1}^{C} (p_{ic} - y_{ic})^2
        \in [0, 2],

    with :math:`y_{ic}` the one-hot label or the soft target. Returns a 0-dim float64 tensor.
    """
    p, t, soft = _prepare(probs, targets, None, validate_args)
    return _brier(p, t, soft).mean()


def negative_log_likelihood(probs: Any, targets: Any, *, validate_args: bool = True) -> Tensor:
    r"""Mean negative log-likelihood (cross-entropy against soft targets).

    .. math::
        \mathrm{NLL} = -\frac{1}{N} \sum_{i=1}^{N} \sum_{c=1}^{C} y_{ic}
        \log \max(p_{ic}, \varepsilon),

    which is :math:`-\frac1N\sum_i \log p_{i y_i}` for integer labels. :math:`\varepsilon` is
    ``torch.finfo(probs.dtype).tiny`` (about 1.2e-38 for float32, so a zero probability on the
    true class costs :math:`-\log\varepsilon \approx 87.3` instead of ``inf``); terms with
    :math:`y_{ic} = 0` contribute exactly 0. Returns a 0-dim float64 tensor.
    """
    p, t, soft = _prepare(probs, targets, None, validate_args)
    return _nll(p, t, soft).mean()


def top_k_accuracy(
    probs_or_logits: Any,
    targets: Any,
    k: int | Sequence[int] = (1, 5),
    *,
    validate_args: bool = True,
) -> Tensor | dict[int, Tensor]:
    r"""Top-k accuracy from probabilities or logits (the ranking is the same).

    .. math::
        \mathrm{top}\text{-}k = \frac{1}{N}\sum_{i=1}^{N} \sum_{c \in \mathrm{top}_k(i)} y_{ic},

    i.e. the fraction of samples whose label is among the ``k`` highest scores; with soft
    targets, the mean target mass on the ``k`` highest-scoring classes. A ``k`` larger than the
    number of classes ``C`` is clamped to ``C`` (so top-k is then 1 for integer labels); the
    result is still reported under the requested ``k``.

    Returns:
        a 0-dim float64 tensor if ``k`` is an int, else ``{k: tensor}`` for each requested k.
    """
    ks = _as_topk(k)
    s = _floating(_to_tensor(probs_or_logits, "probs_or_logits"), "probs_or_logits", "scores")
    _check_2d(s, "probs_or_logits", "scores")
    if s.shape[0] == 0:
        raise ValueError(
            f"probs_or_logits must contain at least one sample, got shape {tuple(s.shape)}"
        )
    if validate_args and bool(torch.isnan(s).any()):
        raise ValueError(
            f"probs_or_logits must not contain NaN; found {int(torch.isnan(s).sum())} NaN entries"
        )
    t, soft = _as_targets(targets, s.shape[0], s.shape[1], s.device, s.dtype, validate_args)
    correct = _topk_correct(s, t, soft, ks)
    out = {kk: v.mean() for kk, v in correct.items()}
    return out[ks[0]] if isinstance(k, numbers.Integral) else out


# --------------------------------------------------------------------------------------------
# reliability curves and diagrams
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of an equal-width reliability diagram.

    Attributes:
        confidence: ``(M,)`` float64 mean top-1 confidence per bin (NaN for empty bins).
        accuracy: ``(M,)`` float64 mean correctness per bin (NaN for empty bins).
        count: ``(M,)`` int64 number of samples per bin.
        bin_edges: ``(M + 1,)`` float64 edges ``linspace(0, 1, M + 1)``.
    """

    confidence: Tensor
    accuracy: Tensor
    count: Tensor
    bin_edges: Tensor

    @classmethod
    def from_sums(cls, sums: Tensor) -> ReliabilityCurve:
        """Build from ``(3, M)`` per-bin (count, sum of confidences, sum of accuracies)."""
        count = sums[0]
        safe = count.clamp_min(1)
        empty = count == 0
        nan = torch.full_like(count, math.nan)
        m = sums.shape[1]
        return cls(
            confidence=torch.where(empty, nan, sums[1] / safe),
            accuracy=torch.where(empty, nan, sums[2] / safe),
            count=count.round().to(torch.int64),
            bin_edges=torch.linspace(0.0, 1.0, m + 1, dtype=torch.float64, device=sums.device),
        )

    @property
    def n_bins(self) -> int:
        return int(self.count.numel())

    @property
    def n(self) -> int:
        """Total number of samples."""
        return int(self.count.sum())

    def _gaps(self) -> Tensor:
        return torch.nan_to_num(self.accuracy - self.confidence, nan=0.0)

    @property
    def ece(self) -> float:
        """ECE recomputed from the bins: ``sum_b count_b / N * |acc_b - conf_b|``."""
        n = self.n
        return math.nan if n == 0 else float((self.count * self._gaps().abs()).sum() / n)

    @property
    def mce(self) -> float:
        """MCE over the non-empty bins."""
        nonempty = self.count > 0
        return math.nan if not bool(nonempty.any()) else float(self._gaps()[nonempty].abs().max())


def reliability_curve(
    probs: Any, targets: Any, n_bins: int = 15, *, validate_args: bool = True
) -> ReliabilityCurve:
    """Per-bin mean confidence, accuracy and count of the top-1 prediction (equal-width bins).

    The binning is that of :func:`expected_calibration_error`, so ``curve.ece`` equals it.
    """
    p, t, soft = _prepare(probs, targets, n_bins, validate_args)
    conf, acc, _ = _top1(p, t, soft)
    return ReliabilityCurve.from_sums(_bin_sums(conf, acc, n_bins))


def _to_curve(item: Any, n_bins: int, name: str) -> ReliabilityCurve:
    if isinstance(item, ReliabilityCurve):
        return item
    if hasattr(item, "reliability_curve") and callable(item.reliability_curve):
        curve = item.reliability_curve()
        if isinstance(curve, ReliabilityCurve):
            return curve
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return reliability_curve(item[0], item[1], n_bins)
    raise TypeError(
        f"{name} must be a ReliabilityCurve, a (probs, targets) pair or a CalibrationMeter, "
        f"got {type(item).__name__}"
    )


def plot_reliability_diagram(
    curves_or_dict: Any,
    path: str | Path | None = None,
    *,
    n_bins: int = 15,
    title: str | None = None,
    show_histogram: bool = True,
    panel_size: tuple[float, float] = (3.6, 4.2),
    dpi: int = 120,
) -> Figure:
    """Draw reliability diagrams for one or several models side by side.

    Each model gets a column: on top, per-bin accuracy bars with the gap to the bin's mean
    confidence drawn as a hatched bar (red: over-confident, blue: under-confident), the
    diagonal of perfect calibration and the ECE in the legend; below (``show_histogram``), the
    fraction of samples per confidence bin with the mean confidence and accuracy marked.

    Args:
        curves_or_dict: a :class:`ReliabilityCurve`, a ``(probs, targets)`` pair, a
            :class:`CalibrationMeter`, or a dict ``name -> any of these`` (one column each,
            in dict order).
        path: if given, save there; the format follows the extension (``.png``, ``.svg``,
            ``.pdf``). Parent directories are created.
        n_bins: bins for entries given as ``(probs, targets)``.
        title: optional figure title.
        show_histogram: add the confidence histogram row.
        panel_size: ``(width, height)`` in inches per model column.
        dpi: resolution for raster output.

    Returns:
        the ``matplotlib.figure.Figure`` (Agg canvas; pyplot's global state is not touched).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    over, under = "#c44e52", "#55a8c4"  # gap colours: over- / under-confident bins
    _check_n_bins(n_bins)
    if path is not None:
        path = Path(path)
        if path.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ValueError(f"path must end in .png, .svg or .pdf, got {str(path)!r}")
    if isinstance(curves_or_dict, Mapping):
        if not curves_or_dict:
            raise ValueError("curves_or_dict must contain at least one model, got an empty dict")
        items = {
            str(k): _to_curve(v, n_bins, f"curves_or_dict[{k!r}]")
            for k, v in curves_or_dict.items()
        }
    else:
        items = {"model": _to_curve(curves_or_dict, n_bins, "curves_or_dict")}

    ncols = len(items)
    nrows = 2 if show_histogram else 1
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(nrows, ncols, height_ratios=[3, 1] if show_histogram else [1])
    for col, (name, curve) in enumerate(items.items()):
        edges = curve.bin_edges.detach().cpu().double().numpy()
        width = edges[1:] - edges[:-1]
        centers = edges[:-1] + width / 2
        acc = curve.accuracy.detach().cpu().double().numpy()
        conf = curve.confidence.detach().cpu().double().numpy()
        count = curve.count.detach().cpu().double().numpy()
        nonempty = count > 0
        ax = fig.add_subplot(gs[0, col])
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
        ax.bar(
            centers[nonempty],
            acc[nonempty],
            width=width[nonempty],
            color="#4c72b0",
            edgecolor="black",
            lw=0.6,
            label="accuracy",
        )
        gap = conf[nonempty] - acc[nonempty]
        colors = [over if g > 0 else under for g in gap]
        ax.bar(
            centers[nonempty],
            gap,
            bottom=acc[nonempty],
            width=width[nonempty],
            color=colors,
            alpha=0.45,
            edgecolor=colors,
            hatch="//",
            lw=0.6,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(f"{name}  (N = {curve.n})", fontsize=10)
        ax.set_ylabel("accuracy")
        handles, _ = ax.get_legend_handles_labels()
        handles.append(
            Patch(
                facecolor=over,
                edgecolor=over,
                alpha=0.45,
                hatch="//",
                label=f"gap (ECE = {100 * curve.ece:.2f}%)",
            )
        )
        ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
        if show_histogram:
            ax.tick_params(labelbottom=False)
            hx = fig.add_subplot(gs[1, col], sharex=ax)
            total = max(count.sum(), 1.0)
            hx.bar(centers, count / total, width=width, color="0.6", edgecolor="black", lw=0.5)
            n = count.sum()
            if n > 0:
                mean_conf = float((count * conf)[nonempty].sum() / n)
                mean_acc = float((count * acc)[nonempty].sum() / n)
                hx.axvline(mean_conf, color="#c44e52", lw=1.2, label=f"mean conf {mean_conf:.3f}")
                hx.axvline(
                    mean_acc, color="#4c72b0", lw=1.2, ls="--", label=f"accuracy {mean_acc:.3f}"
                )
                hx.legend(loc="upper left", fontsize=7, frameon=False)
            hx.set_xlabel("confidence")
            hx.set_ylabel("fraction")
        else:
            ax.set_xlabel("confidence")
    if title:
        fig.suptitle(title)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig


# --------------------------------------------------------------------------------------------
# streaming meter
# --------------------------------------------------------------------------------------------


def _dist_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class CalibrationMeter:
    r"""Streaming accumulator for top-k accuracy, ECE, MCE, ACE, classwise ECE, NLL and Brier.

    ``update(logits_or_probs, targets)`` per batch, ``compute()`` at the end, ``reset()`` to
    start over. State (all sums in float64, on the device of the first batch):

    * per equal-width bin: count, sum of top-1 confidences, sum of top-1 correctness
      (``3 * n_bins`` numbers) -> ECE, MCE;
    * per class and bin of :math:`p_c`: count, sum of :math:`p_c`, sum of :math:`y_c`
      (``3 * C * n_bins``) -> classwise ECE (Kull et al. 2019);
    * running sums of per-sample NLL, Brier score and top-k correctness;
    * only for the equal-mass ACE (Nixon et al. 2019): every sample's top-1 confidence and
      correctness, i.e. memory grows with N (two numbers per sample). With
      ``keep_confidences=False`` nothing grows and ``"ace"`` is omitted from ``compute()``.

    The metric definitions and bins are exactly those of the functions in this module, so
    streaming over batches equals the one-shot functions on the concatenated data.

    Distributed: if ``torch.distributed`` is initialised with world size > 1, ``compute()``
    (and :meth:`reliability_curve`, :meth:`prediction_counts`) are collectives: every rank must
    call them; they all-reduce the sums and all-gather the (variable-size) ACE buffers, so every
    rank returns the global numbers. Ranks may see different numbers of samples (also zero).
    All ranks must use the same ``n_bins``/``topk``/``keep_confidences``.

    Args:
        n_bins: number of bins ``M >= 1``.
        inputs: ``"logits"``: ``probs = softmax(x / temperature)``; ``"probs"``: ``x`` are
            probabilities (with ``temperature != 1`` they are re-tempered as
            ``softmax(log(x) / temperature)``, which equals ``softmax(logits / temperature)``);
            ``"auto"``: the first non-empty batch decides: probabilities if all entries are in
            [0, 1] and every row sums to 1 within 1e-3, else logits; the decision is kept until
            :meth:`reset` (``meter.resolved_inputs``).
        temperature: softmax temperature ``> 0``.
        num_classes: number of classes ``C``; inferred from the first batch if ``None``.
        keep_confidences: keep per-sample confidences/accuracies for ACE (see above).
        topk: the ``k`` for the ``"top{k}"`` keys (``k > C`` is clamped to ``C``).
        validate_args: value checks on every batch (NaN, probabilities, label range).

    ``compute()`` returns ``{"top1", "top5", "ece", "mce", "ace", "classwise_ece", "nll",
    "brier", "n"}`` (one ``"top{k}"`` per entry of ``topk``) as Python floats: fractions, not
    percent; ``n`` is the number of samples. With no samples every metric is NaN and ``n = 0``.
    ``classwise_ece`` is NaN if any batch was fed through :meth:`update_stats`, which has no
    per-class probabilities.
    """

    def __init__(
        self,
        n_bins: int = 15,
        inputs: Literal["auto", "logits", "probs"] = "auto",
        temperature: float = 1.0,
        num_classes: int | None = None,
        keep_confidences: bool = True,
        topk: int | Sequence[int] = (1, 5),
        validate_args: bool = True,
    ) -> None:
        self.n_bins = _check_n_bins(n_bins)
        if inputs not in ("auto", "logits", "probs"):
            raise ValueError(f"inputs must be 'auto', 'logits' or 'probs', got {inputs!r}")
        self.inputs = inputs
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not (math.isfinite(temperature) and temperature > 0)
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.temperature = float(temperature)
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be None or an integer >= 1, got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.keep_confidences = bool(keep_confidences)
        self.topk = _as_topk(topk, "topk")
        if len(set(self.topk)) != len(self.topk):
            raise ValueError(f"topk must not repeat values, got {topk!r}")
        self.validate_args = bool(validate_args)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every sample (and the ``"auto"`` decision and inferred ``num_classes``)."""
        self.resolved_inputs: str | None = None if self.inputs == "auto" else self.inputs
        self._classes: int | None = self.num_classes
        self._device: torch.device | None = None
        self._n = 0
        self._bins: Tensor | None = None  # (3, M)
        self._scalars: Tensor | None = None  # (2 + len(topk),): nll, brier, top-k sums
        self._cw: Tensor | None = None  # (3, C, M)
        self._cw_valid = True
        self._pred_counts: Tensor | None = None  # (C',) float64
        self._confs: list[Tensor] = []
        self._accs: list[Tensor] = []

    def _init_state(self, device: torch.device) -> None:
        if self._device is None:
            self._device = device
            self._bins = torch.zeros(3, self.n_bins, dtype=torch.float64, device=device)
            self._scalars = torch.zeros(2 + len(self.topk), dtype=torch.float64, device=device)
        elif device != self._device:
            raise ValueError(
                f"all batches must be on one device: the meter's state is on {self._device}, "
                f"got a batch on {device} (call reset() to switch devices)"
            )

    def _check_classes(self, c: int, name: str) -> None:
        if self._classes is None:
            self._classes = c
        elif c != self._classes:
            raise ValueError(
                f"{name} has {c} classes but the meter expects num_classes={self._classes}"
            )

    # ------------------------------------------------------------------ updates

    def update(self, logits_or_probs: Any, targets: Any) -> None:
        """Add a batch: ``(N, C)`` logits or probabilities and labels / soft targets."""
        x = _floating(
            _to_tensor(logits_or_probs, "logits_or_probs").detach(),
            "logits_or_probs",
            "logits or probabilities",
        )
        if not isinstance(targets, Tensor) and hasattr(targets, "to_dense"):
            targets = targets.to_dense(dtype=x.dtype)
        if isinstance(targets, Tensor):
            targets = targets.detach()
        _check_2d(x, "logits_or_probs", "logits or probabilities")
        n, c = x.shape
        self._check_classes(c, "logits_or_probs")
        if n == 0:
            _as_targets(targets, 0, c, x.device, x.dtype, False)  # shape check only
            return
        mode = self.resolved_inputs
        if mode is None:
            looks_like_probs = not bool(_prob_rows_bad(x)) and bool((x <= 1).all())
            mode = "probs" if looks_like_probs else "logits"
            self.resolved_inputs = mode
        log_probs: Tensor | None = None
        if mode == "probs":
            if self.validate_args:
                hint = (
                    " (inputs were detected as probabilities from the first batch)"
                    if self.inputs == "auto"
                    else ""
                )
                _check_prob_values(x, "logits_or_probs", hint)
            probs = x
            scores = x
            if self.temperature != 1.0:
                scores = torch.log(x.clamp_min(torch.finfo(x.dtype).tiny)) / self.temperature
                log_probs = F.log_softmax(scores, dim=1)
                probs = F.softmax(scores, dim=1)
        else:
            if self.validate_args and bool(torch.isnan(x).any()):
                raise ValueError(
                    f"logits_or_probs must not contain NaN; found {int(torch.isnan(x).sum())} "
                    "NaN entries"
                )
            scores = x / self.temperature if self.temperature != 1.0 else x
            log_probs = F.log_softmax(scores, dim=1)
            probs = F.softmax(scores, dim=1)
        t, soft = _as_targets(targets, n, c, x.device, probs.dtype, self.validate_args)
        st = _sample_stats(probs, t, soft, self.topk, log_probs=log_probs, scores=scores)
        self._accumulate(st.conf, st.acc, st.nll, st.brier, st.topk, st.pred)
        cw = _classwise_sums(probs, t, soft, self.n_bins)
        self._cw = cw if self._cw is None else self._cw.add_(cw)

    def update_stats(
        self,
        confidences: Tensor,
        accuracies: Tensor,
        nll: Tensor,
        brier: Tensor,
        topk_correct: Mapping[int, Tensor],
        predictions: Tensor | None = None,
    ) -> None:
        r"""Add per-sample statistics computed elsewhere (e.g. chunked over a huge label space).

        All arguments are ``(N,)`` tensors on one device: the top-1 confidence
        :math:`\max_c p_c \in [0, 1]`, the top-1 correctness :math:`a \in [0, 1]` (0/1 or the
        target mass on the predicted class), the per-sample NLL :math:`-\sum_c y_c\log p_c`, the
        per-sample Brier score :math:`\sum_c (p_c - y_c)^2`, and ``topk_correct[k]`` (top-k
        correctness or target mass on the top-k classes) for every ``k`` in the meter's
        ``topk`` (extra keys are ignored). ``predictions`` (optional, ``(N,)`` int64 top-1
        classes) feed :meth:`prediction_counts`.

        Without the ``(N, C)`` probabilities there are no per-class statistics, so once a
        non-empty batch came in this way ``compute()["classwise_ece"]`` is NaN until
        :meth:`reset`.
        """
        tensors = {"confidences": confidences, "accuracies": accuracies, "nll": nll, "brier": brier}
        if not isinstance(topk_correct, Mapping):
            raise TypeError(
                f"topk_correct must be a dict {{k: (N,) tensor}}, got {type(topk_correct).__name__}"
            )
        missing = [k for k in self.topk if k not in topk_correct]
        if missing:
            raise ValueError(
                f"topk_correct must have keys {list(self.topk)} (the meter's topk), "
                f"missing {missing}"
            )
        for k in self.topk:
            tensors[f"topk_correct[{k}]"] = topk_correct[k]
        conv: dict[str, Tensor] = {}
        n = None
        for name, v in tensors.items():
            v = _to_tensor(v, name).detach()
            if v.ndim != 1:
                raise ValueError(f"{name} must have shape (N,), got {tuple(v.shape)}")
            if n is None:
                n = v.shape[0]
            elif v.shape[0] != n:
                raise ValueError(f"{name} has {v.shape[0]} entries but confidences has {n}")
            conv[name] = v
        assert n is not None
        conf = conv["confidences"]
        if not conf.is_floating_point():
            raise TypeError(f"confidences must be floating point, got dtype {conf.dtype}")
        if conf.dtype in (torch.float16, torch.bfloat16):
            conf = conf.float()
        dev = conf.device
        for name, v in conv.items():
            if v.device != dev:
                raise ValueError(f"{name} is on {v.device} but confidences is on {dev}")
        acc = conv["accuracies"].to(conf.dtype)
        if predictions is not None:
            predictions = _to_tensor(predictions, "predictions").detach()
            if predictions.shape != (n,):
                raise ValueError(
                    f"predictions must have shape ({n},), got {tuple(predictions.shape)}"
                )
            if predictions.is_floating_point() or predictions.dtype == torch.bool:
                raise TypeError(
                    f"predictions must be integer class indices, got dtype {predictions.dtype}"
                )
            predictions = predictions.to(dev, torch.long)
        if self.validate_args and n > 0:
            self._validate_stats(conf, acc, conv, predictions)
        if n == 0:
            return
        self._accumulate(
            conf,
            acc,
            conv["nll"],
            conv["brier"],
            {k: conv[f"topk_correct[{k}]"] for k in self.topk},
            predictions,
        )
        self._cw_valid = False

    def _validate_stats(
        self, conf: Tensor, acc: Tensor, conv: dict[str, Tensor], pred: Tensor | None
    ) -> None:
        for name in conv:
            if bool(torch.isnan(conv[name].double()).any()):
                raise ValueError(f"{name} must not contain NaN")
        for name, v, hi in (("confidences", conf, 1.0), ("accuracies", acc, 1.0)):
            if bool(((v < 0) | (v > hi)).any()):
                raise ValueError(
                    f"{name} must be in [0, 1]; found range [{float(v.min()):.6g}, "
                    f"{float(v.max()):.6g}]"
                )
        if bool((conv["nll"] < 0).any()):
            raise ValueError(f"nll must be >= 0; found minimum {float(conv['nll'].min()):.6g}")
        b = conv["brier"].double()
        if bool(((b < -1e-9) | (b > 2 + 1e-9)).any()):
            raise ValueError(
                f"brier must be in [0, 2]; found range [{float(b.min()):.6g}, {float(b.max()):.6g}]"
            )
        for k in self.topk:
            v = conv[f"topk_correct[{k}]"].double()
            if bool(((v < -1e-9) | (v > 1 + 1e-9)).any()):
                raise ValueError(f"topk_correct[{k}] must be in [0, 1]")
        if pred is not None and bool((pred < 0).any()):
            raise ValueError(f"predictions must be >= 0; found {int(pred.min())}")
        if pred is not None and self._classes is not None and bool((pred >= self._classes).any()):
            raise ValueError(
                f"predictions must be < num_classes={self._classes}; found {int(pred.max())}"
            )

    def _accumulate(
        self,
        conf: Tensor,
        acc: Tensor,
        nll: Tensor,
        brier: Tensor,
        topk: Mapping[int, Tensor],
        pred: Tensor | None,
    ) -> None:
        self._init_state(conf.device)
        assert self._bins is not None and self._scalars is not None
        self._n += int(conf.shape[0])
        self._bins.add_(_bin_sums(conf, acc, self.n_bins))
        parts = [nll.to(torch.float64).sum(), brier.to(torch.float64).sum()]
        parts += [topk[k].to(torch.float64).sum() for k in self.topk]
        self._scalars.add_(torch.stack(parts))
        if self.keep_confidences:
            self._confs.append(conf.detach().clone())
            self._accs.append(acc.detach().clone())
        if pred is not None:
            size = int(pred.max()) + 1
            if self._classes is not None:
                size = max(size, self._classes)
            counts = torch.bincount(pred, minlength=size).to(torch.float64)
            if self._pred_counts is None:
                self._pred_counts = counts
            else:
                if counts.numel() > self._pred_counts.numel():
                    counts[: self._pred_counts.numel()] += self._pred_counts
                    self._pred_counts = counts
                else:
                    self._pred_counts[: counts.numel()] += counts

    # ------------------------------------------------------------------ reduction

    def _comm_device(self) -> torch.device:
        if self._device is not None:
            return self._device
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _global_state(self, with_samples: bool) -> dict[str, Any]:
        """Local state, or under DDP the state summed/gathered over all ranks (collective)."""
        dev = self._comm_device() if _dist_world() > 1 else (self._device or torch.device("cpu"))
        m = self.n_bins
        bins = (
            self._bins
            if self._bins is not None
            else torch.zeros(3, m, dtype=torch.float64, device=dev)
        )
        scalars = (
            self._scalars
            if self._scalars is not None
            else torch.zeros(2 + len(self.topk), dtype=torch.float64, device=dev)
        )
        cw, cw_valid = self._cw, self._cw_valid
        pred = self._pred_counts
        confs = accs = None
        if with_samples and self.keep_confidences:
            if self._confs:
                confs, accs = torch.cat(self._confs), torch.cat(self._accs)
                if accs.dtype != confs.dtype:
                    accs = accs.to(confs.dtype)
            else:
                confs = torch.zeros(0, dtype=torch.float32, device=dev)
                accs = torch.zeros(0, dtype=torch.float32, device=dev)
        n = float(self._n)
        if _dist_world() == 1:
            return {
                "n": n,
                "bins": bins,
                "scalars": scalars,
                "cw": cw if cw_valid else None,
                "pred": pred,
                "confs": confs,
                "accs": accs,
            }

        # header: [C of classwise state (MAX), classwise invalid (MAX), prediction-count length
        # (MAX), float64-samples flag (MAX)]
        c_local = 0 if cw is None else cw.shape[1]
        header = torch.tensor(
            [
                c_local,
                0 if cw_valid else 1,
                0 if pred is None else pred.numel(),
                int(confs is not None and confs.dtype == torch.float64),
            ],
            dtype=torch.int64,
            device=dev,
        )
        dist.all_reduce(header, op=dist.ReduceOp.MAX)
        c_glob, cw_invalid, p_len, f64 = (int(v) for v in header.tolist())
        use_cw = c_glob > 0 and not cw_invalid
        if use_cw and cw is not None and cw.shape[1] != c_glob:
            raise ValueError(
                f"ranks disagree on the number of classes ({cw.shape[1]} here, {c_glob} elsewhere)"
            )
        chunks = [
            torch.tensor([n], dtype=torch.float64, device=dev),
            bins.reshape(-1),
            scalars.reshape(-1),
        ]
        if use_cw:
            chunks.append(
                cw.reshape(-1)
                if cw is not None
                else torch.zeros(3 * c_glob * m, dtype=torch.float64, device=dev)
            )
        if p_len:
            pc = torch.zeros(p_len, dtype=torch.float64, device=dev)
            if pred is not None:
                pc[: pred.numel()] = pred
            chunks.append(pc)
        flat = torch.cat([ch.to(dev) for ch in chunks])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        sizes = [1, 3 * m, scalars.numel(), 3 * c_glob * m if use_cw else 0, p_len]
        parts = list(torch.split(flat, sizes))
        out: dict[str, Any] = {
            "n": float(parts[0]),
            "bins": parts[1].view(3, m),
            "scalars": parts[2],
            "cw": parts[3].view(3, c_glob, m) if use_cw else None,
            "pred": parts[4] if p_len else None,
            "confs": None,
            "accs": None,
        }
        if with_samples and self.keep_confidences:
            assert confs is not None and accs is not None
            dtype = torch.float64 if f64 else torch.float32
            local = torch.stack([confs.to(dev, dtype), accs.to(dev, dtype)])  # (2, n_local)
            world = dist.get_world_size()
            size = torch.tensor([local.shape[1]], dtype=torch.int64, device=dev)
            sizes_all = [torch.zeros_like(size) for _ in range(world)]
            dist.all_gather(sizes_all, size)
            lens = [int(s) for s in sizes_all]
            width = max(lens)
            padded = torch.zeros(2, width, dtype=dtype, device=dev)
            padded[:, : local.shape[1]] = local
            gathered = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(gathered, padded)
            allv = torch.cat([g[:, :ln] for g, ln in zip(gathered, lens)], dim=1)
            out["confs"], out["accs"] = allv[0], allv[1]
        return out

    # ------------------------------------------------------------------ results

    def compute(self) -> dict[str, float]:
        """The metrics over everything seen since :meth:`reset` (global under DDP).

        Keys: ``top{k}`` for each ``k`` in ``topk``, ``ece``, ``mce``, ``ace`` (only with
        ``keep_confidences``), ``classwise_ece``, ``nll``, ``brier``, ``n``. Does not change
        the state, so ``update`` can continue afterwards.
        """
        g = self._global_state(with_samples=True)
        n = g["n"]
        keys = [f"top{k}" for k in self.topk] + ["ece", "mce"]
        keys += ["ace"] if self.keep_confidences else []
        keys += ["classwise_ece", "nll", "brier"]
        if n == 0:
            out = dict.fromkeys(keys, math.nan)
            out["n"] = 0.0
            return out
        dev = g["bins"].device
        nan = torch.full((), math.nan, dtype=torch.float64, device=dev)
        s = g["scalars"]
        vals = [s[2 + i] / n for i in range(len(self.topk))]
        vals += [_ece_from_sums(g["bins"]), _mce_from_sums(g["bins"])]
        if self.keep_confidences:
            vals.append(_ace(g["confs"], g["accs"], self.n_bins))
        vals.append(_classwise_from_sums(g["cw"]) if g["cw"] is not None else nan)
        vals += [s[0] / n, s[1] / n]
        floats = torch.stack([v.to(dev, torch.float64) for v in vals]).tolist()
        out = dict(zip(keys, floats))
        out["n"] = float(n)
        return out

    def reliability_curve(self) -> ReliabilityCurve:
        """The equal-width reliability curve of everything seen (collective under DDP)."""
        return ReliabilityCurve.from_sums(self._global_state(with_samples=False)["bins"])

    def prediction_counts(self) -> Tensor | None:
        """``(C,)`` int64 count of top-1 predictions per class (global under DDP; collective).

        Filled by :meth:`update` and by :meth:`update_stats` calls that pass ``predictions``;
        ``None`` if no predictions were seen. Useful to spot collapse onto a few classes.
        """
        pred = self._global_state(with_samples=False)["pred"]
        return None if pred is None else pred.round().to(torch.int64)

    def __repr__(self) -> str:
        return (
            f"CalibrationMeter(n_bins={self.n_bins}, inputs={self.inputs!r}, "
            f"temperature={self.temperature}, n={self._n})"
        )


# --------------------------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------------------------


class TemperatureScaler:
    r"""Temperature scaling (Guo et al. 2017): one scalar :math:`T > 0` fitted on held-out data.

    ``fit(logits, labels)`` minimises the validation NLL

    .. math::
        \mathcal L(T) = -\frac1N \sum_i \sum_c y_{ic} \log \operatorname{softmax}(z_i / T)_c

    over :math:`\log T` with L-BFGS (strong-Wolfe line search, float64). :math:`\mathcal L` is
    convex in :math:`1/T`, so this normally finds the optimum; as a safeguard the result is
    compared with :math:`T = 1` and with the best point of a log-spaced grid over ``bounds``,
    and the candidate with the lowest NLL is kept, so the fitted NLL is never worse than at
    :math:`T = 1`. :math:`T` is clamped to ``bounds`` (separable validation data would
    otherwise drive :math:`T \to 0`).

    ``transform(logits)`` returns ``logits / T`` (argmax, hence accuracy, unchanged);
    ``predict_proba(logits)`` returns ``softmax(logits / T)``; ``report()`` gives NLL and ECE
    before (T = 1) and after on the fitting data.

    Args:
        temperature: initial / fixed temperature (used by ``transform`` before any ``fit``).
        n_bins: bins for the ECE in :meth:`report`.
        max_iter: L-BFGS iterations.
        bounds: ``(T_min, T_max)``.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        n_bins: int = 15,
        max_iter: int = 100,
        bounds: tuple[float, float] = (1e-2, 1e2),
    ) -> None:
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, numbers.Real)
            or not (math.isfinite(temperature) and temperature > 0)
        ):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        lo, hi = bounds
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"bounds must satisfy 0 < T_min < T_max < inf, got {bounds!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
        self.temperature = float(temperature)
        self.n_bins = _check_n_bins(n_bins)
        self.max_iter = int(max_iter)
        self.bounds = (float(lo), float(hi))
        self._report: dict[str, float] | None = None

    @staticmethod
    def _nll_at(z: Tensor, t: Tensor, soft: bool, log_t: Tensor) -> Tensor:
        lp = F.log_softmax(z / log_t.exp(), dim=1)
        if soft:
            return (
                -(torch.where(t > 0, t * lp, torch.zeros((), dtype=lp.dtype, device=lp.device)))
                .sum(1)
                .mean()
            )
        return -lp.gather(1, t[:, None]).mean()

    def fit(self, logits: Any, labels: Any, *, validate_args: bool = True) -> TemperatureScaler:
        """Fit the temperature on validation ``logits`` ``(N, C)`` and labels or soft targets."""
        x = _floating(_to_tensor(logits, "logits"), "logits", "logits")
        _check_2d(x, "logits", "logits")
        if x.shape[0] == 0:
            raise ValueError(f"logits must contain at least one sample, got shape {tuple(x.shape)}")
        if validate_args and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"logits must be finite; found {int((~torch.isfinite(x)).sum())} NaN/inf entries"
            )
        z = x.detach().to(torch.float64)
        t, soft = _as_targets(
            labels, z.shape[0], z.shape[1], z.device, torch.float64, validate_args, name="labels"
        )
        lo, hi = math.log(self.bounds[0]), math.log(self.bounds[1])

        def nll(v: float) -> float:
            return float(
                self._nll_at(z, t, soft, torch.tensor(v, dtype=torch.float64, device=z.device))
            )

        # L-BFGS on log T
        param = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [param],
            lr=1.0,
            max_iter=self.max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = self._nll_at(z, t, soft, param)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        cand = {"lbfgs": float(param.detach())}
        if not math.isfinite(cand["lbfgs"]):
            del cand["lbfgs"]
        else:
            cand["lbfgs"] = min(max(cand["lbfgs"], lo), hi)
        grid = torch.linspace(lo, hi, 25, dtype=torch.float64).tolist()
        grid_nll = [nll(v) for v in grid]
        best = min(range(len(grid)), key=lambda i: grid_nll[i])
        cand["grid"] = grid[best]
        cand["identity"] = 0.0
        scores = {k: nll(v) for k, v in cand.items()}
        method = min(scores, key=lambda k: scores[k])
        self.temperature = min(max(math.exp(cand[method]), self.bounds[0]), self.bounds[1])

        probs_before = F.softmax(z, dim=1)
        probs_after = F.softmax(z / self.temperature, dim=1)
        self._report = {
            "temperature": self.temperature,
            "nll_before": scores["identity"],
            "nll_after": scores[method],
            "ece_before": float(
                expected_calibration_error(probs_before, t, self.n_bins, validate_args=False)
            ),
            "ece_after": float(
                expected_calibration_error(probs_after, t, self.n_bins, validate_args=False)
            ),
            "n": float(z.shape[0]),
        }
        self.method_ = method
        return self

    def transform(self, logits: Tensor) -> Tensor:
        """``logits / T``."""
        return logits / self.temperature

    __call__ = transform

    def predict_proba(self, logits: Tensor) -> Tensor:
        """``softmax(logits / T)`` over the last dimension."""
        return F.softmax(logits / self.temperature, dim=-1)

    def report(self) -> dict[str, float]:
        """``{"temperature", "nll_before", "nll_after", "ece_before", "ece_after", "n"}``.

        Before = ``T = 1``; measured on the data passed to :meth:`fit`.
        """
        if self._report is None:
            raise RuntimeError("TemperatureScaler.report() needs fit() first")
        return dict(self._report)

    def __repr__(self) -> str:
        return f"TemperatureScaler(temperature={self.temperature:.4f})"
