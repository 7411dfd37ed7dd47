"""Scoring kernels behind the losses: target preparation and checks, the fused sparse score
function with a hand-written gradient, the logit scorer, in-batch and separated InfoNCE rows."""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F

from softnce._validation import (
    check_dense_targets,
    check_labels,
    check_logits,
    check_probability_vector,
    check_reduction,
    check_temperature,
    diagnose_logits,
    diagnose_simplex_rows,
    host_read,
    raise_read_error,
    read_scalars,
    reads_each,
    simplex_atol,
    simplex_row_stats,
    simplex_stats_ok,
)
from softnce.targets import SoftTargets

Targets = torch.Tensor | SoftTargets
NEGATIVES = ("batch", "queue", "sampled", "simplex")
_ACC_DTYPES = (torch.float32, torch.float64)  # reductions accumulate in these as they are
#: A dense target matrix whose value check the loss folds into its read: (name, rows, stats).
Deferred = tuple[str, torch.Tensor, tuple[torch.Tensor, ...]]
#: A noise vector and its check's stats, ``(q, (sum(log q), sum(q)))`` (:func:`_noise_check`).
NoiseCheck = tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------- helpers
_NO_CONTEXT = contextlib.nullcontext()  # stateless: one instance serves every call


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast switched off on ``device`` for the scores. When autocast is not on there (the
    common case) a shared no-op context: building ``torch.autocast`` costs about 3 us a call."""
    try:
        if not torch.is_autocast_enabled(device.type):
            return _NO_CONTEXT
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device types without autocast support
        return _NO_CONTEXT


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def prepare_targets(
    targets: object,
    num_classes: int,
    batch_size: int | None,
    validate_args: bool = True,
    name: str = "targets",
    deferred: list[Deferred] | None = None,
) -> Targets:
    """Normalise ``targets`` to a dense (N, C) float tensor or :class:`SoftTargets`.

    Integer labels (N,) become one-hot ``SoftTargets`` (k = 1). Shapes are always checked; values
    (ranges, non-negativity, rows summing to 1) when ``validate_args`` -- for ``SoftTargets``
    once per batch (it remembers that it passed). With a ``deferred`` list, the value check of
    dense targets is not read here: their :func:`simplex_row_stats` are computed now (queued
    without a sync on an accelerator) and appended as ``(name, targets, stats)`` for the loss
    to read with its own scalars (:func:`_checked_reduce`); shapes are still checked at once.
    """
    if isinstance(targets, SoftTargets):
        if targets.num_classes != num_classes:
            raise ValueError(
                f"{name} has num_classes={targets.num_classes} but logits have C={num_classes} "
                f"columns"
            )
        if batch_size is not None and len(targets) != batch_size:
            raise ValueError(
                f"{name} must have N={batch_size} rows (the batch size of logits); found {len(targets)}"
            )
        return targets.validate(name) if validate_args else targets
    if not isinstance(targets, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor (int64 labels (N,) or float (N, C)) or SoftTargets; "
            f"found {type(targets).__name__}"
        )
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(f"{name} must be int64 labels or float soft targets; found {targets.dtype}")
    if not targets.is_floating_point():
        labels = check_labels(name, targets, num_classes, batch_size, validate_args)
        st = SoftTargets.from_labels(labels, num_classes, validate_args=False)
        st._validated = bool(validate_args)
        return st
    defer = validate_args and deferred is not None
    dense = check_dense_targets(name, targets, num_classes, batch_size, validate_args and not defer)
    if defer and dense.numel():
        deferred.append((name, dense, simplex_row_stats(dense)))
    return dense


def _check_call(
    logits: object, targets: object, temperature: object, reduction: object, validate_args: bool,
    deferred: list[Deferred] | None = None,
) -> tuple[torch.Tensor, Targets, float, str]:
    """The checks every functional loss runs first; returns the normalised arguments.

    The logits' values are *not* scanned here: see :func:`_all_finite`; nor the values of dense
    targets when a ``deferred`` list is given (see :func:`prepare_targets`)."""
    logits = check_logits(logits, False)
    n, c = logits.shape
    tau = check_temperature(temperature)
    reduction = check_reduction(reduction)
    return logits, prepare_targets(targets, c, n, validate_args, deferred=deferred), tau, reduction


def _all_finite(loss: torch.Tensor, reduced: torch.Tensor | None, scorer: object,
                row_sums: torch.Tensor | None,
                noise: NoiseCheck | None = None,
                deferred: list[Deferred] | None = None) -> bool:
    """The value checks of one call read in one host synchronisation (False: run the slow path).

    Finiteness of the logits is checked on what was computed from them (no (N, C) pass): a NaN
    or infinite logit reaches the (N,) row sums of the logits (computed anyway by the sparse
    path, kept by :class:`LogitScorer`) or, through the dense product, the per-row loss. So the
    scalars read are the (already computed) reduced loss and the sums of the row sums, finite
    iff every term is -- unless a sum of finite terms overflows; then the slow path finds
    nothing wrong and returns. ``noise = (q, (sum(log q), sum(q)))`` (:func:`_noise_check`)
    adds ``sum(log q)`` (-inf or NaN for an entry <= 0 or NaN) and ``sum(q)``, within
    :func:`simplex_atol` of one. ``deferred`` dense target matrices add their
    :func:`simplex_row_stats`. The scalars go to the host together (:func:`read_scalars`: one
    stack and one read on an accelerator); on the CPU each is read as it comes
    (:func:`reads_each`). A few tiny ops, because the checks run on every call and each op, and
    the Python around it, counts at small sizes (``benchmarks/bench_checks.py``)."""
    first = reduced if reduced is not None and reduced.dim() == 0 else loss.sum()
    rs = getattr(scorer, "row_sums", None)
    if reads_each(first):  # straight-line reads: no lists or generators on the hot path
        try:
            if not math.isfinite(first.item()):
                return False
            if row_sums is not None and not math.isfinite(row_sums.sum().item()):
                return False
            if rs is not None and not math.isfinite(rs.sum().item()):
                return False
            if noise is not None:
                lsum, qsum = noise[1]
                if not _noise_ok((lsum.item(), qsum.item()), noise[0].dtype):
                    return False
            if deferred:
                for _, t, (lo, hi, m) in deferred:
                    if not simplex_stats_ok((lo.item(), hi.item(), m.item()), t.dtype):
                        return False
            return True
        except RuntimeError as e:
            raise_read_error(e, (first,))
    scalars = [first]  # finite iff every term is
    for r in (row_sums, rs):
        if r is not None:
            scalars.append(r.sum())
    n = len(scalars)
    if noise is not None:
        scalars.extend(noise[1])
    for _, _, st in deferred or ():
        scalars.extend(st)
    if len(scalars) == 1:
        return math.isfinite(host_read(first)[0])
    vals = read_scalars(scalars)  # the one host read
    if not all(math.isfinite(v) for v in vals[:n]):
        return False
    if noise is not None:
        if not _noise_ok(vals[n:n + 2], noise[0].dtype):
            return False
        n += 2
    return all(simplex_stats_ok(vals[n + 3 * i:n + 3 * i + 3], t.dtype)
               for i, (_, t, _) in enumerate(deferred or ()))


def _noise_stats(q: torch.Tensor, log_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum(log q), sum(q))``: judged by :func:`_noise_ok`."""
    return log_q.sum(), (q.sum() if q.dtype in _ACC_DTYPES else q.sum(dtype=torch.float32))


