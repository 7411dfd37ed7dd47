"""Functional calibration and accuracy metrics (see :mod:`softnce.metrics`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


from softnce.metrics._inputs import (
    _as_probs,
    _as_targets,
    _as_topk,
    _check_2d,
    _check_n_bins,
    _floating,
    _to_tensor,
)

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
            f"probs_or_logits must contain at least one sample; found shape {tuple(s.shape)}"
        )
    if validate_args and bool(torch.isnan(s).any()):
        raise ValueError(
            f"probs_or_logits must not contain NaN; found {int(torch.isnan(s).sum())} NaN entries"
        )
    t, soft = _as_targets(targets, s.shape[0], s.shape[1], s.device, s.dtype, validate_args)
    correct = _topk_correct(s, t, soft, ks)
    out = {kk: v.mean() for kk, v in correct.items()}
    return out[ks[0]] if isinstance(k, numbers.Integral) else out
