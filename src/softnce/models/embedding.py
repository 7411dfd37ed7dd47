r"""Label-embedding head: a linear classifier that trains and evaluates without (N, C) logits.

:class:`LabelEmbeddingHead` holds the same parameters as ``nn.Linear(D, C)`` (``weight`` (C, D)
= the class embeddings ``E``, ``bias`` (C,)), so ``forward`` still returns ordinary logits
``h E^T + b``. The harness never calls ``forward`` when the hooks exist:

* ``compute_loss(features, targets, criterion)``: for :class:`~softnce.SoftTargetInfoNCE` /
  :class:`~softnce.InfoNCE` criteria the loss goes through
  :func:`softnce.embedded.embedded_infonce` -- ``O(M k D + N M D)`` per step (plus ``O(C D)``
  with label smoothing), no ``N x C`` logits. Criteria that need every logit by definition
  (cross-entropy, soft-target cross-entropy) get the full logits.
* ``eval_stats(features, labels, temperature)``: confidences, predictions, NLL, Brier and top-k
  correctness over **all** C classes, streamed over class chunks by
  :func:`softnce.embedded.chunked_softmax_stats`, in the form
  ``CalibrationMeter.update_stats`` takes.

Registered here: the head ``embedding`` in :data:`softnce.models.basic.HEADS` (``softnce train
--head embedding`` with any backbone model, e.g. ``mlp``) and the model ``head-only`` (the head
chosen by ``--head`` applied directly to the flattened input: a linear classifier for
``--head linear``/``embedding``; the default model of ``extreme-synthetic``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from softnce.embedded import chunked_softmax_stats, embedded_infonce
from softnce.losses import SoftTargetInfoNCE
from softnce.models import MODELS

__all__ = ["LabelEmbeddingHead"]


class LabelEmbeddingHead(nn.Module):
    r"""Linear head ``z = h E^T + b`` whose InfoNCE loss and evaluation never form (N, C) logits.

    Args:
        in_features: D.
        num_classes: C.
        bias: learn a per-class bias ``b``.
        sparse_grad: gather class rows with sparse gradients (see
            :class:`softnce.embedded.EmbeddingScorer`; needs an optimiser that accepts sparse
            gradients -- not AdamW, so the harness keeps the default ``False``).
        eval_chunk_size: classes per chunk in :meth:`eval_stats` (default ``2**24 // N``).
        topk: the k values :meth:`eval_stats` reports (the harness meter uses (1, 5)).

    Parameters are initialised like ``nn.Linear``: ``U(-1/sqrt(D), 1/sqrt(D))``.

    Example::

        >>> head = LabelEmbeddingHead(16, 100_000)
        >>> h = torch.randn(8, 16)
        >>> loss = head.compute_loss(h, torch.randint(100_000, (8,)), SoftTargetInfoNCE())
        >>> stats = head.eval_stats(h, torch.randint(100_000, (8,)), temperature=1.0)
        >>> sorted(stats)
        ['accuracies', 'brier', 'confidences', 'nll', 'predictions', 'topk_correct']
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        bias: bool = True,
        sparse_grad: bool = False,
        eval_chunk_size: int | None = None,
        topk: Sequence[int] = (1, 5),
    ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("num_classes", num_classes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int; found {v!r}")
        if eval_chunk_size is not None and (isinstance(eval_chunk_size, bool) or not isinstance(
                eval_chunk_size, int) or eval_chunk_size < 1):
            raise ValueError(f"eval_chunk_size must be a positive int or None; found "
                             f"{eval_chunk_size!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.sparse_grad = bool(sparse_grad)
        self.eval_chunk_size = eval_chunk_size
        self.topk = tuple(int(k) for k in topk)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"bias={self.bias is not None}, sparse_grad={self.sparse_grad}")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Full logits ``h E^T + b`` (N, C): ``O(N C D)``, only for callers that want them."""
        return nn.functional.linear(features, self.weight, self.bias)

    def compute_loss(
        self,
        features: torch.Tensor,
        targets: Any,
        criterion: nn.Module,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``criterion(self(features), targets)``, without logits for InfoNCE criteria.

        ``mask`` (N,) bool selects the feature rows that enter the loss; ``targets`` are
        already restricted to those rows (the harness masks labels before building targets).
        """
        if mask is not None:
            features = features[mask]
        if isinstance(criterion, SoftTargetInfoNCE):
            return embedded_infonce(criterion, features, self.weight, targets, self.bias,
                                    sparse_grad=self.sparse_grad)
        # Cross-entropy style losses need the partition function over all C classes.
        return criterion(self(features), targets)

    @torch.no_grad()
    def eval_stats(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> dict:
        """Per-sample statistics of ``softmax(self(features) / temperature)`` over all classes,
        chunked over classes (see :func:`softnce.embedded.chunked_softmax_stats`); ``mask``
        selects rows of both ``features`` and ``labels``."""
        if mask is not None:
            features, labels = features[mask], labels[mask]
        return chunked_softmax_stats(features, self.weight, labels, self.bias, temperature,
                                     topk=self.topk, chunk_size=self.eval_chunk_size)

    @torch.no_grad()
    def predict_topk(
        self, features: torch.Tensor, k: int = 5, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` classes and their probabilities, (N, k) each, streamed over class chunks."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int; found {k!r}")
        from softnce._validation import check_temperature

        temperature = check_temperature(temperature)
        k = min(k, self.num_classes)
        n = features.shape[0]
        chunk = self.eval_chunk_size or max(1, 2**24 // max(n, 1))
        dt = torch.float64 if features.dtype == torch.float64 else torch.float32
        h = features.to(dt)
        m = torch.full((n,), float("-inf"), dtype=dt, device=h.device)
        s = torch.zeros(n, dtype=dt, device=h.device)
        top_v = torch.empty(n, 0, dtype=dt, device=h.device)
        top_i = torch.empty(n, 0, dtype=torch.long, device=h.device)
        for c0 in range(0, self.num_classes, chunk):
            c1 = min(self.num_classes, c0 + chunk)
            b = self.bias[c0:c1].to(dt) if self.bias is not None else None
            logits = nn.functional.linear(h, self.weight[c0:c1].to(dt), b) / temperature
            m_new = torch.maximum(m, logits.max(dim=1).values)
            s = s * torch.exp(m - m_new) + torch.exp(logits - m_new.unsqueeze(1)).sum(dim=1)
            m = m_new
            cv, ci = logits.topk(min(k, c1 - c0), dim=1)
            top_v, pos = torch.cat([top_v, cv], 1).topk(min(k, top_v.shape[1] + cv.shape[1]), 1)
            top_i = torch.cat([top_i, ci + c0], 1).gather(1, pos)
        return top_i, torch.exp(top_v - (m + torch.log(s)).unsqueeze(1))


# ------------------------------------------------------------------------- registration
def _build_embedding_head(in_features: int, num_classes: int, cfg: Any) -> nn.Module:
    return LabelEmbeddingHead(in_features, num_classes)


def _register() -> None:
    import importlib.util

    if importlib.util.find_spec("softnce.models.basic") is None:  # pragma: no cover
        return
    from softnce.models.basic import HEADS, FeatureClassifier, build_head

    HEADS.register("embedding", help="linear head trained without (N, C) logits "
                   "(InfoNCE losses; chunked evaluation)")(_build_embedding_head)

    @MODELS.register("head-only", help="the --head applied to the flattened input (no backbone)")
    def build_head_only(bundle: Any, cfg: Any) -> nn.Module:
        """``head-only``: ``head(flatten(x))``; no ``model_options``."""
        if cfg.model_options:
            raise ValueError(f"model 'head-only' takes no model_options; found "
                             f"{sorted(cfg.model_options)}")
        d = math.prod(bundle.input_shape)
        return FeatureClassifier(nn.Flatten(), build_head(cfg.head, d, bundle.num_classes, cfg))


_register()