def _noise_ok(vals: tuple[float, ...] | list[float], dtype: torch.dtype) -> bool:
    """``sum(log q)`` finite (every entry positive and finite) and ``sum(q)`` within
    :func:`simplex_atol` of one (False for NaN)."""
    return math.isfinite(vals[0]) and abs(vals[1] - 1.0) <= simplex_atol(dtype)


def _checked_reduce(logits: torch.Tensor, loss: torch.Tensor, reduction: str,
                    validate_args: bool, scorer: object = None,
                    row_sums: torch.Tensor | None = None,
                    temperature: float | None = None,
                    noise: NoiseCheck | None = None,
                    deferred: list[Deferred] | None = None) -> torch.Tensor:
    """:func:`_reduce`, then (with ``validate_args``) the one-scalar check of
    :func:`_all_finite` on the reduced value, which the loss computes anyway. Only if it fails
    are the inputs scanned, for the same messages as an eager check, in the eager order: the
    deferred dense targets first (:func:`diagnose_simplex_rows`), then the noise vector
    (:func:`check_probability_vector`), then the logits (:func:`diagnose_logits`)."""
    out = _reduce(loss, reduction)
    if validate_args and not _all_finite(loss, out, scorer, row_sums, noise, deferred):
        for name, t, _ in deferred or ():
            diagnose_simplex_rows(name, t)
        if noise is not None:
            check_probability_vector("noise_probs", noise[0], None, True)
        _diagnose_result(logits, loss, temperature)
    return out


