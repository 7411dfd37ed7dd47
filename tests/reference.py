"""Slow float64 reference implementations of the softnce losses, written from the formulas.

Everything here loops over samples (and candidates) in Python and uses only elementary float64
tensor operations, so that it is obviously correct and independent of the vectorised library
code. The functions are differentiable (torch autograd through float64 scalars), so gradients of
the library can be compared with gradients of the reference.

Formulas (Hugger & Uhlmann, arXiv 2404.14076):

* soft targets ``y_j`` on the simplex; sparse targets ``y_j = sum_r w[j,r] e_{idx[j,r]} + u_j / C``;
* score ``s_ij = sum_c (z_ic / tau - log q_c) y_jc`` (``q = None``: no correction);
* InfoNCE ``loss_i = -log( exp(s_i,pos(i)) / sum_{j in candidates(i)} exp(s_ij) )``;
* soft-target cross-entropy ``loss_i = -sum_c y_ic log softmax(z_i / tau)_c``.

Other test modules import these helpers (e.g. ``from reference import ref_batch_infonce``; the
``tests`` folder is on ``sys.path`` under pytest's default rootdir-based import mode).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from softnce import SoftTargets

__all__ = [
    "ref_batch_infonce",
    "ref_dense",
    "ref_logsumexp",
    "ref_reduce",
    "ref_score",
    "ref_separated_infonce",
    "ref_soft_target_ce",
    "RefQueue",
]


def ref_dense(targets: object, num_classes: int) -> torch.Tensor:
    """Any target form -> a float64 (M, C) matrix, built row by row from the definitions.

    * int labels (M,): ``y_j = e_{label_j}``;
    * ``SoftTargets``: ``y_j = sum_r weights[j, r] e_{indices[j, r]} + uniform[j] / C``;
    * dense (M, C) float: taken as is.
    """
    if isinstance(targets, SoftTargets):
        rows = []
        for j in range(len(targets)):
            y = torch.full((num_classes,), float(targets.uniform[j]) / num_classes,
                           dtype=torch.float64)
            for r in range(targets.k):
                y[int(targets.indices[j, r])] += float(targets.weights[j, r])
            rows.append(y)
        return torch.stack(rows) if rows else torch.zeros(0, num_classes, dtype=torch.float64)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"unsupported targets {type(targets).__name__}")
    if targets.is_floating_point():
        return targets.detach().to(torch.float64).clone()
    rows = []
    for label in targets.tolist():
        y = torch.zeros(num_classes, dtype=torch.float64)
        y[int(label)] = 1.0
        rows.append(y)
    return torch.stack(rows) if rows else torch.zeros(0, num_classes, dtype=torch.float64)


def ref_score(
    z_i: torch.Tensor, y_j: torch.Tensor, log_q: torch.Tensor | None, tau: float
) -> torch.Tensor:
    """``s_ij = sum_c (z_ic / tau - log q_c) y_jc`` for one sample and one candidate (0-d).

    The sum over classes is a float64 elementwise product and sum (samples and candidates are
    looped over by the callers)."""
    coef = z_i / tau
    if log_q is not None:
        coef = coef - log_q
    return (coef * y_j).sum()


def ref_logsumexp(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log sum_j exp(v_j)`` for a list of 0-d tensors, shifted by the maximum for stability."""
    m = max(float(v.detach()) for v in values)
    acc = torch.zeros((), dtype=torch.float64)
    for v in values:
        acc = acc + torch.exp(v - m)
    return torch.log(acc) + m


def ref_reduce(losses: Sequence[torch.Tensor], reduction: str) -> torch.Tensor:
    """``"none"`` -> (N,) tensor; ``"sum"`` / ``"mean"`` over the rows."""
    stacked = torch.stack(list(losses)) if len(losses) else torch.zeros(0, dtype=torch.float64)
    if reduction == "none":
        return stacked
    total = torch.zeros((), dtype=torch.float64)
    for v in losses:
        total = total + v
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / len(losses)
    raise ValueError(reduction)


def _log_q(noise_probs: torch.Tensor | None) -> torch.Tensor | None:
    if noise_probs is None:
        return None
    return torch.tensor([math.log(float(p)) for p in noise_probs], dtype=torch.float64)


def ref_batch_infonce(
    logits: torch.Tensor,
    targets: object,
    noise_probs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    candidates: object | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """InfoNCE with in-batch candidates: candidates of every row are all rows of ``candidates``
    (default: ``targets`` itself); the positive of row ``i`` is candidate ``offset + i``."""
    z = logits.to(torch.float64)
    n, c = z.shape
    cands = ref_dense(targets if candidates is None else candidates, c)
    log_q = _log_q(noise_probs)
    losses = []
    for i in range(n):
        s = [ref_score(z[i], cands[j], log_q, temperature) for j in range(cands.shape[0])]
        losses.append(ref_logsumexp(s) - s[offset + i])
    return ref_reduce(losses, reduction)


def ref_separated_infonce(
    logits: torch.Tensor,
    targets: object,
    negatives: object | None,
    noise_probs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    positive_bias: torch.Tensor | None = None,
    negative_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE whose candidates for row ``i`` are its own target (the positive) and all rows of
    ``negatives`` (shared by the batch): ``loss_i = log(exp(s_ii) + sum_k exp(s_ik)) - s_ii``
    with ``s_ij = (z_i / tau - log q) . y_j + b_j``."""
    z = logits.to(torch.float64)
    n, c = z.shape
    pos = ref_dense(targets, c)
    neg = ref_dense(negatives, c) if negatives is not None else torch.zeros(0, c,
                                                                            dtype=torch.float64)
    log_q = _log_q(noise_probs)
    losses = []
    for i in range(n):
        s_pos = ref_score(z[i], pos[i], log_q, temperature)
        if positive_bias is not None:
            s_pos = s_pos + float(positive_bias[i])
        s = [s_pos]
        for k in range(neg.shape[0]):
            s_k = ref_score(z[i], neg[k], log_q, temperature)
            if negative_bias is not None:
                s_k = s_k + float(negative_bias[k])
            s.append(s_k)
        losses.append(ref_logsumexp(s) - s_pos)
    return ref_reduce(losses, reduction)


def ref_soft_target_ce(
    logits: torch.Tensor, targets: object, temperature: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """``loss_i = -sum_c y_ic (z_ic / tau - log sum_d exp(z_id / tau))``."""
    z = logits.to(torch.float64)
    n, c = z.shape
    y = ref_dense(targets, c)
    losses = []
    for i in range(n):
        scaled = z[i] / temperature
        m = float(scaled.detach().max())
        log_softmax = scaled - (torch.log(torch.exp(scaled - m).sum()) + m)
        losses.append(-(y[i] * log_softmax).sum())
    return ref_reduce(losses, reduction)


class RefQueue:
    """A plain Python FIFO of dense float64 target rows (oldest first), ``maxlen`` entries."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.rows: list[torch.Tensor] = []

    def push(self, targets: object, num_classes: int) -> None:
        dense = ref_dense(targets, num_classes)
        for j in range(dense.shape[0]):
            self.rows.append(dense[j])
            if len(self.rows) > self.maxlen:
                self.rows.pop(0)

    def dense(self, num_classes: int) -> torch.Tensor | None:
        """Contents oldest first, or ``None`` if empty (as the module's queue_candidates)."""
        if not self.rows:
            return None
        return torch.stack(self.rows)

    def __len__(self) -> int:
        return len(self.rows)
