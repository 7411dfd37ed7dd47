"""Input checks shared by the loss modules (torch only): one checker per constraint.

Convention (as in ``torch.distributions``): *shape* and *type* checks always run; *value* checks
(finiteness, ranges, rows summing to one) run only when ``validate_args=True``, because they read
tensor values and, on an accelerator, synchronise with the host.

Vocabulary (use these rather than re-writing a check):

* :func:`simplex_atol` -- the one tolerance rule for "sums to one";
* :func:`check_simplex_rows` -- rows of an (M, C) matrix on the probability simplex (its parts,
  for checks folded into a loss's one host read: :func:`simplex_row_stats`,
  :func:`simplex_stats_ok`, :func:`diagnose_simplex_rows`);
* :func:`check_row_sums` -- precomputed row sums (e.g. of sparse targets) equal to one;
* :func:`check_probability_vector` -- a strictly positive (C,) vector summing to one;
* :func:`check_temperature` -- a positive finite scalar;
* :func:`check_labels` -- integer class labels (N,) in ``[0, C)``;
* :func:`check_logits` -- a 2-D floating tensor (shape/type); :func:`diagnose_logits` -- the
  finiteness diagnosis, run by the losses only when a cheap check on their result failed;
* :func:`check_reduction`, :func:`check_tensor`, :func:`check_float_dtype`;
* :func:`read_scalars` -- how a check reads its 0-d results on the host: one stack and one
  read on an accelerator, one by one on the CPU (:func:`reads_each`, which the losses' hot
  path also follows itself); :func:`host_read` for one tensor, :func:`raise_read_error` for a
  failed read (the message under ``torch.func.vmap``).

Wording: ``"<name> must ...; found ..."``; ``ValueError`` for bad values and shapes, ``TypeError``
for bad types.

Each value check is written so that the common (valid) case costs *one* fused reduction and one
host synchronisation; the detailed diagnosis that produces the message only runs on failure.
"""

from __future__ import annotations

import math
from typing import NoReturn

import torch

#: The user-facing floor of the tolerance for "rows sum to one" (absolute, on the row sum).
SIMPLEX_ATOL = 1e-3
REDUCTIONS = ("mean", "sum", "none")

__all__ = [
    "REDUCTIONS",
    "SIMPLEX_ATOL",
    "check_dense_targets",
    "check_float_dtype",
    "check_labels",
    "check_logits",
    "check_probability_vector",
    "check_reduction",
    "check_row_sums",
    "check_simplex_rows",
    "check_temperature",
    "check_tensor",
    "diagnose_logits",
    "diagnose_simplex_rows",
    "host_read",
    "raise_read_error",
    "read_scalars",
    "reads_each",
    "simplex_atol",
    "simplex_row_stats",
    "simplex_rows_ok",
    "simplex_stats_ok",
]


def _fmt_shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


#: Tests set this to make the checks read as on an accelerator (one stack, one read) on the
#: CPU too, to count the synchronisations a GPU would make (:func:`reads_each`).
BATCH_READS_ON_CPU = False


def reads_each(t: torch.Tensor) -> bool:
    """Whether a check reads the values it computed one by one, as they come (CPU tensors:
    there a read is no synchronisation), rather than stacked for one read (:func:`read_scalars`;
    every other device). On the CPU no stack or ``no_grad`` is built: those tiny ops and the
    Python around them were a large part of what the checks cost at small sizes (measured by
    ``benchmarks/bench_losses.py`` at N=256, C=100). While ``torch.compile`` traces, the
    stacked form is used (one graph break, and no warning about ``Tensor.item()``)."""
    return t.is_cpu and not BATCH_READS_ON_CPU and not torch.compiler.is_compiling()


def raise_read_error(e: RuntimeError, tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]
                     ) -> NoReturn:
    """Re-raise ``e``, a failed host read of ``tensors``. Under ``torch.func.vmap`` values
    cannot be read: then the error says so and what to do, instead of torch's "Cannot access
    data pointer" (nothing is checked on the happy path: callers catch the error)."""
    if any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors):
        raise RuntimeError(
            "validate_args=True reads values on the host to check them, which a torch.func "
            "transform such as vmap cannot do; pass validate_args=False inside the "
            "transform (and check the inputs outside it)") from e
    raise e


def host_read(t: torch.Tensor) -> list:
    """The values of a 0-d or 1-d ``t`` on the host, as a list (one synchronisation)."""
    try:
        return [t.item()] if t.dim() == 0 else t.tolist()
    except RuntimeError as e:
        raise_read_error(e, (t,))