def _diagnose_result(logits: torch.Tensor, loss: torch.Tensor,
                     temperature: float | None) -> None:
    """The slow path after a failed finiteness flag: scan the logits for the message."""
    diagnose_logits(logits)
    if bool(torch.isfinite(loss).all()):
        return
    amax = float(logits.detach().abs().max())
    tau = "" if temperature is None else f" and temperature {temperature:g}"
    raise ValueError(
        f"the loss must be finite; found a non-finite loss from finite logits (max |logit| = "
        f"{amax:.4g}{tau}): the scores or the logits' row sums overflow {loss.dtype} -- rescale "
        f"the logits or pass float64 logits")


def _scaled(a: torch.Tensor, scale: float) -> torch.Tensor:
    return a if scale == 1.0 else a * scale


class _SparseScores(torch.autograd.Function):
    r"""``S_ij = sum_r w_jr z_i[idx_jr] + R_i u_j`` (N, M) and, for a second target set ``p``
    matching the rows, ``s_i = sum_r wp_ir z_i[idxp_ir] + R_i up_i`` (N,), with the row sums
    ``R_i = sum_c z_ic`` computed once (also returned, without gradient, for the checks).

    The caller folds ``1 / tau`` and ``1 / C`` into ``w`` and ``u`` (length-M vectors) so the
    (N, C) logits are never divided. Backward writes the logits' gradient directly: one fill with
    the uniform part ``sum_j gS_ij u_j + gs_i up_i`` and one ``scatter_add`` of the component
    parts (``gS_ij w_jr`` at column ``idx_jr``) -- two passes over N x C in all, where autograd
    through ``index_select``/``sum``/division made six or more. Exactly zero uniform masses
    contribute exactly zero (no ``inf * 0`` from an overflowed row sum).
    """

    # forward without ctx + setup_context: the function then composes with torch.func
    # transforms (vmap / grad, used by ``softnce toy``); the vmap rule is generated
    generate_vmap_rule = True

    @staticmethod
    def forward(z, idx, w, u, pidx, pw, pu):  # noqa: ANN001, ANN205
        n = z.shape[0]
        rs = z.sum(dim=1)
        s = None
        if idx is not None:
            m = idx.shape[0]
            s = rs.unsqueeze(1) * u.unsqueeze(0)
            s = torch.where(u.unsqueeze(0) == 0, torch.zeros_like(s), s)
            # one column gather for all k components (faster than k gathers)
            g = z.index_select(1, idx.t().reshape(-1))
            for r in range(idx.shape[1]):
                s.addcmul_(g[:, r * m:(r + 1) * m], w[:, r].unsqueeze(0))
        else:
            s = z.new_zeros(n, 0)
        if pidx is not None:
            sp = rs * pu
            sp = torch.where(pu == 0, torch.zeros_like(sp), sp)
            sp = sp + (z.gather(1, pidx) * pw).sum(dim=1)
        else:
            sp = z.new_zeros(n)
        return s, sp, rs

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
        z, idx, w, u, pidx, pw, pu = inputs
        ctx.save_for_backward(idx, w, u, pidx, pw, pu)
        ctx.shape = z.shape
        ctx.mark_non_differentiable(output[2])

    @staticmethod
    def backward(ctx, g_s, g_p, g_rs):  # noqa: ANN001, ANN205
        idx, w, u, pidx, pw, pu = ctx.saved_tensors
        n, c = ctx.shape
        dtype = w.dtype if w is not None else pw.dtype
        b = torch.zeros(n, dtype=dtype, device=(idx if idx is not None else pidx).device)
        if idx is not None and g_s is not None and g_s.numel():
            b = b + g_s @ u
        if pidx is not None and g_p is not None:
            b = b + g_p * pu
        grad = b.unsqueeze(1).expand(n, c).contiguous()
        if idx is not None and g_s is not None and g_s.numel():
            k, m = idx.shape[1], idx.shape[0]
            src = (g_s.unsqueeze(1) * w.t().unsqueeze(0)).reshape(n, k * m)
            # index_add_ along dim 1 was ~1.7x faster than scatter_add_ with an expanded index
            grad.index_add_(1, idx.t().reshape(-1), src)
        if pidx is not None and g_p is not None:
            grad.scatter_add_(1, pidx, g_p.unsqueeze(1) * pw)
        return grad, None, None, None, None, None, None


