r"""Soft-target InfoNCE and soft-target cross-entropy (torch only).

Notation: logits ``z`` (N, C); targets ``y`` (rows on the probability simplex: dense (N, C),
integer labels (N,) meaning one-hot, or :class:`~softnce.targets.SoftTargets`); noise
distribution ``q`` over the C classes (strictly positive, sums to 1; ``None`` = uniform);
temperature ``tau > 0``.

Score of sample ``i`` against candidate target ``y_j``::

    s_ij = (z_i / tau - log q) . y_j

Loss of sample ``i`` (cross-entropy of the row ``s_i`` with its own target as the positive)::

    loss_i = -log( exp(s_i,pos(i)) / sum_{j in candidates(i)} exp(s_ij) )

With the ``- log q`` correction the optimum satisfies ``softmax(z / tau) = p(y | x)``: read
predictions and calibration from ``softmax(z / tau)``. One-hot targets give hard InfoNCE
(ranking NCE for conditional models, Ma & Collins 2018). Since every target row sums to one,
``-log q . y_j`` with uniform ``q`` is the same constant ``log C`` for all candidates and cancels:
``noise_probs=None`` is exactly the uniform noise distribution.

Cost: the score matrix is one product ``(z / tau) Y^T`` plus a per-candidate offset
``-(log q) . y_j`` — O(N M C) for dense targets and O(N M k + N C) for ``SoftTargets`` with ``k``
components — never the (N, M, C) broadcast of the published implementation. ``1 / tau`` is
folded into the (N, M) scores (the (N, C) logits are never divided), except for dense targets
with fewer classes than candidates (C < M), where ``1 / tau`` and ``log q`` go into the
smaller (N, C) side in one op: ``(z / tau - log q) Y^T``. For ``SoftTargets`` a custom
autograd function reads the logits once forward (row sums and one column gather) and writes
their gradient directly (one fill with the uniform part, one ``index_add_`` of the components).
Scores are computed in float32 (float64 stays float64) with autocast disabled, so the loss is
safe under AMP.

Checks: with ``validate_args=True`` (default) the logits are *not* scanned; a NaN or infinite
logit reaches the (N,) row sums or the per-row losses, which are checked (one host
synchronisation), and only then is the tensor scanned to produce the usual message. Targets are
checked with fused reductions; ``SoftTargets`` once per batch. ``validate_args=False`` reads no
value on the host (except the queue length in ``negatives="queue"`` and the sizes exchanged by
distributed gathering).

Candidate sets (``negatives=`` of :class:`SoftTargetInfoNCE`):

* ``"batch"``: all targets of the (global, under ``torch.distributed``) batch; positive = own row.
* ``"queue"``: own target + the last ``queue_size`` targets seen in training steps (a FIFO filled
  *after* each step, gathered across ranks, saved in ``state_dict``). The first step has an empty
  queue and a zero loss.
* ``"sampled"``: own target + ``num_negatives`` one-hot labels drawn from ``q`` (uniform when
  ``noise_probs`` is None), shared by the batch and identical on all ranks.
* ``"simplex"``: own target + ``num_negatives`` dense soft targets drawn per step from a known
  density ``r = Dirichlet(simplex_concentration)`` on the simplex (uniform by default), shared by
  the batch and identical on all ranks; every candidate is scored
  ``s_ij = (z_i / tau) . y_j - log r(y_j)`` (no ``q``: ``noise_probs`` must be None).

When are in-batch (or queued) soft negatives biased? Ranking NCE with candidates drawn from the
marginal ``p(y)`` of the targets is optimal at ``s(x, y) = log p(y | x) - log p(y) + c(x)``; the
score above can only subtract a *linear* function ``(log q) . y`` of the target. Hence:

* hard labels: any function on the K vertices is linear, ``q`` = class prior matches
  ``log p(y)``, and ``softmax(z / tau) -> p(y | x)`` (consistent);
* label-smoothed targets ``(1 - eps) onehot + eps / C`` (K support points): the optimum is
  ``z / tau = (log p(y | x) - log q) / (1 - eps) + log q``, so ``softmax(z / tau)`` is
  *sharpened* (with uniform ``q``: ``p^(1 / (1 - eps))`` renormalised);
* continuous soft labels (MixUp weights, annotator distributions, CC-distributed labels):
  ``log p(y)`` is not linear in ``y``, the linear model cannot absorb it, and the estimate is
  biased by an amount that does not shrink with more data (``softnce toy``: on continuous
  categorical labels the in-batch error grows with the label sharpness while the ``"simplex"``
  mode's error falls like ``n^-1/2``).

With ``"simplex"`` negatives the optimum is ``z / tau . y = log p(y | x) - c(x)``, which the
linear score represents exactly when the soft labels are continuous-categorical,
``p(y | x) ~ exp(eta(x) . y)`` (Gordon-Rodriguez et al. 2020): then ``z / tau -> eta(x)``. The
mode needs targets with a density (one-hot or smoothed targets have none); for a concentration
other than 1 the targets must lie inside the simplex (``log y`` is used).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softnce._scores import (
    NEGATIVES,  # noqa: F401  (public names)
    LogitScorer,
    Targets,
    _check_call,
    _checked_reduce,
    _compute_dtype,
    _needs_autograd,
    _no_autocast,
    _row_scores,
    _sparse_args,
    _SparseScores,
)
from softnce._validation import (
    check_reduction,
    check_temperature,
)
from softnce.infonce import InfoNCE, SoftTargetInfoNCE, separated_infonce, soft_target_infonce
from softnce.targets import SoftTargets

__all__ = [
    "NEGATIVES",
    "InfoNCE",
    "LogitScorer",
    "SoftTargetCrossEntropy",
    "SoftTargetInfoNCE",
    "separated_infonce",
    "soft_target_cross_entropy",
    "soft_target_infonce",
]


# --------------------------------------------------------------------------- functional
def soft_target_cross_entropy(
    logits: torch.Tensor,
    targets: Targets,
    temperature: float = 1.0,
    reduction: str = "mean",
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Soft-target cross-entropy ``loss_i = -(y_i . log_softmax(z_i / tau))``.

    Checks as :func:`soft_target_infonce` (no (N, C) scan of the logits when they are finite;
    nothing read on the host with ``validate_args=False``); an empty batch gives 0 with a zero
    gradient (``"mean"``/``"sum"``) or an empty tensor (``"none"``).

    Example::

        >>> soft_target_cross_entropy(torch.zeros(1, 4), torch.tensor([1]))  # = log 4
        tensor(1.3863)
    """
    deferred: list = []
    logits, tgt, tau, reduction = _check_call(logits, targets, temperature, reduction,
                                              validate_args, deferred)
    with _no_autocast(logits.device):
        z = logits.to(_compute_dtype(logits))
        logp = F.log_softmax(z / tau if tau != 1.0 else z, dim=1)
        row_sums = None
        if isinstance(tgt, SoftTargets):
            if _needs_autograd(tgt):
                loss = -tgt.dot_rows(logp)
            else:
                # the row sums of log p are taken in the same pass: a -inf logit in a class
                # without target mass reaches them (and the check) but not the loss
                _, loss, row_sums = _SparseScores.apply(logp, None, None, None,
                                                        *_sparse_args(tgt, logp.dtype, -1.0))
        else:
            loss = -_row_scores(logp, tgt)
    return _checked_reduce(logits, loss, reduction, validate_args, row_sums=row_sums,
                           temperature=tau, deferred=deferred)




class SoftTargetCrossEntropy(nn.Module):
    r"""Soft-target cross-entropy ``loss_i = -(y_i . log_softmax(z_i / tau))``.

    Accepts the same target forms as :class:`SoftTargetInfoNCE`. Shapes: logits (N, C) ->
    scalar (or (N,) with ``reduction="none"``).

    Example::

        >>> SoftTargetCrossEntropy()(torch.zeros(2, 4), torch.tensor([0, 3]))   # = log 4
        tensor(1.3863)
    """

    def __init__(self, temperature: float = 1.0, reduction: str = "mean",
                 validate_args: bool = True) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.reduction = check_reduction(reduction)
        self.validate_args = bool(validate_args)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"

    def forward(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        return soft_target_cross_entropy(logits, targets, self.temperature, self.reduction,
                                         self.validate_args)
