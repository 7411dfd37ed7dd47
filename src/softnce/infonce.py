"""The module form of soft-target InfoNCE: :class:`SoftTargetInfoNCE` (in-batch, queued,
sampled and simplex negatives, distributed gathering, step candidates for gradient
accumulation) and :class:`InfoNCE` (hard labels). The formulas are in :mod:`softnce.losses`."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from softnce._scores import (
    NEGATIVES,
    Deferred,
    LogitScorer,
    Targets,
    _check_call,
    _checked_reduce,
    _compute_dtype,
    _log_noise,
    _no_autocast,
    _noise_check,
    _reduce,
    _warn_few_candidates,
    batch_infonce_rows,
    prepare_targets,
    separated_infonce_rows,
)
from softnce._validation import (
    check_logits,
    check_probability_vector,
    check_reduction,
    check_temperature,
)
from softnce.distributed import broadcast_, gather_targets, is_distributed
from softnce.targets import SoftTargets


# --------------------------------------------------------------------------- functional
def soft_target_infonce(
    logits: torch.Tensor,
    targets: Targets,
    noise_probs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Soft-target InfoNCE with in-batch negatives (no distributed gathering).

    ``loss_i = logsumexp_j s_ij - s_ii`` with ``s_ij = (z_i / tau - log q) . y_j``.

    Args:
        logits: (N, C) floating point.
        targets: (N, C) soft targets (rows on the simplex), (N,) int64 labels, or ``SoftTargets``.
        noise_probs: (C,) strictly positive, summing to 1; ``None`` = uniform (no correction).
        temperature: ``tau > 0``; predictions are ``softmax(logits / tau)``.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (then shape (N,)).
        validate_args: run value checks (finiteness, ranges, simplex rows); shapes always.
            The logits are not scanned: their finiteness is checked on the (N,) row sums and
            the per-row loss computed anyway (a NaN/inf logit reaches them), and only on failure
            is the tensor scanned for the message. Dense targets (their row sums' range and
            minimum), the noise vector and that finiteness flag are read in one host
            synchronisation per call (integer labels add one, before they index anything).
            With ``validate_args=False`` no value is read on the host (no synchronisation).

    Returns:
        The reduced loss (float32, or float64 for float64 logits). An empty batch (N = 0)
        gives ``0`` for ``"mean"``/``"sum"`` (with a zero gradient) and an empty tensor for
        ``"none"``. A batch of one row has a single candidate and a loss of exactly 0 (a
        ``UserWarning`` is issued once). Finite logits whose scores overflow raise
        ``ValueError`` (with ``validate_args``) instead of returning inf/NaN; an overflowed row
        sum of the logits is harmless when no target has a uniform part.

    Example::

        >>> z = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> y = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
        >>> soft_target_infonce(z, y)          # = log(1 + exp(-1.6))
        tensor(0.1839)
    """
    deferred: list = []
    logits, tgt, tau, reduction = _check_call(logits, targets, temperature, reduction,
                                              validate_args, deferred)
    n, c = logits.shape
    _warn_few_candidates(len(tgt), n)
    with _no_autocast(logits.device):
        scorer = LogitScorer(logits.to(_compute_dtype(logits)), 1.0 / tau)
        log_q = _log_noise(noise_probs, c, scorer.dtype, scorer.device, False)
        noise = _noise_check(noise_probs, log_q, validate_args)
        loss = batch_infonce_rows(scorer, tgt, log_q)
    return _checked_reduce(logits, loss, reduction, validate_args, scorer, temperature=tau,
                           noise=noise, deferred=deferred)