def _sparse_args(t: SoftTargets | None, dtype: torch.dtype, scale: float
                 ) -> tuple[torch.Tensor | None, ...]:
    if t is None:
        return None, None, None
    return (t.indices, t.weights.to(dtype) * scale,
            t.uniform.to(dtype) * (scale / t.num_classes))


def _needs_autograd(t: Targets | None) -> bool:
    if t is None:
        return False
    if isinstance(t, SoftTargets):
        return t.weights.requires_grad or t.uniform.requires_grad
    return t.requires_grad


def _scores(a: torch.Tensor, candidates: Targets, scale: float = 1.0) -> torch.Tensor:
    """``S_ij = scale * a_i . y_j`` for all pairs: (N, C) x M candidates -> (N, M)."""
    if isinstance(candidates, SoftTargets):
        if _needs_autograd(candidates):
            return candidates.scores(_scaled(a, scale))
        return _SparseScores.apply(a, *_sparse_args(candidates, a.dtype, scale),
                                   None, None, None)[0]
    return _scaled(a @ candidates.to(a.dtype).T, scale)


def _row_scores(a: torch.Tensor, targets: Targets, scale: float = 1.0) -> torch.Tensor:
    """``scale * a_i . y_i`` for matching rows -> (N,)."""
    if isinstance(targets, SoftTargets):
        if _needs_autograd(targets):
            return targets.dot_rows(_scaled(a, scale))
        return _SparseScores.apply(a, None, None, None,
                                   *_sparse_args(targets, a.dtype, scale))[1]
    return _scaled((a * targets.to(a.dtype)).sum(dim=1), scale)


