"""Input checks shared by the loss modules (torch only).

Convention (as in ``torch.distributions``): *shape* and *type* checks always run; *value* checks
(finiteness, ranges, rows summing to one) run only when ``validate_args=True``, because they read
tensor values and, on an accelerator, synchronise with the host.
"""

from __future__ import annotations

import torch

SIMPLEX_ATOL = 1e-3
REDUCTIONS = ("mean", "sum", "none")


def _fmt_shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; found {type(value).__name__}")
    return value


def check_logits(logits: object, validate_args: bool, name: str = "logits") -> torch.Tensor:
    logits = check_tensor(name, logits)
    if logits.dim() != 2:
        raise ValueError(
            f"{name} must be a 2-D tensor of shape (N, C); found shape {_fmt_shape(logits)}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; found dtype {logits.dtype}")
    if logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one class column; found shape "
                         f"{_fmt_shape(logits)}")
    if validate_args and logits.numel() and not bool(torch.isfinite(logits).all()):
        n_bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"{name} must be finite; found {n_bad} NaN or infinite entries")
    return logits


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; found {reduction!r}")
    return str(reduction)


def check_temperature(temperature: object) -> float:
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"temperature must be a positive scalar; found a tensor of shape "
                f"{_fmt_shape(temperature)}"
            )
        temperature = float(temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a positive float; found {type(temperature).__name__}")
    if not (temperature > 0) or temperature == float("inf"):
        raise ValueError(f"temperature must be > 0 and finite; found {temperature}")
    return float(temperature)


def check_probability_vector(
    name: str, probs: object, num_classes: int | None, validate_args: bool
) -> torch.Tensor:
    probs = check_tensor(name, probs)
    if probs.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of length C; found shape "
                         f"{_fmt_shape(probs)}")
    if num_classes is not None and probs.shape[0] != num_classes:
        raise ValueError(
            f"{name} must have length C={num_classes} (the number of logit columns); "
            f"found length {probs.shape[0]}"
        )
    if not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; found dtype {probs.dtype}")
    if validate_args:
        if not bool(torch.isfinite(probs).all()):
            raise ValueError(f"{name} must be finite; found NaN or infinite entries")
        if bool((probs <= 0).any()):
            bad = torch.nonzero(probs <= 0).flatten()[:5].tolist()
            raise ValueError(
                f"{name} must be strictly positive (log q is used); found entries <= 0 at "
                f"indices {bad} (use class_prior(..., pseudo_count>0) to avoid empty classes)"
            )
        total = float(probs.double().sum())
        if abs(total - 1.0) > SIMPLEX_ATOL:
            raise ValueError(f"{name} must sum to 1 (tolerance {SIMPLEX_ATOL}); found sum {total:.6g}")
    return probs


def check_labels(
    name: str, labels: torch.Tensor, num_classes: int, batch_size: int | None, validate_args: bool
) -> torch.Tensor:
    if labels.dim() != 1:
        raise ValueError(f"{name} as integer labels must have shape (N,); found shape "
                         f"{_fmt_shape(labels)}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have N={batch_size} rows (the batch size of logits); found {labels.shape[0]}"
        )
    if validate_args and labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes - 1}]; found values in "
                f"[{lo}, {hi}]"
            )
    return labels


def check_dense_targets(
    name: str, targets: torch.Tensor, num_classes: int, batch_size: int | None, validate_args: bool
) -> torch.Tensor:
    if targets.dim() == 1:
        raise ValueError(
            f"{name} is a 1-D floating-point tensor: pass integer class labels as an int64 tensor, "
            f"or soft targets as a 2-D (N, C) tensor; found dtype {targets.dtype}, shape "
            f"{_fmt_shape(targets)}"
        )
    if targets.dim() != 2:
        raise ValueError(f"{name} must have shape (N, C); found shape {_fmt_shape(targets)}")
    if targets.shape[1] != num_classes:
        raise ValueError(
            f"{name} must have C={num_classes} columns (the number of logit columns); found "
            f"shape {_fmt_shape(targets)}"
        )
    if batch_size is not None and targets.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have N={batch_size} rows (the batch size of logits); found shape "
            f"{_fmt_shape(targets)}"
        )
    if validate_args and targets.numel():
        if not bool(torch.isfinite(targets).all()):
            raise ValueError(f"{name} must be finite; found NaN or infinite entries")
        if bool((targets < 0).any()):
            raise ValueError(f"{name} must be non-negative (rows on the probability simplex); "
                             f"found minimum {float(targets.min()):.6g}")
        sums = targets.double().sum(dim=1)
        dev = (sums - 1.0).abs()
        if bool((dev > SIMPLEX_ATOL).any()):
            row = int(dev.argmax())
            raise ValueError(
                f"{name} rows must sum to 1 (tolerance {SIMPLEX_ATOL}); row {row} sums to "
                f"{float(sums[row]):.6g}"
            )
    return targets