def separated_infonce(
    logits: torch.Tensor,
    targets: Targets,
    negatives: Targets | None,
    noise_probs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    validate_args: bool = True,
    positive_bias: torch.Tensor | None = None,
    negative_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Soft-target InfoNCE with *separated* negatives shared by the batch.

    Candidates of row ``i`` are its own target ``y_i`` (the positive) and the K rows of
    ``negatives``::

        loss_i = log( exp(s_ii) + sum_k exp(s_ik) ) - s_ii,   s_ij = (z_i/tau - log q) . y_j + b_j

    ``positive_bias`` (N,) and ``negative_bias`` (K,) are optional additive offsets ``b_j`` — e.g.
    ``-log r(y_j)`` for negatives drawn from a known density ``r`` over the simplex, which makes
    the estimator consistent for soft labels too.

    Example::

        >>> z = torch.zeros(2, 3)
        >>> separated_infonce(z, torch.tensor([0, 1]), torch.tensor([2, 2]))  # = log 3
        tensor(1.0986)
    """
    deferred: list = []
    logits, tgt, tau, reduction = _check_call(logits, targets, temperature, reduction,
                                              validate_args, deferred)
    n, c = logits.shape
    neg = None if negatives is None else prepare_targets(negatives, c, None, validate_args,
                                                         name="negatives", deferred=deferred)
    for bname, bias in (("positive_bias", positive_bias), ("negative_bias", negative_bias)):
        if bias is not None and not isinstance(bias, torch.Tensor):
            raise TypeError(f"{bname} must be a torch.Tensor or None; found {type(bias).__name__}")
    if positive_bias is not None and tuple(positive_bias.shape) != (n,):
        raise ValueError(f"positive_bias must have shape ({n},); found {tuple(positive_bias.shape)}")
    if negative_bias is not None:
        k = 0 if neg is None else len(neg)
        if tuple(negative_bias.shape) != (k,):
            raise ValueError(f"negative_bias must have shape ({k},) (one per negative); found "
                             f"{tuple(negative_bias.shape)}")
    with _no_autocast(logits.device):
        scorer = LogitScorer(logits.to(_compute_dtype(logits)), 1.0 / tau)
        log_q = _log_noise(noise_probs, c, scorer.dtype, scorer.device, False)
        noise = _noise_check(noise_probs, log_q, validate_args)
        loss = separated_infonce_rows(scorer, tgt, neg, log_q, positive_bias, negative_bias)
    return _checked_reduce(logits, loss, reduction, validate_args, scorer, temperature=tau,
                           noise=noise, deferred=deferred)


# ------------------------------------------------------------------------------ modules
class SoftTargetInfoNCE(nn.Module):
    r"""Soft-target InfoNCE as a drop-in replacement for ``nn.CrossEntropyLoss``.

    ``loss_i = -log( exp(s_i,pos(i)) / sum_{j in candidates} exp(s_ij) )``,
    ``s_ij = (z_i / tau - log q) . y_j``; see the module docstring for the candidate sets.

    Args:
        noise_probs: (C,) noise distribution ``q`` (e.g. :func:`softnce.class_prior`), a buffer;
            ``None`` = uniform.
        temperature: ``tau > 0``. Predictions are ``softmax(logits / tau)``.
        negatives: ``"batch"`` | ``"queue"`` | ``"sampled"`` | ``"simplex"``.
        queue_size: FIFO length for ``"queue"``.
        num_negatives: labels drawn from ``q`` (``"sampled"``) or soft targets drawn from the
            Dirichlet (``"simplex"``) per step.
        gather_distributed: under ``torch.distributed``, gather targets from all ranks (batch and
            queue modes) and share sampled negatives, so candidates are global.
        reduction: ``"mean"`` (over the local rows) | ``"sum"`` | ``"none"``.
        validate_args: value checks (see :func:`soft_target_infonce`).
        simplex_concentration: symmetric Dirichlet concentration ``a > 0`` of the ``"simplex"``
            negatives (1 = uniform); their log-density
            ``log Gamma(C a) - C log Gamma(a) + (a - 1) sum_c log y_c`` is subtracted from every
            candidate's score.

    Shapes: ``forward(logits (N, C), targets)`` with targets (N, C) float, (N,) int64 or
    ``SoftTargets``; returns a scalar (or (N,) with ``reduction="none"``).

    The queue is only filled in training mode (``module.train()``); it lives in the buffers
    ``queue_*`` and therefore in ``state_dict``, so a resumed run continues with the same queue.
    Float64 targets are queued in float64 (the queue is float32 otherwise); a float64
    ``noise_probs`` is kept in float64.

    Gradient accumulation: :meth:`step_candidates` makes the candidates those of the whole
    optimiser step, independent of how it is split into micro-batches.

    Example::

        >>> loss_fn = SoftTargetInfoNCE(noise_probs=torch.tensor([0.5, 0.25, 0.25]))
        >>> z = torch.randn(4, 3, requires_grad=True)
        >>> loss_fn(z, torch.tensor([0, 1, 2, 0])).backward()
    """

    def __init__(
        self,
        noise_probs: torch.Tensor | None = None,
        temperature: float = 1.0,
        negatives: str = "batch",
        queue_size: int = 4096,
        num_negatives: int = 1024,
        gather_distributed: bool = True,
        reduction: str = "mean",
        validate_args: bool = True,
        simplex_concentration: float = 1.0,
    ) -> None:
        super().__init__()
        self.temperature = check_temperature(temperature)
        self.reduction = check_reduction(reduction)
        if negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}; found {negatives!r}")
        self.negatives = negatives
        for name, value in (("queue_size", queue_size), ("num_negatives", num_negatives)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; found {value!r}")
        self.queue_size = int(queue_size)
        self.num_negatives = int(num_negatives)
        a = simplex_concentration
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < float("inf"):
            raise ValueError(f"simplex_concentration must be a positive finite float; found {a!r}")
        self.simplex_concentration = float(a)
        if negatives == "simplex" and noise_probs is not None:
            raise ValueError("noise_probs must be None with negatives='simplex': the noise is the "
                             "Dirichlet(simplex_concentration) density, whose log is subtracted "
                             "instead of (log q) . y")
        self.gather_distributed = bool(gather_distributed)
        self.validate_args = bool(validate_args)
        if noise_probs is not None:
            noise_probs = check_probability_vector("noise_probs", noise_probs, None, validate_args)
            # float64 stays float64 (log q then matches float64 logits to rounding); else float32
            noise_probs = noise_probs.detach().clone().to(_compute_dtype(noise_probs))
        self.register_buffer("noise_probs", noise_probs)
        # FIFO of past targets: sparse (indices/weights/uniform) unless a dense target was pushed.
        self.register_buffer("queue_indices", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("queue_weights", torch.zeros(0, 0))
        self.register_buffer("queue_uniform", torch.zeros(0))
        self.register_buffer("queue_dense", torch.zeros(0, 0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_negatives", None, persistent=False)
        self._num_classes: int | None = None
        self._step: dict | None = None
        self._warned_few_candidates = False

    def extra_repr(self) -> str:
        s = f"temperature={self.temperature}, negatives={self.negatives!r}"
        if self.negatives == "queue":
            s += f", queue_size={self.queue_size}"
        if self.negatives in ("sampled", "simplex"):
            s += f", num_negatives={self.num_negatives}"
        if self.negatives == "simplex":
            s += f", simplex_concentration={self.simplex_concentration}"
        return s + f", reduction={self.reduction!r}"

    # ------------------------------------------------------------------- targets
    def _prepare(self, logits: torch.Tensor, targets: object,
                 deferred: list[Deferred] | None = None) -> Targets:
        n, c = logits.shape
        return prepare_targets(targets, c, n, self.validate_args, deferred=deferred)

    def forward(self, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        """The loss of logits (N, C) against targets (see the class docstring).

        With ``validate_args`` the logits are checked on the row sums and per-row losses
        computed anyway (see :func:`soft_target_infonce`); no (N, C) scan when they are finite.
        So are dense targets with in-batch negatives on one process (their row sums and minimum
        join the same host read); in the other modes, and when the targets are gathered across
        ranks, they are checked first, so bad rows never reach the queue, the negatives' biases
        or another rank. An empty batch gives 0 (``"mean"``/``"sum"``, zero gradient) or an
        empty tensor."""
        logits = check_logits(logits, False)
        local = not (self.gather_distributed and is_distributed())
        batch_mode = self.negatives == "batch" and self._step is None and local
        deferred: list[Deferred] | None = [] if batch_mode else None
        tgt = self._prepare(logits, targets, deferred)
        with _no_autocast(logits.device):
            scorer = LogitScorer(logits.to(_compute_dtype(logits)), 1.0 / self.temperature)
            loss = self._loss_rows(scorer, tgt)
        return _checked_reduce(logits, loss, self.reduction, self.validate_args, scorer,
                               temperature=self.temperature, deferred=deferred)

    def forward_with_scorer(self, scorer: LogitScorer, targets: Targets) -> torch.Tensor:
        """The loss for prepared targets, with scores ``a_i . y_j`` supplied by ``scorer``.

        ``scorer`` provides ``num_classes``, ``device``, ``dtype``, ``pairwise(candidates) ->
        (N, M)`` and ``rowwise(targets) -> (N,)`` (see :class:`LogitScorer`); the temperature is
        already inside it. This lets heads that never build (N, C) logits (e.g.
        :mod:`softnce.embedded`) reuse the candidate sets, queue, sampling, noise correction and
        :meth:`step_candidates`.
        """
        return _reduce(self._loss_rows(scorer, targets), self.reduction)

    def _loss_rows(self, scorer: LogitScorer, targets: Targets) -> torch.Tensor:
        c = scorer.num_classes
        if self.noise_probs is not None and self.noise_probs.shape[0] != c:
            raise ValueError(f"noise_probs has length {self.noise_probs.shape[0]} but the targets "
                             f"have C={c} classes")
        log_q = _log_noise(self.noise_probs, c, scorer.dtype, scorer.device, False)
        if self._step is not None:
            return self._step_rows(scorer, targets, log_q)
        if self.negatives == "batch":
            cands, offset = (gather_targets(targets) if self.gather_distributed else (targets, 0))
            _warn_few_candidates(len(cands), len(targets), self)
            return batch_infonce_rows(scorer, cands, log_q, offset)
        if self.negatives == "queue":
            loss = separated_infonce_rows(scorer, targets, self.queue_candidates(c), log_q)
            if self.training:
                self._enqueue(targets)
            return loss
        if self.negatives == "simplex":
            neg = self.sample_simplex_negatives(c, scorer.device, scorer.dtype)
            pos_bias, neg_bias = self._simplex_biases(targets, neg, scorer.dtype)
            return separated_infonce_rows(scorer, targets, neg, None, pos_bias, neg_bias)
        neg = SoftTargets.from_labels(self.sample_negatives(c, scorer.device), c,
                                      validate_args=False)
        return separated_infonce_rows(scorer, targets, neg, log_q)

    def _simplex_biases(self, targets: Targets, neg: torch.Tensor | None, dtype: torch.dtype
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``-log r(y)`` of the targets and of the simplex negatives (``None`` for a = 1, whose
        constant density cancels)."""
        if self.simplex_concentration == 1.0:
            return None, None
        dense = targets.to_dense(dtype) if isinstance(targets, SoftTargets) \
            else targets.to(dtype)
        if self.validate_args and bool((dense <= 0).any()):
            row = int((dense <= 0).any(dim=1).nonzero()[0])
            raise ValueError(
                f"targets must lie strictly inside the simplex (all entries > 0) for "
                f"negatives='simplex' with simplex_concentration="
                f"{self.simplex_concentration}: the Dirichlet log-density is -inf or "
                f"+inf on the simplex's faces; found a zero entry in row {row} (use "
                f"simplex_concentration=1, whose density is constant)")
        return (-self._dirichlet_log_density(dense),
                None if neg is None else -self._dirichlet_log_density(neg))

    # ------------------------------------------------------------ step candidates
    @contextlib.contextmanager
    def step_candidates(self, targets: Targets):
        r"""Use the targets of the whole optimiser step as candidates (gradient accumulation).

        Inside the context every ``forward`` (one per micro-batch, in order) scores its rows
        against *all* ``targets`` of the step -- gathered across ranks as usual -- and the
        positive of row ``i`` is its own target at its position in the step (micro-batch ``b``
        must hold step rows ``sum_{b' < b} n_b' ...``; its ``targets`` argument must be those rows,
        which is not compared). The candidate set no longer depends on how the step is split:

        * ``"batch"``: candidates = the step targets; the micro-batch losses, weighted by
          ``n_micro / N_step`` (``reduction="mean"``), sum to the loss of the whole step as one
          batch, and so do their gradients;
        * ``"queue"``, ``"sampled"``, ``"simplex"``: candidates = the step targets plus the
          mode's extra negatives -- the queue as it was before the step (it is filled once, with
          all step targets, when the context exits in training mode), or negatives drawn once
          for the step at its first forward. The same step as one batch *inside* the context
          gives the same loss.

        Targets carry no gradient, so they can be known before the first micro-batch forward.
        Contexts do not nest.

        Example::

            >>> loss_fn = SoftTargetInfoNCE(temperature=0.5)
            >>> z, y = torch.randn(64, 10, requires_grad=True), torch.randint(10, (64,))
            >>> with loss_fn.step_candidates(y):
            ...     for zb, yb in zip(z.split(16), y.split(16)):
            ...         (loss_fn(zb, yb) * len(yb) / len(y)).backward()
            >>> g = z.grad.clone(); z.grad = None
            >>> loss_fn(z, y).backward()      # the same step as one batch
            >>> torch.allclose(g, z.grad, atol=1e-6)
            True
        """
        if self._step is not None:
            raise RuntimeError("step_candidates contexts do not nest")
        if isinstance(self, InfoNCE):
            self._check_labels_type(targets)
        self._step = {"raw": targets, "consumed": 0}
        try:
            yield self
        finally:
            step, self._step = self._step, None
            if (self.negatives == "queue" and self.training and "targets" in step
                    and step["consumed"]):
                self._enqueue(step["targets"])

    def _step_rows(self, scorer: LogitScorer, targets: Targets,
                   log_q: torch.Tensor | None) -> torch.Tensor:
        step = self._step
        c, n = scorer.num_classes, len(targets)
        if "targets" not in step:
            tgt = prepare_targets(step["raw"], c, None, self.validate_args, name="step targets")
            cands, offset = (gather_targets(tgt) if self.gather_distributed else (tgt, 0))
            step.update(targets=tgt, cands=cands, offset=offset, extra=None)
            if self.negatives == "queue":
                step["extra"] = (self.queue_candidates(c), None, None)
            elif self.negatives == "sampled":
                neg = SoftTargets.from_labels(self.sample_negatives(c, scorer.device), c,
                                              validate_args=False)
                step["extra"] = (neg, None, None)
            elif self.negatives == "simplex":
                neg = self.sample_simplex_negatives(c, scorer.device, scorer.dtype)
                cand_bias, neg_bias = self._simplex_biases(cands, neg, scorer.dtype)
                step["extra"] = (neg, cand_bias, neg_bias)
        start = step["consumed"]
        if start + n > len(step["targets"]):
            raise ValueError(f"step_candidates: the micro-batches hold more rows than the "
                             f"{len(step['targets'])} step targets; found rows {start}.."
                             f"{start + n - 1}")
        if self.negatives == "batch":
            _warn_few_candidates(len(step["cands"]), n, self)
        step["consumed"] = start + n
        if self.negatives == "simplex":
            log_q = None
        return batch_infonce_rows(scorer, step["cands"], log_q, step["offset"] + start,
                                  step["extra"])

    # ---------------------------------------------------------------- sampling
    def sample_negatives(self, num_classes: int, device: torch.device) -> torch.Tensor:
        """Draw ``num_negatives`` labels from ``q`` (shared across ranks); kept in
        ``last_negatives`` for inspection."""
        with torch.no_grad():
            if self.noise_probs is not None:
                idx = torch.multinomial(self.noise_probs.to(device), self.num_negatives,
                                        replacement=True)
            else:
                idx = torch.randint(num_classes, (self.num_negatives,), device=device)
            if self.gather_distributed and is_distributed():
                broadcast_(idx, src=0)
        self.last_negatives = idx
        return idx

    def sample_simplex_negatives(self, num_classes: int, device: torch.device,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Draw ``num_negatives`` soft targets (num_negatives, C) from
        ``Dirichlet(simplex_concentration)`` (shared across ranks); kept in ``last_negatives``."""
        with torch.no_grad():
            conc = torch.full((num_classes,), self.simplex_concentration, dtype=dtype,
                              device=device)
            neg = torch.distributions.Dirichlet(conc, validate_args=False).sample(
                (self.num_negatives,))
            if self.gather_distributed and is_distributed():
                broadcast_(neg, src=0)
        self.last_negatives = neg
        return neg

    def _dirichlet_log_density(self, y: torch.Tensor) -> torch.Tensor:
        """``log Dir(y; a) = log Gamma(C a) - C log Gamma(a) + (a - 1) sum_c log y_c`` -> (M,)."""
        c = y.shape[1]
        a = self.simplex_concentration
        log_norm = math.lgamma(c * a) - c * math.lgamma(a)
        return log_norm + (a - 1.0) * y.clamp_min(torch.finfo(y.dtype).tiny).log().sum(dim=1)

    # ------------------------------------------------------------------- queue
    def queue_candidates(self, num_classes: int | None = None) -> Targets | None:
        """The current queue contents as targets (``None`` if empty).

        Returns copies: autograd keeps them for the backward pass while the queue is updated.
        """
        m = int(self.queue_len)
        if m == 0:
            return None
        if self.queue_dense.numel():
            q = self.queue_dense[:m].clone()
            if num_classes is not None and q.shape[1] != num_classes:
                raise ValueError(f"the queue holds targets over {q.shape[1]} classes but logits "
                                 f"have C={num_classes}")
            return q
        c = self._num_classes if self._num_classes is not None else num_classes
        if c is None:
            raise ValueError("num_classes is needed to read a sparse queue")
        if num_classes is not None:
            if self._num_classes is not None and num_classes != self._num_classes:
                raise ValueError(f"the queue holds targets over {self._num_classes} classes but "
                                 f"logits have C={num_classes}")
            c = num_classes
        return SoftTargets(self.queue_indices[:m].clone(), self.queue_weights[:m].clone(),
                           self.queue_uniform[:m].clone(), c, validate_args=False)

    @torch.no_grad()
    def _enqueue(self, targets: Targets) -> None:
        if self.gather_distributed:
            targets, _ = gather_targets(targets)
        q_size = self.queue_size
        if isinstance(targets, SoftTargets):
            self._num_classes = targets.num_classes
        m = len(targets)
        if m == 0:
            return
        if m > q_size:
            targets = targets[m - q_size:]
            m = q_size
        dev = targets.device
        # float64 targets are stored in float64 (and the queue stays float64 from then on)
        fdt = torch.float64 if torch.float64 in (
            targets.dtype, self.queue_dense.dtype, self.queue_weights.dtype) else torch.float32
        dense_mode = bool(self.queue_dense.numel()) or not isinstance(targets, SoftTargets)
        if dense_mode:
            c = targets.shape[1] if isinstance(targets, torch.Tensor) else targets.num_classes
            if not self.queue_dense.numel():  # switch (or start) in dense storage
                old = self.queue_candidates(c) if int(self.queue_len) else None
                self.queue_dense = torch.zeros(q_size, c, device=dev, dtype=fdt)
                if old is not None:
                    self.queue_dense[: len(old)] = old.to_dense(fdt)
                self.queue_indices = torch.zeros(0, 0, dtype=torch.long, device=dev)
                self.queue_weights = torch.zeros(0, 0, device=dev, dtype=fdt)
                self.queue_uniform = torch.zeros(0, device=dev, dtype=fdt)
            elif self.queue_dense.dtype != fdt:
                self.queue_dense = self.queue_dense.to(fdt)
            rows = targets.to_dense(fdt) if isinstance(targets, SoftTargets) else targets
            slots = (self.queue_ptr + torch.arange(m, device=dev)) % q_size
            self.queue_dense[slots] = rows.to(self.queue_dense.dtype)
        else:
            k = max(targets.k, self.queue_indices.shape[1])
            if self.queue_weights.dtype != fdt:
                self.queue_weights = self.queue_weights.to(fdt)
                self.queue_uniform = self.queue_uniform.to(fdt)
                self.queue_dense = self.queue_dense.to(fdt)
            if self.queue_indices.shape[0] != q_size or self.queue_indices.shape[1] < k:
                old_k = self.queue_indices.shape[1]
                idx = torch.zeros(q_size, k, dtype=torch.long, device=dev)
                w = torch.zeros(q_size, k, device=dev, dtype=fdt)
                u = torch.zeros(q_size, device=dev, dtype=fdt)
                if self.queue_indices.shape[0] == q_size:
                    idx[:, :old_k] = self.queue_indices
                    w[:, :old_k] = self.queue_weights
                    u[:] = self.queue_uniform
                self.queue_indices, self.queue_weights, self.queue_uniform = idx, w, u
            st = targets.pad_to(k)
            slots = (self.queue_ptr + torch.arange(m, device=dev)) % q_size
            self.queue_indices[slots] = st.indices
            self.queue_weights[slots] = st.weights.to(self.queue_weights.dtype)
            self.queue_uniform[slots] = st.uniform.to(self.queue_uniform.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + m) % q_size)
        self.queue_len.fill_(min(int(self.queue_len) + m, q_size))

    def reset_queue(self) -> None:
        """Empty the queue."""
        self.queue_len.zero_()
        self.queue_ptr.zero_()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # Queue buffers are created lazily with data-dependent shapes: adopt the saved shapes.
        for name in ("queue_indices", "queue_weights", "queue_uniform", "queue_dense"):
            key = prefix + name
            if key in state_dict:
                saved = state_dict[key]
                cur = getattr(self, name)
                if saved.dim() and saved.shape[0] not in (0, self.queue_size):
                    raise ValueError(
                        f"{key} holds a queue of {saved.shape[0]} slots but this module has "
                        f"queue_size={self.queue_size}; create it with the saved queue_size"
                    )
                dtype = saved.dtype if saved.is_floating_point() else cur.dtype
                if saved.shape != cur.shape or dtype != cur.dtype:  # e.g. a float64 queue
                    setattr(self, name, torch.zeros(saved.shape, dtype=dtype,
                                                    device=cur.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class InfoNCE(SoftTargetInfoNCE):
    r"""Hard-label InfoNCE: :class:`SoftTargetInfoNCE` for integer labels (N,).

    ``s_ij = z_i[y_j] / tau - log q[y_j]``; the loss is the cross-entropy of the row ``s_i``
    with ``j = i`` as the positive. Same arguments as :class:`SoftTargetInfoNCE`.

    Example::

        >>> from softnce import class_prior
        >>> labels = torch.tensor([0, 1, 1, 2])
        >>> loss_fn = InfoNCE(noise_probs=class_prior(labels, num_classes=3))
        >>> loss_fn(torch.zeros(4, 3), labels)   # mean of log(35/3) - log(1/q[y_i])
        tensor(1.4067)
    """

    def _prepare(self, logits: torch.Tensor, targets: object,
                 deferred: list[Deferred] | None = None) -> Targets:
        self._check_labels_type(targets)
        return super()._prepare(logits, targets, deferred)

    @staticmethod
    def _check_labels_type(targets: object) -> None:
        if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or \
                targets.dtype == torch.bool:
            found = targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise TypeError(
                f"InfoNCE expects integer class labels (N,) as targets; found {found} "
                f"(use SoftTargetInfoNCE for soft targets)"
            )


