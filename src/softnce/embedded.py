r"""Soft-target InfoNCE for huge label spaces without (N, C) logits (torch only).

For a linear head ``z_i = E h_i + b`` (features ``h`` (N, D), class embeddings ``E`` (C, D), bias
``b`` (C,)), the score of sample ``i`` against a candidate target ``y_j`` is linear in ``y_j``::

    z_i . y_j = h_i . (E^T y_j) + b . y_j = h_i . g_j + beta_j

For a sparse soft target ``y_j = sum_r w_jr e_{idx_jr} + u_j / C`` (one-hot, label smoothing,
MixUp/CutMix: ``k <= 2`` indices plus a uniform mass, see :class:`~softnce.targets.SoftTargets`)
the *target embedding* is

    g_j    = sum_r w_jr E[idx_jr] + u_j * mean_c E[c]      (D,)
    beta_j = sum_r w_jr b[idx_jr] + u_j * mean_c b[c]      scalar

so the soft-target InfoNCE scores ``s_ij = (z_i / tau - log q) . y_j`` cost

* ``O(M k D)`` to embed the M candidates, ``O(N M D)`` for the products ``h_i . g_j``;
* ``O(C D)`` for the mean row of ``E``, computed **only if some candidate has uniform mass
  u_j > 0** (label smoothing). Hard labels and pure MixUp/CutMix mixes never touch it;
* ``O(C)`` for ``(log q) . y_j`` when a non-uniform noise distribution ``q`` is given.

No (N, C) logits are ever formed. Dense (M, C) candidate targets are accepted but cost
``O(M C D)`` (``g = Y E``).

The result equals ``soft_target_infonce(features @ E.T + b, targets, ...)`` up to floating point
rounding, values and gradients with respect to ``features``, ``E`` and ``b``. The module form
(:func:`embedded_infonce`) runs every candidate mode of :class:`~softnce.SoftTargetInfoNCE`
(in-batch with DDP gathering of targets, queue, sampled negatives) through
:meth:`~softnce.SoftTargetInfoNCE.forward_with_scorer` with an :class:`EmbeddingScorer`.

What this does not cover: heads that are not linear in the class weights (e.g. an MLP head, or
the paper's head with a final BatchNorm over the logits) need the full (N, C) logits.

Evaluation over all C classes without (N, C) memory is :func:`chunked_softmax_stats`
(streaming logsumexp and top-k over class chunks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from softnce._scores import (
    Targets,
    _log_noise,
    _no_autocast,
    _reduce,
    batch_infonce_rows,
    prepare_targets,
)
from softnce._validation import check_reduction, check_temperature
from softnce.infonce import InfoNCE, SoftTargetInfoNCE
from softnce.targets import SoftTargets

__all__ = [
    "EmbeddingScorer",
    "chunked_softmax_stats",
    "embedded_infonce",
    "soft_target_infonce_embedded",
]


# ----------------------------------------------------------------------------- checks
def _check_head_args(
    features: object, class_embeddings: object, class_bias: object, validate_args: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Shape / dtype checks of features (N, D), class_embeddings (C, D), class_bias (C,)."""
    for name, t in (("features", features), ("class_embeddings", class_embeddings)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; found {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor; found shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point; found dtype {t.dtype}")
    assert isinstance(features, torch.Tensor) and isinstance(class_embeddings, torch.Tensor)
    if class_embeddings.shape[0] < 1:
        raise ValueError(f"class_embeddings must have at least one class row (C, D); found shape "
                         f"{tuple(class_embeddings.shape)}")
    if features.shape[1] != class_embeddings.shape[1]:
        raise ValueError(
            f"features must have D={class_embeddings.shape[1]} columns (the width of "
            f"class_embeddings (C, D)); found shape {tuple(features.shape)}"
        )
    if features.device != class_embeddings.device:
        raise ValueError(f"features are on {features.device} but class_embeddings on "
                         f"{class_embeddings.device}")
    if class_bias is not None:
        if not isinstance(class_bias, torch.Tensor):
            raise TypeError(f"class_bias must be a torch.Tensor or None; found "
                            f"{type(class_bias).__name__}")
        if tuple(class_bias.shape) != (class_embeddings.shape[0],):
            raise ValueError(f"class_bias must have shape ({class_embeddings.shape[0]},) (one per "
                             f"class); found shape {tuple(class_bias.shape)}")
        if not class_bias.is_floating_point():
            raise TypeError(f"class_bias must be floating point; found dtype {class_bias.dtype}")
        if class_bias.device != class_embeddings.device:
            raise ValueError(f"class_bias is on {class_bias.device} but class_embeddings on "
                             f"{class_embeddings.device}")
    # Only the (N, D) features are scanned: checking E would itself cost O(C D) per step.
    if validate_args and features.numel() and not bool(torch.isfinite(features).all()):
        n_bad = int((~torch.isfinite(features)).sum())
        raise ValueError(f"features must be finite; found {n_bad} NaN or infinite entries")
    return features, class_embeddings, class_bias


def _head_dtype(features: torch.Tensor, class_embeddings: torch.Tensor) -> torch.dtype:
    if torch.float64 in (features.dtype, class_embeddings.dtype):
        return torch.float64
    return torch.float32


# ----------------------------------------------------------------------------- scorer
class EmbeddingScorer:
    r"""Scores ``a_i . y_j`` with ``a_i = (E h_i + b) / tau``, without forming the logits.

    Implements the scorer protocol of :meth:`SoftTargetInfoNCE.forward_with_scorer`:
    ``num_classes``, ``device``, ``dtype``, ``len()``, ``pairwise(candidates) -> (N, M)`` and
    ``rowwise(targets) -> (N,)``. Candidates are embedded as ``g_j = E^T y_j`` (M, D) and
    ``beta_j = b . y_j`` (M,); then ``S = (H G^T + beta) / tau``.

    The mean row of ``E`` (and mean of ``b``), needed for the uniform part of the targets, is
    computed lazily the first time a candidate with ``u_j > 0`` is seen and then reused by later
    calls on the same scorer (``mean_computed`` tells whether that happened).

    Args:
        features: (N, D) ``h``.
        class_embeddings: (C, D) ``E`` (e.g. the weight of an ``nn.Linear(D, C)``).
        class_bias: (C,) ``b`` or ``None``.
        temperature: ``tau > 0``.
        sparse_grad: gather rows of ``E`` with ``F.embedding(..., sparse=True)`` so that, for
            targets without a uniform part, the gradient of ``E`` is a sparse tensor touching
            only the candidate classes (needs an optimiser that accepts sparse gradients, e.g.
            ``torch.optim.SGD`` or ``SparseAdam``). With a uniform part the gradient is dense
            anyway (every row of ``E`` enters the mean).
    """

    def __init__(
        self,
        features: torch.Tensor,
        class_embeddings: torch.Tensor,
        class_bias: torch.Tensor | None = None,
        temperature: float = 1.0,
        sparse_grad: bool = False,
        validate_args: bool = False,
    ) -> None:
        features, class_embeddings, class_bias = _check_head_args(
            features, class_embeddings, class_bias, validate_args)
        self.tau = check_temperature(temperature)
        self.dtype = _head_dtype(features, class_embeddings)
        self.a = features.to(self.dtype) / self.tau
        self.weight = class_embeddings
        self.bias = class_bias
        self.num_classes = int(class_embeddings.shape[0])
        self.device = features.device
        self.sparse_grad = bool(sparse_grad)
        self._mean_e: torch.Tensor | None = None
        self._mean_b: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.a.shape[0]

    @property
    def mean_computed(self) -> bool:
        """Whether the O(C D) mean row of ``E`` has been computed by this scorer."""
        return self._mean_e is not None

    def _means(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._mean_e is None:
            self._mean_e = self.weight.mean(dim=0, dtype=self.dtype)
            if self.bias is not None:
                self._mean_b = self.bias.mean(dtype=self.dtype)
        return self._mean_e, self._mean_b

    def embed(self, candidates: Targets) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(g, beta)``: target embeddings ``E^T y_j`` (M, D) and biases ``b . y_j`` (M,)
        (``None`` without a bias)."""
        if isinstance(candidates, SoftTargets):
            if candidates.num_classes != self.num_classes:
                raise ValueError(f"targets have num_classes={candidates.num_classes} but "
                                 f"class_embeddings has C={self.num_classes} rows")
            idx = candidates.indices.to(self.device)
            w = candidates.weights.to(device=self.device, dtype=self.dtype)
            u = candidates.uniform.to(device=self.device, dtype=self.dtype)
            rows = F.embedding(idx, self.weight, sparse=self.sparse_grad).to(self.dtype)
            g = torch.einsum("mk,mkd->md", w, rows)
            beta = None
            if self.bias is not None:
                beta = (self.bias[idx].to(self.dtype) * w).sum(dim=1)
            if u.numel() and bool((u != 0).any()):
                mean_e, mean_b = self._means()
                g = g + u.unsqueeze(1) * mean_e.unsqueeze(0)
                if beta is not None and mean_b is not None:
                    beta = beta + u * mean_b
            return g, beta
        if candidates.dim() != 2 or candidates.shape[1] != self.num_classes:
            raise ValueError(f"dense targets must have shape (M, {self.num_classes}); found "
                             f"{tuple(candidates.shape)}")
        y = candidates.to(device=self.device, dtype=self.dtype)
        g = y @ self.weight.to(self.dtype)  # O(M C D): dense targets have no sparse structure
        beta = y @ self.bias.to(self.dtype) if self.bias is not None else None
        return g, beta

    def pairwise(self, candidates: Targets) -> torch.Tensor:
        """``S_ij = (h_i . g_j + beta_j) / tau`` -> (N, M)."""
        g, beta = self.embed(candidates)
        s = self.a @ g.T
        if beta is not None:
            s = s + (beta / self.tau).unsqueeze(0)
        return s

    def rowwise(self, targets: Targets) -> torch.Tensor:
        """``S_ii = (h_i . g_i + beta_i) / tau`` for matching rows -> (N,)."""
        g, beta = self.embed(targets)
        s = (self.a * g).sum(dim=1)
        if beta is not None:
            s = s + beta / self.tau
        return s


# ------------------------------------------------------------------------ functional
def soft_target_infonce_embedded(
    features: torch.Tensor,
    class_embeddings: torch.Tensor,
    targets: Targets,
    class_bias: torch.Tensor | None = None,
    noise_probs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    validate_args: bool = True,
    sparse_grad: bool = False,
) -> torch.Tensor:
    r"""Soft-target InfoNCE of a linear head ``z = h E^T + b`` without the (N, C) logits.

    Equals ``soft_target_infonce(features @ class_embeddings.T + class_bias, targets,
    noise_probs, temperature, reduction)`` (in-batch candidates, no distributed gathering)::

        s_ij   = (h_i . g_j + beta_j) / tau - (log q) . y_j
        g_j    = E^T y_j = sum_r w_jr E[idx_jr] + u_j mean_c E[c]
        beta_j = b . y_j = sum_r w_jr b[idx_jr] + u_j mean_c b[c]
        loss_i = logsumexp_j s_ij - s_ii

    Cost: ``O(N k D + N^2 D)`` for hard labels and MixUp/CutMix mixes (``k <= 2``), plus
    ``O(C D)`` once when some target has uniform mass (label smoothing), plus ``O(C)`` for a
    non-uniform ``noise_probs``. Dense (N, C) targets work but cost ``O(N C D)``.

    Args:
        features: (N, D) ``h``.
        class_embeddings: (C, D) ``E`` (e.g. ``nn.Linear(D, C).weight``).
        targets: ``SoftTargets`` (cheap), (N,) int64 labels (cheap), or dense (N, C) float.
        class_bias: (C,) ``b`` or ``None``.
        noise_probs: (C,) noise distribution ``q``; ``None`` = uniform.
        temperature: ``tau > 0``; predictions are ``softmax((h E^T + b) / tau)``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"``.
        validate_args: value checks of features, targets and ``noise_probs`` (``E`` is not
            scanned: that alone would cost O(C D)).
        sparse_grad: see :class:`EmbeddingScorer`.

    Returns:
        The reduced loss (float32, or float64 if ``features`` or ``E`` is float64).

    Example::

        >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> E = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
        >>> soft_target_infonce_embedded(h, E, torch.tensor([0, 1]))   # = log(1 + e^-2)
        tensor(0.1269)
    """
    features, class_embeddings, class_bias = _check_head_args(
        features, class_embeddings, class_bias, validate_args)
    n, c = features.shape[0], class_embeddings.shape[0]
    check_temperature(temperature)
    reduction = check_reduction(reduction)
    tgt = prepare_targets(targets, c, n, validate_args)
    with _no_autocast(features.device):
        scorer = EmbeddingScorer(features, class_embeddings, class_bias, temperature,
                                 sparse_grad=sparse_grad)
        log_q = _log_noise(noise_probs, c, scorer.dtype, scorer.device, validate_args)
        loss = batch_infonce_rows(scorer, tgt, log_q)
    return _reduce(loss, reduction)


def embedded_infonce(
    criterion: SoftTargetInfoNCE,
    features: torch.Tensor,
    class_embeddings: torch.Tensor,
    targets: Targets,
    class_bias: torch.Tensor | None = None,
    sparse_grad: bool = False,
) -> torch.Tensor:
    r"""``criterion(features @ E.T + b, targets)`` for a :class:`SoftTargetInfoNCE` (or
    :class:`InfoNCE`) module, computed without the (N, C) logits.

    Uses the module's temperature, noise distribution, candidate mode (``batch`` with DDP
    gathering of targets, ``queue`` -- which is updated as in ``criterion.forward`` --, or
    ``sampled``), reduction and ``validate_args``, through
    :meth:`SoftTargetInfoNCE.forward_with_scorer` with an :class:`EmbeddingScorer`.

    Example::

        >>> crit = SoftTargetInfoNCE(negatives="sampled", num_negatives=16)
        >>> h, E = torch.randn(4, 8, requires_grad=True), torch.randn(1000, 8)
        >>> embedded_infonce(crit, h, E, torch.tensor([1, 5, 7, 999])).backward()
    """
    if not isinstance(criterion, SoftTargetInfoNCE):
        raise TypeError(f"criterion must be a SoftTargetInfoNCE or InfoNCE module; found "
                        f"{type(criterion).__name__}")
    validate = criterion.validate_args
    features, class_embeddings, class_bias = _check_head_args(
        features, class_embeddings, class_bias, validate)
    n, c = features.shape[0], class_embeddings.shape[0]
    if isinstance(criterion, InfoNCE) and (
            not isinstance(targets, torch.Tensor) or targets.is_floating_point()
            or targets.dtype == torch.bool):
        found = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise TypeError(f"InfoNCE expects integer class labels (N,) as targets; found {found} "
                        f"(use SoftTargetInfoNCE for soft targets)")
    tgt = prepare_targets(targets, c, n, validate)
    with _no_autocast(features.device):
        scorer = EmbeddingScorer(features, class_embeddings, class_bias, criterion.temperature,
                                 sparse_grad=sparse_grad)
        return criterion.forward_with_scorer(scorer, tgt)


# ------------------------------------------------------------------------ evaluation
@torch.no_grad()
def chunked_softmax_stats(
    features: torch.Tensor,
    class_embeddings: torch.Tensor,
    labels: torch.Tensor,
    class_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    topk: Sequence[int] = (1, 5),
    chunk_size: int | None = None,
) -> dict:
    r"""Per-sample prediction and calibration statistics of ``p = softmax((h E^T + b) / tau)``
    over all C classes, streaming over class chunks (memory ``O(N * chunk_size)``).

    For each chunk of classes the logits ``l`` (N, chunk) are formed and folded into running

    * ``m`` = max logit, ``s = sum_c exp(l_c - m)``, ``s2 = sum_c exp(2 (l_c - m))``
      (rescaled by ``exp(m_old - m_new)`` resp. its square when the max grows);
    * the top-``max(topk)`` values and classes (merge of the running and the chunk's top-k).

    Then ``log Z = m + log s``, ``p_c = exp(l_c - log Z)`` and

    * ``confidences = max_c p_c``, ``predictions = argmax_c p_c``,
      ``accuracies = 1[prediction == label]``;
    * ``nll = log Z - l_label``;
    * ``brier = sum_c (p_c - 1[c == label])^2 = s2 / s^2 - 2 p_label + 1``;
    * ``topk_correct[k] = 1[label in top-k]`` (k clipped to C).

    Returns a dict with exactly the keyword arguments of
    ``CalibrationMeter.update_stats``: ``confidences, accuracies, nll, brier, topk_correct,
    predictions`` ((N,) tensors; ``topk_correct`` maps ``k -> (N,)``).

    Args:
        features: (N, D); class_embeddings: (C, D); labels: (N,) int64; class_bias: (C,) or None.
        temperature: ``tau > 0``.
        topk: the k values to report.
        chunk_size: classes per chunk; default ``max(1, 2**24 // N)`` (64 MiB of float32 logits).
    """
    features, class_embeddings, class_bias = _check_head_args(
        features, class_embeddings, class_bias, False)
    tau = check_temperature(temperature)
    n, c = features.shape[0], class_embeddings.shape[0]
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or \
            labels.dtype == torch.bool or tuple(labels.shape) != (n,):
        found = (f"dtype {labels.dtype}, shape {tuple(labels.shape)}"
                 if isinstance(labels, torch.Tensor) else type(labels).__name__)
        raise ValueError(f"labels must be an int64 tensor of shape ({n},); found {found}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= c):
        raise ValueError(f"labels must lie in [0, {c - 1}]; found values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    ks = [int(k) for k in topk]
    if any(k < 1 for k in ks):
        raise ValueError(f"topk must hold positive ints; found {list(topk)}")
    if chunk_size is None:
        chunk_size = max(1, 2**24 // max(n, 1))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int; found {chunk_size!r}")
    kmax = min(max(ks, default=1), c)
    dt = _head_dtype(features, class_embeddings)
    dev = features.device
    with _no_autocast(dev):
        h = features.to(dt)
        labels = labels.to(dev)
        l_y = (h * class_embeddings[labels].to(dt)).sum(dim=1)
        if class_bias is not None:
            l_y = l_y + class_bias[labels].to(dt)
        l_y = l_y / tau
        m = torch.full((n,), float("-inf"), dtype=dt, device=dev)
        s = torch.zeros(n, dtype=dt, device=dev)
        s2 = torch.zeros(n, dtype=dt, device=dev)
        top_v = torch.empty(n, 0, dtype=dt, device=dev)
        top_i = torch.empty(n, 0, dtype=torch.long, device=dev)
        for c0 in range(0, c, chunk_size):
            c1 = min(c, c0 + chunk_size)
            logits = h @ class_embeddings[c0:c1].to(dt).T
            if class_bias is not None:
                logits = logits + class_bias[c0:c1].to(dt).unsqueeze(0)
            logits = logits / tau
            m_new = torch.maximum(m, logits.max(dim=1).values)
            scale = torch.exp(m - m_new)
            e = torch.exp(logits - m_new.unsqueeze(1))
            s = s * scale + e.sum(dim=1)
            s2 = s2 * scale * scale + (e * e).sum(dim=1)
            m = m_new
            cv, ci = logits.topk(min(kmax, c1 - c0), dim=1)
            top_v = torch.cat([top_v, cv], dim=1)
            top_i = torch.cat([top_i, ci + c0], dim=1)
            if top_v.shape[1] > kmax:
                top_v, pos = top_v.topk(kmax, dim=1)
                top_i = top_i.gather(1, pos)
        log_z = m + torch.log(s)
        p_y = torch.exp(l_y - log_z)
        pred = top_i[:, 0] if n else torch.zeros(0, dtype=torch.long, device=dev)
        conf = torch.exp(top_v[:, 0] - log_z) if n else torch.zeros(0, dtype=dt, device=dev)
        out = {
            "confidences": conf,
            "accuracies": (pred == labels).to(dt),
            "nll": log_z - l_y,
            "brier": s2 / (s * s) - 2.0 * p_y + 1.0,
            "topk_correct": {k: (top_i[:, : min(k, c)] == labels.unsqueeze(1)).any(dim=1).to(dt)
                             for k in ks},
            "predictions": pred,
        }
    return out

