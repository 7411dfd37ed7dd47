"""Evaluation helpers: metrics from logits (raw and after temperature scaling fitted on a
calibration split), and metrics against a known p(y|x)."""

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



def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                        true_probs: torch.Tensor | None = None) -> dict[str, float]:
    """top-1/top-5, ECE/MCE/ACE (15 bins), NLL, Brier of ``softmax(logits / temperature)``
    (and the truth metrics when ``true_probs`` is known)."""
    from softnce.metrics import CalibrationMeter

    c = logits.shape[1]
    meter = CalibrationMeter(n_bins=15, inputs="logits", temperature=temperature,
                             num_classes=c, topk=(1, 5))
    meter.update(logits, labels)
    out = {k: float(v) for k, v in meter.compute().items()}
    if true_probs is not None and len(true_probs) == len(logits):
        out.update(truth_metrics(logits, true_probs, temperature))
    return out


def heldout_metrics(cal_logits: torch.Tensor, cal_labels: torch.Tensor, test_logits: torch.Tensor,
                 test_labels: torch.Tensor, temperature: float,
                 test_true_probs: torch.Tensor | None = None) -> dict[str, float]:
    """The held-out protocol: test metrics raw, and with suffix ``_ts`` after temperature
    scaling fitted on the *calibration* logits only; ``temperature_ts`` is the fitted factor
    (predictions ``softmax(z / (temperature * temperature_ts))``)."""
    from softnce.metrics import TemperatureScaler

    raw = metrics_from_logits(test_logits, test_labels, temperature, test_true_probs)
    scaler = TemperatureScaler().fit(cal_logits.double() / temperature, cal_labels)
    t_ts = float(scaler.temperature)
    scaled = metrics_from_logits(test_logits, test_labels, temperature * t_ts, test_true_probs)
    out = dict(raw)
    out.update({f"{k}_ts": v for k, v in scaled.items() if k != "bayes_top1"})
    out["temperature_ts"] = t_ts
    return out