class LogitScorer:
    """Scores ``a_i . y_j`` of tempered logits ``a = scale * z`` (N, C) against targets.

    ``scale`` (``1 / tau``) is folded into the (N, M) scores, so the (N, C) logits are never
    divided; :attr:`a` builds ``scale * z`` on demand for callers that want it. ``row_sums``
    holds the (N,) row sums of ``z`` (no gradient) once a sparse product computed them; the
    losses check their finiteness instead of scanning the logits.
    """

    def __init__(self, a: torch.Tensor, scale: float = 1.0) -> None:
        self.z = a
        self.scale = float(scale)
        self.num_classes = a.shape[1]
        self.device = a.device
        self.dtype = a.dtype
        self.row_sums: torch.Tensor | None = None

    @property
    def a(self) -> torch.Tensor:
        return _scaled(self.z, self.scale)

    def __len__(self) -> int:
        return self.z.shape[0]

    def pair_and_rows(self, candidates: Targets | None, targets: Targets | None
                      ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(pairwise(candidates), rowwise(targets))`` sharing one pass for the row sums when
        both are sparse. Either may be ``None`` (then ``None`` is returned in its place)."""
        sparse_c = candidates is None or (isinstance(candidates, SoftTargets)
                                          and not _needs_autograd(candidates))
        sparse_t = targets is None or (isinstance(targets, SoftTargets)
                                       and not _needs_autograd(targets))
        if sparse_c and sparse_t and not (candidates is None and targets is None):
            s, sp, rs = _SparseScores.apply(
                self.z, *_sparse_args(candidates, self.dtype, self.scale),
                *_sparse_args(targets, self.dtype, self.scale))
            self.row_sums = rs
            return (s if candidates is not None else None), (sp if targets is not None else None)
        return (None if candidates is None else self.pairwise(candidates),
                None if targets is None else self.rowwise(targets))

    def pairwise(self, candidates: Targets) -> torch.Tensor:
        if isinstance(candidates, SoftTargets) and not _needs_autograd(candidates):
            return self.pair_and_rows(candidates, None)[0]
        return _scores(self.z, candidates, self.scale)

    def rowwise(self, targets: Targets) -> torch.Tensor:
        if isinstance(targets, SoftTargets) and not _needs_autograd(targets):
            return self.pair_and_rows(None, targets)[1]
        return _row_scores(self.z, targets, self.scale)


def _as_scorer(a: torch.Tensor | LogitScorer) -> LogitScorer:
    return LogitScorer(a) if isinstance(a, torch.Tensor) else a


def _pair_and_rows(scorer: object, candidates: Targets | None, targets: Targets | None
                   ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The scorer's fused method when it has one (LogitScorer), else the protocol's two."""
    fused = getattr(scorer, "pair_and_rows", None)
    if fused is not None:
        return fused(candidates, targets)
    return (None if candidates is None else scorer.pairwise(candidates),
            None if targets is None else scorer.rowwise(targets))


def _candidate_log_noise(candidates: Targets, log_q: torch.Tensor) -> torch.Tensor:
    """``(log q) . y_j`` per candidate -> (M,)."""
    if isinstance(candidates, SoftTargets):
        return candidates.dot_vector(log_q)
    return candidates.to(log_q.dtype) @ log_q


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce per-row losses. An empty batch (N = 0) gives 0 for ``"mean"`` and ``"sum"``
    (connected to the inputs, so ``backward()`` yields a zero gradient) and an empty (0,) tensor
    for ``"none"``: a shape test, no synchronisation."""
    if reduction == "mean":
        return loss.sum() if loss.shape[0] == 0 else loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _log_noise(
    noise_probs: torch.Tensor | None, num_classes: int, dtype: torch.dtype, device: torch.device,
    validate_args: bool,
) -> torch.Tensor | None:
    """``log q`` in the compute dtype; shape and dtype always checked, the values too with
    ``validate_args`` (eagerly: one sync; the functional losses pass ``False`` and hand the
    vector with its stats from :func:`_noise_check` to :func:`_checked_reduce` instead, which
    reads them with the loss's own scalar)."""
    if noise_probs is None:
        return None
    q = check_probability_vector("noise_probs", noise_probs, num_classes, validate_args)
    return q.to(device=device, dtype=dtype).log()


def _noise_check(noise_probs: torch.Tensor | None, log_q: torch.Tensor | None,
                 validate_args: bool = True) -> NoiseCheck | None:
    """The ``noise`` argument of :func:`_checked_reduce` (``None`` without a noise vector or
    without ``validate_args``): the vector and its stats, computed now and read with the loss's
    own scalars."""
    if not validate_args or noise_probs is None or log_q is None:
        return None
    return noise_probs, _noise_stats(noise_probs, log_q)


_WARNED_FEW_CANDIDATES = False


def _warn_few_candidates(num_candidates: int, n: int, owner: object = None) -> None:
    """Warn (once per module, or once per process for the functions) that with fewer than two
    in-batch candidates every row's loss is exactly 0 (a shape test, no synchronisation)."""
    global _WARNED_FEW_CANDIDATES
    if n == 0 or num_candidates >= 2:
        return
    if owner is not None:
        if getattr(owner, "_warned_few_candidates", False):
            return
        owner._warned_few_candidates = True
    else:
        if _WARNED_FEW_CANDIDATES:
            return
        _WARNED_FEW_CANDIDATES = True
    warnings.warn(
        f"in-batch InfoNCE with {num_candidates} candidate(s): the loss is exactly 0 by "
        f"construction (the positive is the only candidate); use a batch of at least 2 (across "
        f"ranks), or negatives='sampled'/'queue'/'simplex'", stacklevel=_user_stacklevel())


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside softnce and torch
    (the user's call of the loss, through ``nn.Module.__call__`` wrappers)."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if not (mod.startswith("softnce") or mod.startswith("torch")):
            return level
        frame, level = frame.f_back, level + 1
    return 2


def batch_infonce_rows(
    a: torch.Tensor | LogitScorer,
    candidates: Targets,
    log_q: torch.Tensor | None,
    offset: int = 0,
    extra: tuple[Targets | None, torch.Tensor | None, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Per-row loss with in-batch candidates; ``a = z / tau`` (N, C) (or a scorer), positive of
    row i is candidate ``offset + i``. Returns (N,).

    ``extra = (negatives, candidate_bias, negative_bias)`` appends shared extra negatives (with
    optional additive biases on the candidates' and the negatives' scores); used by the step
    candidates of :meth:`SoftTargetInfoNCE.step_candidates` in the queue/sampled/simplex modes."""
    scorer = _as_scorer(a)
    if (isinstance(candidates, torch.Tensor) and isinstance(scorer, LogitScorer)
            and scorer.num_classes < candidates.shape[0]):
        # fewer classes than candidates: fold 1/tau and log q into the (N, C) logits (one pass)
        # instead of scaling and offsetting the (N, M) scores
        z = scorer.z
        if log_q is not None:
            z = torch.add(log_q.neg(), z, alpha=scorer.scale)
        elif scorer.scale != 1.0:
            z = z * scorer.scale
        s = z @ candidates.to(z.dtype).T
    else:
        s = scorer.pairwise(candidates)
        if log_q is not None:
            s = s - _candidate_log_noise(candidates, log_q).unsqueeze(0)
    if extra is not None:
        negatives, cand_bias, neg_bias = extra
        if cand_bias is not None:
            s = s + cand_bias.to(s.dtype).unsqueeze(0)
        if negatives is not None and len(negatives):
            s_neg = scorer.pairwise(negatives)
            if log_q is not None:
                s_neg = s_neg - _candidate_log_noise(negatives, log_q).unsqueeze(0)
            if neg_bias is not None:
                s_neg = s_neg + neg_bias.to(s_neg.dtype).unsqueeze(0)
            s = torch.cat([s, s_neg], dim=1)
    pos = torch.arange(offset, offset + s.shape[0], device=s.device)
    # = logsumexp_j s_ij - s_i,pos(i), with the fused log-softmax kernel (fewer passes)
    return F.cross_entropy(s, pos, reduction="none")


def separated_infonce_rows(
    a: torch.Tensor | LogitScorer,
    targets: Targets,
    negatives: Targets | None,
    log_q: torch.Tensor | None,
    positive_bias: torch.Tensor | None = None,
    negative_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row loss with the own target as positive and a shared negative set. Returns (N,)."""
    scorer = _as_scorer(a)
    has_neg = negatives is not None and len(negatives) > 0
    s_neg, s_pos = _pair_and_rows(scorer, negatives if has_neg else None, targets)
    if log_q is not None:
        s_pos = s_pos - _candidate_log_noise(targets, log_q)
    if positive_bias is not None:
        s_pos = s_pos + positive_bias.to(s_pos.dtype)
    if not has_neg:
        return s_pos - s_pos  # a lone positive: zero loss, zero gradient
    if log_q is not None:
        s_neg = s_neg - _candidate_log_noise(negatives, log_q).unsqueeze(0)
    if negative_bias is not None:
        s_neg = s_neg + negative_bias.to(s_neg.dtype).unsqueeze(0)
    s = torch.cat([s_pos.unsqueeze(1), s_neg], dim=1)
    return F.cross_entropy(s, s.new_zeros(s.shape[0], dtype=torch.long), reduction="none")


