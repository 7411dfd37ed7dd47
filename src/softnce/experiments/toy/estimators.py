"""Estimators of ``softnce toy``: the linear model ``f(x) = V x`` fitted by full-batch L-BFGS
(NLL, soft-target CE) or by Adam on minibatches with the library's InfoNCE functionals, vmapped
over independent problems (see :mod:`softnce.experiments.toy`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from softnce.experiments.toy.generators import _check_positive_int
from softnce.losses import soft_target_cross_entropy
from softnce.noise import class_prior

__all__ = [
    "APPLICABLE", "ESTIMATORS", "NLL_REFERENCES", "Estimator", "FitSettings",
    "contrastive_step_loss", "fit_contrastive", "fit_estimator", "fit_many",
]


@dataclass(frozen=True)
class Estimator:
    """One way of fitting ``f(x) = V x``: which loss, on which targets, with which negatives."""

    name: str
    label: str
    loss: str  # "nll" | "soft-ce" | "infonce" | "soft-infonce"
    negatives: str | None = None  # "batch" | "queue" | "sampled" | "simplex"

    @property
    def uses_soft_targets(self) -> bool:
        return self.loss in ("soft-ce", "soft-infonce")

    @property
    def full_batch(self) -> bool:
        return self.loss in ("nll", "soft-ce")


ESTIMATORS: dict[str, Estimator] = {
    e.name: e
    for e in (
        Estimator("nll", "NLL (hard CE, L-BFGS)", "nll"),
        Estimator("soft-ce", "soft-target CE (L-BFGS)", "soft-ce"),
        Estimator("infonce-batch", "InfoNCE, in-batch", "infonce", "batch"),
        Estimator("infonce-queue", "InfoNCE, queue", "infonce", "queue"),
        Estimator("infonce-sampled", "InfoNCE, sampled from q", "infonce", "sampled"),
        Estimator("soft-infonce-batch", "soft InfoNCE, in-batch", "soft-infonce", "batch"),
        Estimator("soft-infonce-queue", "soft InfoNCE, queue", "soft-infonce", "queue"),
        Estimator("soft-infonce-sampled", "soft InfoNCE, one-hot sampled from q", "soft-infonce",
                  "sampled"),
        Estimator("soft-infonce-simplex", "soft InfoNCE, Dirichlet negatives", "soft-infonce",
                  "simplex"),
    )
}

# Which estimators are distinct and meaningful per DGP. On `categorical` soft-ce == nll and
# soft-infonce-* == infonce-* (one-hot targets); on `smoothed` hard InfoNCE does not see eps
# (it equals `categorical` at the same s); simplex negatives need positives with a density.
APPLICABLE: dict[str, tuple[str, ...]] = {
    "categorical": ("nll", "infonce-batch", "infonce-queue", "infonce-sampled"),
    "continuous-categorical": ("nll", "soft-ce", "infonce-batch", "soft-infonce-batch",
                               "soft-infonce-queue", "soft-infonce-sampled",
                               "soft-infonce-simplex"),
    "smoothed": ("nll", "soft-ce", "soft-infonce-batch", "soft-infonce-queue",
                 "soft-infonce-sampled"),
}
# The "NLL" side of the paper's claim, per DGP (first = the paper's soft-label NLL baseline).
NLL_REFERENCES: dict[str, tuple[str, ...]] = {
    "categorical": ("nll",),
    "continuous-categorical": ("soft-ce", "nll"),
    "smoothed": ("soft-ce", "nll"),
}


@dataclass
class FitSettings:
    """Optimiser settings shared by all fits.

    InfoNCE fits (:func:`fit_contrastive`): Adam, ``batch_size`` anchors per step,
    ``max(min_steps, epochs * floor(n / batch_size))`` steps, ``lr`` then ``lr * tail_factor``
    for the averaged second half; ``queue_size`` for ``"queue"``, ``num_negatives`` per step for
    ``"sampled"``/``"simplex"``, ``simplex_concentration`` of the Dirichlet. NLL and soft-target
    CE: L-BFGS with at most ``lbfgs_max_iter`` iterations.
    """

    epochs: int = 5
    min_steps: int = 400
    batch_size: int = 128
    lr: float = 0.3
    tail_factor: float = 0.3
    queue_size: int = 512
    num_negatives: int = 128
    simplex_concentration: float = 1.0
    lbfgs_max_iter: int = 500

    def validate(self) -> FitSettings:
        for name in ("epochs", "min_steps", "batch_size", "queue_size", "num_negatives",
                     "lbfgs_max_iter"):
            _check_positive_int(name, getattr(self, name))
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (in-batch negatives); found "
                             f"{self.batch_size}")
        for name in ("lr", "tail_factor", "simplex_concentration"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or not math.isfinite(v):
                raise ValueError(f"{name} must be a positive finite float; found {v!r}")
        return self


def _fit_lbfgs(x: torch.Tensor, loss_of_logits: Callable[[torch.Tensor], torch.Tensor],
               num_classes: int, max_iter: int) -> tuple[torch.Tensor, int]:
    x = x.double()
    v = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_of_logits(x @ v.T)
        loss.backward()
        return loss

    opt.step(closure)
    return v.detach(), int(opt.state[v].get("n_iter", 0))


class _Queue:
    """FIFO of the last ``size`` targets per problem, as the ``"queue"`` mode of
    :class:`~softnce.SoftTargetInfoNCE` keeps it: read before a step, filled after it (ring buffer,
    slot order; the loss is a logsumexp over the set, so the order does not matter)."""

    def __init__(self, problems: int, size: int, like: torch.Tensor) -> None:
        self.buf = like.new_zeros((problems, size, *like.shape[2:]))
        self.size = size
        self.ptr = 0
        self.len = 0

    def candidates(self) -> torch.Tensor | None:
        return self.buf[:, :self.len].clone() if self.len else None

    def push(self, targets: torch.Tensor) -> None:
        m = min(targets.shape[1], self.size)
        slots = (self.ptr + torch.arange(m)) % self.size
        self.buf[:, slots] = targets[:, -m:]
        self.ptr = (self.ptr + m) % self.size
        self.len = min(self.len + m, self.size)


def contrastive_step_loss(
    est: Estimator,
    logits: torch.Tensor,
    targets: torch.Tensor,
    noise_probs: torch.Tensor | None,
    negatives: torch.Tensor | None,
    simplex_concentration: float = 1.0,
) -> torch.Tensor:
    r"""Per-problem InfoNCE losses of one step for ``P`` independent problems, shape (P,).

    ``logits`` (P, B, K); ``targets`` (P, B) int labels or (P, B, K) soft targets;
    ``noise_probs`` (P, K) or None; ``negatives``: None for ``"batch"``, else (P, M) labels
    (``"sampled"``, hard queue) or (P, M, K) soft targets (soft queue, ``"simplex"``). Each
    problem's loss is the library's functional (:func:`softnce.soft_target_infonce` for
    ``"batch"``, :func:`softnce.separated_infonce` otherwise, with ``-log r`` biases for
    ``"simplex"``), mapped over problems with :func:`torch.func.vmap`. The candidate sets are
    those of :class:`~softnce.SoftTargetInfoNCE` (``tests/test_toy.py`` checks equality step by
    step), but one Python loop serves all problems.
    """
    from torch.func import vmap

    from softnce.losses import separated_infonce, soft_target_infonce

    if est.negatives == "batch":
        return vmap(lambda z, t, q: soft_target_infonce(z, t, q, validate_args=False))(
            logits, targets, noise_probs)
    if negatives is None:  # an empty queue: zero loss, zero gradient (as the module)
        return (logits * 0).sum(dim=(1, 2))
    if est.negatives == "simplex":
        if simplex_concentration == 1.0:  # uniform: a common constant, which cancels
            return vmap(lambda z, t, nu: separated_infonce(z, t, nu, validate_args=False))(
                logits, targets, negatives)
        a = simplex_concentration
        k = logits.shape[-1]
        log_norm = math.lgamma(k * a) - k * math.lgamma(a)

        def log_r(y: torch.Tensor) -> torch.Tensor:
            return log_norm + (a - 1.0) * y.clamp_min(torch.finfo(y.dtype).tiny).log().sum(-1)

        return vmap(lambda z, t, nu, bp, bn: separated_infonce(
            z, t, nu, validate_args=False, positive_bias=bp, negative_bias=bn))(
            logits, targets, negatives, -log_r(targets), -log_r(negatives))
    return vmap(lambda z, t, nu, q: separated_infonce(z, t, nu, q, validate_args=False))(
        logits, targets, negatives, noise_probs)


def fit_contrastive(
    est: Estimator,
    x: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    settings: FitSettings,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """Fit ``P`` independent problems at once with one InfoNCE estimator.

    ``x`` (P, n, d); ``targets`` (P, n) int labels or (P, n, K) soft targets; noise ``q`` =
    class prior of each problem's targets (not for ``"simplex"``). Adam from ``V = 0`` (Adam is
    elementwise, so the problems stay independent) on shuffled minibatches (a new permutation per
    pass, the last incomplete batch dropped): ``T = max(min_steps, epochs * floor(n / batch))``
    steps, lr ``lr`` for the first half and ``lr * tail_factor`` for the second half, whose
    iterates are averaged (Polyak-Ruppert). Float32 as in ordinary training.
    Returns ``(V (P, K, d) float64, T)``.
    """
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))  # the Dirichlet sampler (c != 1) draws from the global generator
    x = x.float()
    p, n, d = x.shape
    k = num_classes
    t_all = targets.float() if targets.is_floating_point() else targets
    q = None
    if est.negatives != "simplex":
        q = torch.stack([class_prior(t_all[i], k) for i in range(p)])
    b = min(settings.batch_size, n)
    per_epoch = n // b
    total = max(settings.min_steps, settings.epochs * per_epoch)
    start_avg = total // 2
    v = torch.zeros(p, k, d, requires_grad=True)
    opt = torch.optim.Adam([v], lr=settings.lr)
    avg = torch.zeros(p, k, d, dtype=torch.float64)
    queue = _Queue(p, settings.queue_size, t_all) if est.negatives == "queue" else None
    rows = torch.arange(p).unsqueeze(1)
    perm = torch.rand(p, n, generator=g).argsort(dim=1)
    dirichlet = torch.distributions.Dirichlet(torch.full((k,), float(
        settings.simplex_concentration)))
    for step in range(total):
        i = step % per_epoch
        if i == 0 and step:
            perm = torch.rand(p, n, generator=g).argsort(dim=1)
        if step == start_avg:
            for group in opt.param_groups:
                group["lr"] = settings.lr * settings.tail_factor
        idx = perm[:, i * b:(i + 1) * b]
        xb, tb = x[rows, idx], t_all[rows, idx]
        neg = None
        if est.negatives == "sampled":
            neg = torch.multinomial(q, settings.num_negatives, replacement=True, generator=g)
        elif est.negatives == "simplex":
            if settings.simplex_concentration == 1.0:  # uniform: normalised exponentials
                gam = -torch.log1p(-torch.rand(p, settings.num_negatives, k, generator=g))
                neg = gam / gam.sum(-1, keepdim=True)
            else:
                neg = dirichlet.sample((p, settings.num_negatives))
        elif queue is not None:
            neg = queue.candidates()
        logits = torch.bmm(xb, v.transpose(1, 2))
        loss = contrastive_step_loss(est, logits, tb, q, neg,
                                     settings.simplex_concentration).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if queue is not None:
            queue.push(tb)
        if step >= start_avg:
            avg += v.detach().double()
    if not bool(torch.isfinite(avg).all()):
        raise RuntimeError(f"{est.name}: the Adam iterates became non-finite (lr={settings.lr})")
    return avg / (total - start_avg), total


def fit_estimator(
    est: Estimator | str,
    x: torch.Tensor,
    hard_labels: torch.Tensor,
    soft_targets: torch.Tensor | None,
    settings: FitSettings | None = None,
    seed: int = 0,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, int]:
    """Fit ``f(x) = V x`` with one estimator on one data set; returns ``(V (K, d) float64,
    optimiser steps)``.

    ``hard_labels`` (N,) int64 feed ``nll``/``infonce-*``; ``soft_targets`` (N, K) feed the soft
    estimators (``None``: one-hot of ``hard_labels`` over ``num_classes``, by default
    ``max(label) + 1``). ``seed`` fixes batch order and negatives. See :func:`fit_many` for
    several data sets at once.
    """
    if soft_targets is None:
        k = int(hard_labels.max()) + 1 if num_classes is None else num_classes
        soft_targets = F.one_hot(hard_labels, k).double()
    vs, steps = fit_many(est, x.unsqueeze(0), hard_labels.unsqueeze(0),
                         soft_targets.unsqueeze(0), settings, seed)
    return vs[0], steps


def fit_many(
    est: Estimator | str,
    x: torch.Tensor,
    hard_labels: torch.Tensor,
    soft_targets: torch.Tensor,
    settings: FitSettings | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """Fit ``P`` independent data sets ``x`` (P, n, d), ``hard_labels`` (P, n), ``soft_targets``
    (P, n, K); returns ``(V (P, K, d) float64, steps per problem)``.

    ``nll``/``soft-ce``: full-batch L-BFGS per problem in float64 (the exact minimiser).
    InfoNCE estimators: :func:`fit_contrastive` (all problems in one vmapped Adam loop).
    """
    if isinstance(est, str):
        if est not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {tuple(ESTIMATORS)}; found {est!r}")
        est = ESTIMATORS[est]
    settings = (settings or FitSettings()).validate()
    if x.dim() != 3 or hard_labels.shape != x.shape[:2] or soft_targets.dim() != 3 \
            or soft_targets.shape[:2] != x.shape[:2]:
        raise ValueError(f"expected x (P, n, d), hard_labels (P, n), soft_targets (P, n, K); "
                         f"found {tuple(x.shape)}, {tuple(hard_labels.shape)}, "
                         f"{tuple(soft_targets.shape)}")
    k = soft_targets.shape[2]
    if est.full_batch:
        out, steps = [], 0
        for i in range(x.shape[0]):
            if est.loss == "nll":
                y = hard_labels[i]
                v, it = _fit_lbfgs(x[i], lambda z, y=y: F.cross_entropy(z, y), k,
                                   settings.lbfgs_max_iter)
            else:
                t = soft_targets[i].double()
                v, it = _fit_lbfgs(x[i], lambda z, t=t: soft_target_cross_entropy(
                    z, t, validate_args=False), k, settings.lbfgs_max_iter)
            out.append(v)
            steps = max(steps, it)
        return torch.stack(out), steps
    targets = soft_targets if est.uses_soft_targets else hard_labels
    return fit_contrastive(est, x, targets, k, settings, seed)

