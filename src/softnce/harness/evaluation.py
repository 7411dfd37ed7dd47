"""Evaluation helpers: metrics against a known p(y|x)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def truth_metrics(logits: torch.Tensor, true_probs: torch.Tensor, temperature: float) -> dict:
    r"""Calibration against a known ``p*(y|x)``: ``kl_to_truth`` = mean KL(p* || p),
    ``ece_to_truth`` = mean ``|max_c p_c - p*(argmax p)|``, ``bayes_top1`` = mean ``max_c p*_c``
    (the accuracy of the Bayes classifier)."""
    logp = F.log_softmax(logits.double() / temperature, dim=1)
    pt = true_probs.double()
    kl = (pt * (pt.clamp_min(1e-300).log() - logp)).sum(1)
    conf, pred = logp.exp().max(1)
    return {
        "kl_to_truth": float(kl.mean()),
        "ece_to_truth": float((conf - pt.gather(1, pred[:, None]).squeeze(1)).abs().mean()),
        "bayes_top1": float(pt.max(1).values.mean()),
    }