def read_scalars(scalars: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> list:
    """The values of 0-d tensors as Python numbers, in *one* host synchronisation: those on the
    first one's device stacked and read once, any on the CPU read where they are (no copy to
    the device and back); on the CPU (:func:`reads_each`) each is read."""
    first = scalars[0]
    try:
        if reads_each(first):
            return [t.item() for t in scalars]
        dev = first.device
        with torch.no_grad():
            vals = iter(torch.stack([t for t in scalars if t.device == dev]).tolist())
        return [next(vals) if t.device == dev else t.item() for t in scalars]
    except RuntimeError as e:
        raise_read_error(e, scalars)


_ATOL: dict[torch.dtype | None, float] = {}


def simplex_atol(dtype: torch.dtype | None = None) -> float:
    r"""The absolute tolerance on a row sum of a probability vector stored in ``dtype``.

    ``atol = max(SIMPLEX_ATOL, 2 * eps(dtype))``. Why: rounding a non-negative entry ``y_c`` to
    ``dtype`` changes it by at most ``u |y_c|`` with the unit roundoff ``u = eps / 2``, so a row
    that sums to one in exact arithmetic sums to ``1 +- u`` after rounding (the entries sum to
    one, whatever C is), and to ``1 +- m u`` if each entry went through ``m`` rounded operations
    in ``dtype``; ``2 eps = 4 u`` allows four (e.g. ``lam * (1 - eps)``, stored, plus
    conversions). The sum itself is accumulated in float32/float64 by the checkers. The floor
    ``1e-3`` is the slack for targets built in float32/float64 by user arithmetic (it is what
    the package always accepted).

    ======== ======= =====================================================================
    dtype    eps     atol
    ======== ======= =====================================================================
    float64  2.2e-16 1e-3
    float32  1.2e-7  1e-3
    float16  9.8e-4  1.95e-3
    bfloat16 7.8e-3  1.56e-2 (``label_smoothing(..., dtype=bfloat16)`` rows sum to 0.998535)
    ======== ======= =====================================================================
    """
    atol = _ATOL.get(dtype)  # cached: the losses ask on every call
    if atol is None:
        atol = (SIMPLEX_ATOL if dtype is None or not dtype.is_floating_point
                else max(SIMPLEX_ATOL, 2.0 * torch.finfo(dtype).eps))
        _ATOL[dtype] = atol
    return atol


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; found {type(value).__name__}")
    return value


def check_float_dtype(name: str, dtype: object) -> torch.dtype:
    """A real floating-point ``torch.dtype`` (not complex, not integer)."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a real floating-point torch.dtype (e.g. torch.float32); "
                        f"found {dtype!r}")
    return dtype


def check_logits(logits: object, validate_args: bool = False,
                 name: str = "logits") -> torch.Tensor:
    """Shape and type of (N, C) logits; with ``validate_args`` also the full finiteness scan
    (:func:`diagnose_logits`). The losses pass ``False`` and instead check a cheap quantity
    derived from the logits (row sums, the loss), calling :func:`diagnose_logits` only on
    failure: the same message, no extra (N, C) pass in the valid case."""
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
    if validate_args:
        diagnose_logits(logits, name)
    return logits


def diagnose_logits(logits: torch.Tensor, name: str = "logits") -> None:
    """Raise ``ValueError`` if ``logits`` has NaN or infinite entries (a full scan)."""
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        n_bad = int((~torch.isfinite(logits)).sum())
        raise ValueError(f"{name} must be finite; found {n_bad} NaN or infinite entries")


def check_reduction(reduction: object) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; found {reduction!r}")
    return str(reduction)


def check_temperature(temperature: object, name: str = "temperature") -> float:
    """A positive finite scalar (Python number or one-element tensor) -> float.

    ``TypeError`` for a non-number (str, bool, None), ``ValueError`` for <= 0, NaN or inf."""
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"{name} must be a positive scalar; found a tensor of shape "
                f"{_fmt_shape(temperature)}"
            )
        temperature = temperature.item()
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{name} must be a positive float; found {type(temperature).__name__}")
    if not (temperature > 0) or not math.isfinite(temperature):
        raise ValueError(f"{name} must be > 0 and finite; found {temperature}")
    return float(temperature)


def check_probability_vector(
    name: str, probs: object, num_classes: int | None, validate_args: bool
) -> torch.Tensor:
    """A (C,) floating vector, strictly positive (``log q`` is used), summing to one within
    :func:`simplex_atol` of its dtype."""
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
        atol = simplex_atol(probs.dtype)
        total = probs.sum(dtype=torch.float64)
        # one fused flag, one sync; a NaN makes the sum NaN and the comparison False
        ok = (probs > 0).all() & ((total - 1.0).abs() <= atol)
        if not bool(ok):
            if not bool(torch.isfinite(probs).all()):
                raise ValueError(f"{name} must be finite; found NaN or infinite entries")
            if bool((probs <= 0).any()):
                bad = torch.nonzero(probs <= 0).flatten()[:5].tolist()
                raise ValueError(
                    f"{name} must be strictly positive (log q is used); found entries <= 0 at "
                    f"indices {bad} (use class_prior(..., pseudo_count>0) to avoid empty classes)"
                )
            raise ValueError(f"{name} must sum to 1 (tolerance {atol:g}); found sum "
                             f"{float(total):.6g}")
    return probs


def check_labels(
    name: str, labels: torch.Tensor, num_classes: int, batch_size: int | None, validate_args: bool
) -> torch.Tensor:
    """Integer class labels (N,) in ``[0, num_classes)``."""
    if labels.dim() != 1:
        raise ValueError(f"{name} as integer labels must have shape (N,); found shape "
                         f"{_fmt_shape(labels)}")
    if batch_size is not None and labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have N={batch_size} rows (the batch size of logits); found {labels.shape[0]}"
        )
    if validate_args and labels.numel():
        lo, hi = read_scalars(torch.aminmax(labels))  # one host read for both
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes - 1}]; found values in "
                f"[{lo}, {hi}]"
            )
    return labels


def check_row_sums(name: str, sums: torch.Tensor, dtype: torch.dtype | None,
                   what: str = "rows must sum to 1") -> None:
    """Row sums (M,) (float32/float64, of values stored in ``dtype``) equal to one within
    :func:`simplex_atol`; NaN sums fail. The message names the worst row."""
    if not sums.numel():
        return
    atol = simplex_atol(dtype)
    dev = (sums - 1.0).abs()
    if bool((dev <= atol).all()):
        return
    dev = torch.where(torch.isnan(dev), torch.full_like(dev, math.inf), dev)
    row = int(dev.argmax())
    raise ValueError(f"{name} {what} (tolerance {atol:g}); row {row} sums to "
                     f"{float(sums[row]):.6g}")


def check_simplex_rows(name: str, rows: torch.Tensor) -> torch.Tensor:
    """Rows of an (M, C) floating matrix on the probability simplex: finite, non-negative,
    summing to one within :func:`simplex_atol` of ``rows.dtype``.

    Cost in the valid case: two reductions (row sums and the minimum, no copy of ``rows``) and
    one host synchronisation. The row sums accumulate in float32 (float64 for float64 rows):
    their rounding error, about ``C * 6e-8`` relative at worst and far less with pairwise
    summation, is negligible against the 1e-3 floor of :func:`simplex_atol`."""
    if not rows.numel():
        return rows
    if simplex_rows_ok(rows):
        return rows
    diagnose_simplex_rows(name, rows)
    return rows


def simplex_row_stats(rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(min row sum, max row sum, min entry)`` of a non-empty (M, C) matrix as 0-d tensors on
    its device, nothing read on the host: a loss reads them with its own scalars
    (:func:`read_scalars`), and :func:`simplex_stats_ok` judges the values. Three reductions
    (two over the matrix, one over the M sums); NaN and inf entries propagate to them."""
    acc = None if rows.dtype in (torch.float32, torch.float64) else torch.float32
    sums = rows.sum(dim=1, dtype=acc)  # NaN/inf entries make their row sum non-finite
    lo, hi = torch.aminmax(sums)
    return lo, hi, rows.amin()


def simplex_rows_ok(rows: torch.Tensor) -> bool:
    """Whether a non-empty (M, C) matrix passes :func:`simplex_row_stats`, read now (one host
    read; the losses fold the stats into theirs instead)."""
    return simplex_stats_ok(read_scalars(simplex_row_stats(rows)), rows.dtype)


def simplex_stats_ok(stats: tuple[float, ...] | list[float], dtype: torch.dtype) -> bool:
    """Whether :func:`simplex_row_stats`, read to the host, pass (False for NaN too)."""
    atol = simplex_atol(dtype)
    return 1.0 - atol <= stats[0] and stats[1] <= 1.0 + atol and stats[2] >= 0


def diagnose_simplex_rows(name: str, rows: torch.Tensor) -> None:
    """The slow path of :func:`check_simplex_rows`: raise the message for what is wrong
    (non-finite entries, then negative ones, then the worst row sum); return if nothing is."""
    acc = None if rows.dtype in (torch.float32, torch.float64) else torch.float32
    sums = rows.sum(dim=1, dtype=acc)
    if not bool(torch.isfinite(rows).all()):
        raise ValueError(f"{name} must be finite; found NaN or infinite entries")
    if bool((rows < 0).any()):
        raise ValueError(f"{name} must be non-negative (rows on the probability simplex); "
                         f"found minimum {float(rows.min()):.6g}")
    check_row_sums(name, sums, rows.dtype)


def check_dense_targets(
    name: str, targets: torch.Tensor, num_classes: int, batch_size: int | None, validate_args: bool
) -> torch.Tensor:
    """Dense (N, C) soft targets: shapes always, :func:`check_simplex_rows` if validating."""
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
    if validate_args:
        check_simplex_rows(name, targets)
    return targets
