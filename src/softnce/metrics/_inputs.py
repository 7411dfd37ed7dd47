"""Input handling shared by the calibration metrics, the meter and temperature scaling."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from softnce._validation import SIMPLEX_ATOL, simplex_atol

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass




#: Rows of float32 ``probs`` / soft ``targets`` must sum to 1 within this absolute tolerance;
#: half-precision rows get the dtype-aware :func:`softnce._validation.simplex_atol`.
SUM_TOLERANCE = SIMPLEX_ATOL

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
            f"{name} must be a torch.Tensor or array-like; found {type(x).__name__}"
        ) from err


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1; found {n_bins!r}")
    return int(n_bins)


def _floating(x: Tensor, name: str, what: str) -> Tensor:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of {what}; found dtype {x.dtype}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def _check_2d(x: Tensor, name: str, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, C) of {what}; found shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one class column; found shape {tuple(x.shape)}")


def _prob_rows_bad(p: Tensor, atol: float = SIMPLEX_ATOL) -> Tensor:
    """Boolean 0-dim tensor: True if any entry is NaN/negative or any row sum is off by > tol."""
    dev = (p.sum(dim=1, dtype=torch.float64) - 1.0).abs()
    return torch.isnan(p).any() | (p < 0).any() | (dev > atol).any()


def _check_prob_values(p: Tensor, name: str, hint: str = "",
                       dtype: torch.dtype | None = None) -> None:
    """Value checks for a (N, C) matrix whose rows must be probability vectors (one sync);
    the row-sum tolerance follows ``dtype`` (the dtype the values were given in)."""
    atol = simplex_atol(dtype or p.dtype)
    if p.numel() == 0 or not bool(_prob_rows_bad(p, atol)):
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
        f"rows of {name} must sum to 1 (tolerance {atol:g}); row {row} sums to "
        f"{float(sums[row]):.6g}{hint}"
    )


def _as_probs(probs: Any, validate_args: bool, name: str = "probs") -> Tensor:
    given = _to_tensor(probs, name)
    p = _floating(given, name, "probabilities")
    _check_2d(p, name, "probabilities")
    if p.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one sample; found shape {tuple(p.shape)}")
    if validate_args:
        _check_prob_values(p, name, "; pass probabilities (e.g. softmax(logits)), not logits",
                           dtype=given.dtype)
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
                f"{name} of shape (N,) must be integer class labels; found dtype {t.dtype}"
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
                f"soft {name} must have the predictions' shape {(n, c)}; found {tuple(t.shape)}"
            )
        if t.is_complex():
            raise TypeError(f"soft {name} must be real-valued; found dtype {t.dtype}")
        given_dtype = t.dtype
        t = t.to(device=device, dtype=dtype)
        if validate_args:
            _check_prob_values(t, f"soft {name}", dtype=given_dtype)
        return t, True
    raise ValueError(
        f"{name} must have shape (N,) (integer labels) or (N, C) (soft targets), "
        f"found shape {tuple(t.shape)}"
    )


def _as_topk(k: Any, name: str = "k") -> tuple[int, ...]:
    ks = (k,) if isinstance(k, numbers.Integral) else tuple(k)
    if not ks or any(
        isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in ks
    ):
        raise ValueError(f"{name} must be a positive integer or a sequence of them; found {k!r}")
    return tuple(int(v) for v in ks)
