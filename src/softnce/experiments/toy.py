r"""``softnce toy``: parameter estimation with known ground truth under label uncertainty.

The paper (Hugger & Uhlmann, arXiv 2404.14076, Figure 1) motivates soft-target InfoNCE with a toy
example in which more label uncertainty makes NLL's parameter estimates worse than InfoNCE's. Its
data-generating process is not published; this module rebuilds the experiment from first
principles with every choice explicit.

Data-generating processes (all with known, seeded parameters)::

    x ~ N(0, I_d),   eta(x) = s W0 x,   W0 (K, d) row-centred with ||W0||_F = 1

* ``categorical``: ``y ~ Categorical(softmax(eta(x)))``, hard labels; label uncertainty ``1 / s``.
* ``continuous-categorical``: soft labels ``alpha ~ CC(eta(x))`` (Gordon-Rodriguez et al. 2020),
  the density on the simplex (Lebesgue measure on K - 1 coordinates)::

      p(alpha | x) = exp(eta . alpha) / Z(eta),   Z(eta) = sum_k e^{eta_k} / prod_{j != k}(eta_k - eta_j)

  ``Z`` is the divided difference of ``exp`` at ``eta_1..eta_K`` (Hermite-Genocchi), computed
  stably as the top-right entry of ``expm(diag(eta) + superdiagonal ones)``. Sampling is exact:
  the *ordered rejection sampler* of Gordon-Rodriguez et al. 2020 (drop the coordinate with the
  largest ``eta``; the others are independent truncated exponentials on [0, 1] with rates
  ``eta_j - max eta <= 0``, accepted when they sum to at most 1). Acceptance is at least 1/2 for
  K = 3 and grows with ``s``; it falls like ``1/(K-1)!`` for many nearly equal ``eta`` (large K).
  Hard labels for the hard estimators are one annotator vote ``y ~ Categorical(alpha)``.
  Label uncertainty ``1 / s``.
* ``smoothed``: hard labels of ``categorical`` at a fixed ``s`` turned into label-smoothed targets
  ``(1 - eps) onehot(y) + eps / K``; label uncertainty ``eps``.

Estimators (linear model ``f(x) = V x``, no bias, temperature 1):

* ``nll``: hard cross-entropy on hard labels; full-batch L-BFGS in float64 (the exact MLE).
* ``soft-ce``: soft-target cross-entropy on the soft targets (the paper's NLL baseline trained
  on soft labels); full-batch L-BFGS in float64. On ``categorical`` it *is* ``nll``.
* ``infonce-{batch,queue,sampled}``: InfoNCE on hard labels with
  ``noise_probs = class_prior(labels)``, the candidate sets of ``InfoNCE(negatives=...)``.
* ``soft-infonce-{batch,queue,sampled}``: soft-target InfoNCE on the soft targets with
  ``noise_probs = class_prior(targets)`` (the published ``- alpha . log(prior)`` correction), the
  candidate sets of ``SoftTargetInfoNCE(negatives=...)``. On ``categorical`` they *are* the hard
  ones. ``sampled`` pairs soft positives with one-hot negatives drawn from ``q``; for many
  negatives its loss tends to soft-target CE (``sum_k q_k e^{f_k - log q_k} = sum_k e^{f_k}``).
* ``soft-infonce-simplex``: soft-target InfoNCE whose negatives are drawn from a known density
  ``r`` on the simplex (Dirichlet, uniform by default) with its exact correction: every candidate
  ``alpha_j`` is scored ``f(x) . alpha_j - log r(alpha_j)`` (``SoftTargetInfoNCE(negatives=
  "simplex")``, i.e. :func:`softnce.separated_infonce` with ``positive_bias``/``negative_bias``).
  For CC labels its optimum is ``f = eta`` up to a constant per row. Only for
  ``continuous-categorical`` (the positives need a density).

The InfoNCE estimators are fitted with Adam on minibatches (see :func:`fit_contrastive`). All
(level, seed) problems of a panel run in one Python loop: each problem's loss is the library's
functional (:func:`softnce.soft_target_infonce` / :func:`softnce.separated_infonce`) mapped over
problems with :func:`torch.func.vmap`, with exactly the candidate sets of the modules
(``tests/test_toy.py`` checks the losses against the modules step by step). The problems stay
independent (Adam is elementwise; every problem has its own permutation and negatives).

Metrics (held-out ``x``; ``C`` centres over classes, since ``W`` is identifiable only up to a
common row)::

    rel_err = ||C V - C s W0||_F / ||C s W0||_F
    kl      = mean_x KL( p(label | x; s W0) || p(label | x; V) )   (the DGP's own label model:
              Categorical for categorical and smoothed, CC for continuous-categorical)
    pred_kl = mean_x KL( E[target | x] || softmax(V x) )            (the library's prediction)

``pred_kl`` matters because soft-target CE is consistent for ``E[target | x]`` (for CC labels the
mean of the CC, not ``softmax(eta)``), while InfoNCE recovers ``eta``: which one is "right"
depends on what the soft labels are supposed to mean.

Outputs (``--out``): ``toy_runs.csv`` (every fit), ``toy_uncertainty.png`` (error against label
uncertainty, one line per estimator, 95% interval bands over seeds), ``toy_sample_size.png``
(error against n at a fixed uncertainty: bias stays flat, variance falls like ``n^-1/2``) and
``toy_summary.md``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from softnce.losses import soft_target_cross_entropy
from softnce.noise import class_prior
from softnce.targets import SoftTargets

COMMAND = "toy"
HELP = "parameter-estimation toy experiment: NLL vs InfoNCE under label uncertainty (paper Fig. 1)"

DGPS = ("categorical", "continuous-categorical", "smoothed")
DGP_TITLES = {
    "categorical": "categorical (hard labels)",
    "continuous-categorical": "continuous categorical (soft labels)",
    "smoothed": "label-smoothed hard labels",
}

__all__ = [
    "APPLICABLE",
    "COMMAND",
    "DGPS",
    "ESTIMATORS",
    "HELP",
    "Estimator",
    "FitSettings",
    "ToyConfig",
    "add_arguments",
    "cc_log_normalizer",
    "cc_mean",
    "conditional_kl",
    "contrastive_step_loss",
    "fit_contrastive",
    "fit_estimator",
    "fit_many",
    "main",
    "make_true_weights",
    "prediction_kl",
    "relative_error",
    "run",
    "run_experiment",
    "sample_categorical",
    "sample_continuous_categorical",
    "smooth_labels",
]


# ============================================================================ distributions
def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; found {value!r}")
    return int(value)


def _check_eta(eta: object, name: str = "eta") -> torch.Tensor:
    if not isinstance(eta, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; found {type(eta).__name__}")
    if not eta.is_floating_point():
        raise TypeError(f"{name} must be floating point; found dtype {eta.dtype}")
    if eta.dim() < 1 or eta.shape[-1] < 2:
        raise ValueError(f"{name} must have shape (..., K) with K >= 2; found shape "
                         f"{tuple(eta.shape)}")
    if not bool(torch.isfinite(eta).all()):
        raise ValueError(f"{name} must be finite; found NaN or infinite entries")
    return eta


def make_true_weights(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Ground-truth ``W0`` (K, d), float64: standard normal entries, centred over classes (each
    column sums to zero), scaled to ``||W0||_F = 1`` so that ``s`` is the norm of ``s W0``."""
    k = _check_positive_int("num_classes", num_classes, 2)
    d = _check_positive_int("dim", dim, 1)
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(k, d, generator=g, dtype=torch.float64)
    w = w - w.mean(dim=0, keepdim=True)
    return w / w.norm()


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """``y_i ~ Categorical(softmax(logits_i))`` for logits (N, K); returns int64 labels (N,)."""
    logits = _check_eta(logits, "logits")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (N, K); found shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.double(), dim=1)
    return torch.multinomial(probs, 1, replacement=True, generator=generator).squeeze(1)


def _truncated_exponential_unit(rate: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF of the density ``rate e^{rate t} / (e^rate - 1)`` on [0, 1] at ``u``:
    ``t = log1p(u expm1(rate)) / rate`` (``t = u`` for ``rate = 0``)."""
    small = rate.abs() < 1e-10
    safe = torch.where(small, torch.ones_like(rate), rate)
    t = torch.log1p(u * torch.expm1(safe)) / safe
    return torch.where(small, u, t).clamp_(0.0, 1.0)


def sample_continuous_categorical(
    eta: torch.Tensor, generator: torch.Generator | None = None, max_rounds: int = 10_000
) -> torch.Tensor:
    r"""Exact samples ``alpha_i ~ CC(eta_i)`` for natural parameters eta (N, K), float64 (N, K).

    Ordered rejection (Gordon-Rodriguez et al. 2020): with ``m = argmax eta_i`` the density in
    the coordinates ``j != m`` is ``prod_j exp((eta_j - eta_m) alpha_j)`` on
    ``{alpha_j >= 0, sum_j alpha_j <= 1}``, a subset of ``[0, 1]^(K-1)``. Draw each ``alpha_j``
    from its truncated exponential on [0, 1] (rate ``<= 0``), accept when the sum is at most 1,
    set ``alpha_m = 1 - sum``. All rows are drawn at once; rejected rows are redrawn.
    """
    eta = _check_eta(eta)
    if eta.dim() != 2:
        raise ValueError(f"eta must have shape (N, K); found shape {tuple(eta.shape)}")
    max_rounds = _check_positive_int("max_rounds", max_rounds)
    eta = eta.double()
    n, _ = eta.shape
    top = eta.argmax(dim=1, keepdim=True)
    rates = eta - eta.gather(1, top)
    out = torch.empty_like(eta)
    pending = torch.arange(n)
    for _ in range(max_rounds):
        if pending.numel() == 0:
            return out
        r = rates[pending]
        u = torch.rand(r.shape, generator=generator, dtype=torch.float64)
        t = _truncated_exponential_unit(r, u)
        t.scatter_(1, top[pending], 0.0)
        total = t.sum(dim=1)
        ok = total <= 1.0
        acc = pending[ok]
        rows = t[ok]
        rows.scatter_(1, top[acc], (1.0 - total[ok]).unsqueeze(1))
        out[acc] = rows
        pending = pending[~ok]
    raise RuntimeError(
        f"sample_continuous_categorical: {pending.numel()} of {n} rows still rejected after "
        f"max_rounds={max_rounds}; the ordered rejection sampler accepts with probability about "
        f"1/(K-1)! when many entries of eta are nearly equal, so it is meant for small K"
    )


def smooth_labels(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Dense label-smoothed targets ``(1 - eps) onehot(y) + eps / K`` (N, K), float64."""
    st = SoftTargets.label_smoothing(labels, num_classes, smoothing, dtype=torch.float64)
    return st.to_dense(torch.float64)


def cc_log_normalizer(eta: torch.Tensor) -> torch.Tensor:
    r"""``log Z(eta)`` of the continuous categorical, eta (..., K) -> (...), float64.

    ``Z(eta) = \int_simplex exp(eta . alpha) d alpha`` (Lebesgue measure on K - 1 coordinates) is
    the divided difference ``exp[eta_1, ..., eta_K]`` (Hermite-Genocchi), i.e. the entry (1, K) of
    ``expm(diag(eta) + N)`` with ``N`` the ones on the superdiagonal. Shifting by ``max eta``
    keeps it finite; ties are handled exactly (e.g. ``Z(0) = 1 / (K-1)!``). Differentiable.
    """
    eta = _check_eta(eta).double()
    k = eta.shape[-1]
    m = eta.max(dim=-1, keepdim=True).values.detach()
    e = eta - m
    ones = torch.ones(*e.shape[:-1], k - 1, dtype=e.dtype, device=e.device)
    mat = torch.diag_embed(e) + torch.diag_embed(ones, offset=1)
    z = torch.linalg.matrix_exp(mat)[..., 0, k - 1]
    return z.log() + m.squeeze(-1)


def cc_mean(eta: torch.Tensor) -> torch.Tensor:
    """``E[alpha]`` under ``CC(eta)`` = ``grad log Z(eta)``, eta (N, K) -> (N, K), float64."""
    with torch.enable_grad():
        e = _check_eta(eta).detach().double().requires_grad_(True)
        (grad,) = torch.autograd.grad(cc_log_normalizer(e).sum(), e)
    return grad


def cc_log_prob(alpha: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """``log p(alpha | eta) = eta . alpha - log Z(eta)`` (density on K - 1 coordinates)."""
    return (alpha.double() * eta.double()).sum(-1) - cc_log_normalizer(eta)


# =============================================================================== metrics
def _centre(w: torch.Tensor) -> torch.Tensor:
    return w - w.mean(dim=0, keepdim=True)


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """``||C V - C W||_F / ||C W||_F`` with ``C`` centring over classes (rows of (K, d))."""
    if estimate.shape != truth.shape:
        raise ValueError(f"estimate must have the shape of truth {tuple(truth.shape)}; found "
                         f"{tuple(estimate.shape)}")
    v, w = _centre(estimate.double()), _centre(truth.double())
    return float((v - w).norm() / w.norm())


def _categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    lp = torch.log_softmax(p_logits.double(), dim=1)
    lq = torch.log_softmax(q_logits.double(), dim=1)
    return (lp.exp() * (lp - lq)).sum(1)


def conditional_kl(dgp: str, eta_true: torch.Tensor, eta_hat: torch.Tensor) -> float:
    r"""Mean over rows of ``KL(p(label | eta_true) || p(label | eta_hat))`` for the DGP's own label
    model: Categorical(softmax) for ``categorical``/``smoothed`` (smoothing is a bijection of the
    hard label), continuous categorical for ``continuous-categorical``::

        KL(CC(a) || CC(b)) = (a - b) . E_a[alpha] - log Z(a) + log Z(b)
    """
    if dgp == "continuous-categorical":
        a, b = eta_true.double(), eta_hat.detach().double()
        kl = ((a - b) * cc_mean(a)).sum(1) - cc_log_normalizer(a) + cc_log_normalizer(b)
        return float(kl.clamp_min(0).mean())
    _check_dgp(dgp)
    return float(_categorical_kl(eta_true, eta_hat.detach()).mean())


def expected_target(dgp: str, eta_true: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """``E[target | x]``: softmax(eta); CC mean; or ``(1 - eps) softmax(eta) + eps / K``."""
    if dgp == "continuous-categorical":
        return cc_mean(eta_true)
    _check_dgp(dgp)
    p = torch.softmax(eta_true.double(), dim=1)
    if dgp == "smoothed":
        p = (1.0 - smoothing) * p + smoothing / p.shape[1]
    return p


def prediction_kl(mean_target: torch.Tensor, eta_hat: torch.Tensor) -> float:
    """Mean ``KL(E[target | x] || softmax(f(x)))``: calibration of the library's prediction."""
    p = mean_target.double().clamp_min(1e-300)
    lq = torch.log_softmax(eta_hat.detach().double(), dim=1)
    return float((p * (p.log() - lq)).sum(1).mean())


def _check_dgp(dgp: str) -> str:
    if dgp not in DGPS:
        raise ValueError(f"dgp must be one of {DGPS}; found {dgp!r}")
    return dgp


# ============================================================================= estimators
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


# ============================================================================ experiment
@dataclass
class ToyConfig:
    """The grid. ``scales`` are the ``s`` of categorical/CC (uncertainty ``1/s``); ``epsilons``
    the smoothing of ``smoothed`` at ``smoothing_scale``; the sample-size sweep runs ``sweep_n``
    at ``sweep_scale`` (categorical, CC) and ``sweep_epsilon`` (smoothed)."""

    dgps: tuple[str, ...] = DGPS
    estimators: tuple[str, ...] | None = None  # None: every applicable one
    seeds: int = 5
    n: int = 20_000
    n_test: int = 4096
    classes: int = 3
    dim: int = 2
    scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    smoothing_scale: float = 4.0
    epsilons: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.4)
    sweep_n: tuple[int, ...] = (1250, 2500, 5000, 10_000, 20_000)
    sweep_scale: float = 4.0
    sweep_epsilon: float = 0.2
    w_seed: int = 0
    fit: FitSettings = field(default_factory=FitSettings)

    def validate(self) -> ToyConfig:
        for d in self.dgps:
            _check_dgp(d)
        if not self.dgps:
            raise ValueError("dgps must name at least one data-generating process")
        if self.estimators is not None:
            for e in self.estimators:
                if e not in ESTIMATORS:
                    raise ValueError(f"estimators must be in {tuple(ESTIMATORS)}; found {e!r}")
        _check_positive_int("seeds", self.seeds, 2)
        _check_positive_int("n", self.n, 2)
        _check_positive_int("n_test", self.n_test)
        _check_positive_int("classes", self.classes, 2)
        _check_positive_int("dim", self.dim)
        for name in ("scales", "epsilons", "sweep_n"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty")
        for s in (*self.scales, self.smoothing_scale, self.sweep_scale):
            if not (s > 0 and math.isfinite(s)):
                raise ValueError(f"scales must be positive and finite; found {s!r}")
        for e in (*self.epsilons, self.sweep_epsilon):
            if not 0 <= e < 1:
                raise ValueError(f"epsilons must lie in [0, 1); found {e!r}")
        for m in self.sweep_n:
            _check_positive_int("sweep_n entries", m, 2)
        self.fit.validate()
        return self

    def estimators_for(self, dgp: str) -> tuple[str, ...]:
        names = APPLICABLE[dgp]
        return names if self.estimators is None else tuple(e for e in names
                                                           if e in self.estimators)

    def levels(self, dgp: str) -> list[tuple[float, float]]:
        """(s, eps) pairs of the uncertainty axis of ``dgp``."""
        if dgp == "smoothed":
            return [(self.smoothing_scale, e) for e in self.epsilons]
        return [(s, 0.0) for s in self.scales]

    def sweep_level(self, dgp: str) -> tuple[float, float]:
        return (self.smoothing_scale, self.sweep_epsilon) if dgp == "smoothed" \
            else (self.sweep_scale, 0.0)


def quick_config() -> ToyConfig:
    """The ``--quick`` grid: a smoke test of the whole pipeline, not a measurement."""
    return ToyConfig(seeds=2, n=1500, n_test=512, scales=(1.0, 4.0), epsilons=(0.0, 0.2),
                     sweep_n=(500, 1500),
                     fit=FitSettings(epochs=3, min_steps=30, batch_size=128, queue_size=256,
                                     num_negatives=64, lbfgs_max_iter=100))


def uncertainty(dgp: str, scale: float, eps: float) -> float:
    return eps if dgp == "smoothed" else 1.0 / scale


def _generator(*keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(keys).encode()))


@dataclass
class _Data:
    x: torch.Tensor
    hard: torch.Tensor
    soft: torch.Tensor


def generate(dgp: str, w0: torch.Tensor, scale: float, eps: float, n: int, seed: int) -> _Data:
    """Training data of one cell. The same seed gives the same ``x`` and the same uniform draws
    for every ``s`` (common random numbers), so curves over ``s`` are paired."""
    _check_dgp(dgp)
    k, d = w0.shape
    x = torch.randn(n, d, generator=_generator("x", seed, n), dtype=torch.float64)
    eta = scale * x @ w0.T
    g = _generator("labels", dgp, seed, n)
    if dgp == "continuous-categorical":
        soft = sample_continuous_categorical(eta, g)
        hard = torch.multinomial(soft.clamp_min(0), 1, generator=g).squeeze(1)
        return _Data(x, hard, soft)
    hard = sample_categorical(eta, g)
    return _Data(x, hard, smooth_labels(hard, k, eps))


@dataclass
class _Truth:
    x: torch.Tensor
    eta: torch.Tensor
    mean_target: torch.Tensor


FIELDS = ("phase", "dgp", "estimator", "scale", "epsilon", "uncertainty", "n", "seed", "rel_err",
          "kl", "pred_kl", "steps", "fit_seconds")


def _print(msg: str) -> None:
    print(msg, flush=True)


def run_experiment(config: ToyConfig, out: Path | None = None,
                   log: Callable[[str], None] = _print) -> list[dict]:
    """Run the grid and the sample-size sweep; returns one dict per fit (and writes
    ``toy_runs.csv`` into ``out`` when given).

    Work is grouped by (phase, DGP, n): all (level, seed) problems of a group are fitted together
    (:func:`fit_many`); ``fit_seconds`` is the group's time for the estimator divided by its
    number of problems. A sweep point that is also a grid point reuses the grid's fits.
    """
    config.validate()
    w0 = make_true_weights(config.classes, config.dim, config.w_seed)
    rows: list[dict] = []
    cache: dict[tuple, dict] = {}
    groups: list[tuple[str, str, int, list[tuple[float, float]]]] = []
    for dgp in config.dgps:
        groups.append(("grid", dgp, config.n, config.levels(dgp)))
    for dgp in config.dgps:
        for m in config.sweep_n:
            groups.append(("sweep", dgp, m, [config.sweep_level(dgp)]))
    t_start = time.perf_counter()
    truths: dict[tuple, _Truth] = {}
    for gi, (phase, dgp, n, levels) in enumerate(groups):
        names = config.estimators_for(dgp)
        problems = [(scale, eps, seed) for scale, eps in levels for seed in range(config.seeds)]
        t_group = time.perf_counter()
        todo = [pr for pr in problems
                if any((dgp, *pr[:2], n, pr[2], e) not in cache for e in names)]
        if todo:
            data = [generate(dgp, w0, scale, eps, n, seed) for scale, eps, seed in todo]
            xs = torch.stack([dd.x for dd in data])
            hs = torch.stack([dd.hard for dd in data])
            ss = torch.stack([dd.soft for dd in data])
        for name in names:
            if not todo:
                break
            t0 = time.perf_counter()
            fit_seed = zlib.crc32(repr(("fit", phase, dgp, n, name)).encode())
            vs, steps = fit_many(ESTIMATORS[name], xs, hs, ss, config.fit, fit_seed)
            dt = (time.perf_counter() - t0) / len(todo)
            for (scale, eps, seed), v in zip(todo, vs):
                tkey = (dgp, scale, eps, seed)
                if tkey not in truths:
                    x_test = torch.randn(config.n_test, config.dim, dtype=torch.float64,
                                         generator=_generator("test", seed))
                    eta = scale * x_test @ w0.T
                    truths[tkey] = _Truth(x_test, eta, expected_target(dgp, eta, eps))
                truth = truths[tkey]
                f_test = truth.x @ v.T
                cache[(dgp, scale, eps, n, seed, name)] = {
                    "rel_err": relative_error(v, scale * w0),
                    "kl": conditional_kl(dgp, truth.eta, f_test),
                    "pred_kl": prediction_kl(truth.mean_target, f_test),
                    "steps": steps,
                    "fit_seconds": round(dt, 4),
                }
        for scale, eps, seed in problems:
            for name in names:
                rows.append({"phase": phase, "dgp": dgp, "estimator": name, "scale": scale,
                             "epsilon": eps, "uncertainty": uncertainty(dgp, scale, eps),
                             "n": n, "seed": seed, **cache[(dgp, scale, eps, n, seed, name)]})
        log(f"[{gi + 1}/{len(groups)}] {phase} {dgp} n={n}: {len(todo)} problems x "
            f"{len(names)} estimators in {time.perf_counter() - t_group:.1f}s "
            f"(total {time.perf_counter() - t_start:.0f}s)")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "toy_runs.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return rows


# ============================================================================== analysis
def _t975(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom (scipy ships with
    scikit-learn, a core dependency)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval ``mean -+ t_{0.975, S-1} sd / sqrt(S)`` over seeds."""
    vals = [float(v) for v in values]
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    h = _t975(len(vals) - 1) * sd / math.sqrt(len(vals))
    return m, m - h, m + h


def aggregate(rows: Sequence[dict], phase: str, metric: str = "rel_err"
              ) -> dict[tuple[str, str, float], tuple[float, float, float]]:
    """``(dgp, estimator, x) -> (mean, lo, hi)`` over seeds; ``x`` is the label uncertainty for
    ``phase="grid"`` and ``n`` for ``phase="sweep"``."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for r in rows:
        if r["phase"] != phase:
            continue
        x = float(r["uncertainty"]) if phase == "grid" else float(r["n"])
        groups.setdefault((r["dgp"], r["estimator"], x), []).append(float(r[metric]))
    return {k: mean_interval(v) for k, v in groups.items()}


def claim_verdicts(rows: Sequence[dict], metric: str = "rel_err") -> list[dict]:
    """Test "NLL's error grows with label uncertainty faster than InfoNCE's" per DGP.

    Growth of an estimator on one seed: ``err(highest uncertainty) - err(lowest uncertainty)``.
    For each NLL reference R and InfoNCE estimator X, with 95% t-intervals over seeds of
    ``growth(R)`` and of the paired difference ``D = growth(R) - growth(X)``:

    * ``holds``: R's error grows (interval above 0) and faster than X's (D's interval above 0);
    * ``reversed``: X's error grows faster (D's interval below 0);
    * ``no growth``: R's error does not grow with uncertainty (interval not above 0), so the
      statement fails as worded, whatever the difference;
    * ``inconclusive``: otherwise.
    """
    grid = [r for r in rows if r["phase"] == "grid"]
    out = []
    for dgp in DGPS:
        sub = [r for r in grid if r["dgp"] == dgp]
        if not sub:
            continue
        us = sorted({float(r["uncertainty"]) for r in sub})
        if len(us) < 2:
            continue
        lo_u, hi_u = us[0], us[-1]
        err: dict[tuple[str, int, float], float] = {
            (r["estimator"], int(r["seed"]), float(r["uncertainty"])): float(r[metric])
            for r in sub}
        present = sorted({r["estimator"] for r in sub}, key=list(ESTIMATORS).index)
        seeds = sorted({int(r["seed"]) for r in sub})

        def growth(e: str, seed: int, err: dict = err, lo_u: float = lo_u,
                   hi_u: float = hi_u) -> float:
            return err[(e, seed, hi_u)] - err[(e, seed, lo_u)]

        for ref in NLL_REFERENCES[dgp]:
            if ref not in present:
                continue
            for x in present:
                if "infonce" not in x:
                    continue
                ok = [s for s in seeds if all((e, s, u) in err for e in (ref, x)
                                              for u in (lo_u, hi_u))]
                if len(ok) < 2:
                    continue
                g_ref = mean_interval([growth(ref, s) for s in ok])
                g_x = mean_interval([growth(x, s) for s in ok])
                d = mean_interval([growth(ref, s) - growth(x, s) for s in ok])
                if d[2] < 0:
                    verdict = "reversed"
                elif not g_ref[1] > 0:
                    verdict = "no growth"
                elif d[1] > 0:
                    verdict = "holds"
                else:
                    verdict = "inconclusive"
                out.append({"dgp": dgp, "reference": ref, "estimator": x, "u_low": lo_u,
                            "u_high": hi_u, "growth_reference": g_ref, "growth_estimator": g_x,
                            "difference": d, "verdict": verdict, "seeds": len(ok)})
    return out


def sweep_slopes(rows: Sequence[dict]) -> dict[tuple[str, str], float]:
    """Log-log slope of the mean relative error between the smallest and the largest ``n`` of the
    sweep: about -0.5 when the error is variance (``n^-1/2``), about 0 when it is bias."""
    agg = aggregate(rows, "sweep")
    by: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for (dgp, est, n), (m, _, _) in agg.items():
        by.setdefault((dgp, est), []).append((n, m))
    out = {}
    for key, pts in by.items():
        pts.sort()
        (n0, e0), (n1, e1) = pts[0], pts[-1]
        if n1 > n0 and e0 > 0 and e1 > 0:
            out[key] = math.log(e1 / e0) / math.log(n1 / n0)
    return out


# ================================================================================= plots
_STYLE = {
    "nll": ("black", "-", "o"),
    "soft-ce": ("0.5", "-", "s"),
    "infonce-batch": ("tab:blue", "--", "v"),
    "infonce-queue": ("tab:cyan", "--", "^"),
    "infonce-sampled": ("tab:purple", "--", "<"),
    "soft-infonce-batch": ("tab:blue", "-", "v"),
    "soft-infonce-queue": ("tab:cyan", "-", "^"),
    "soft-infonce-sampled": ("tab:purple", "-", "<"),
    "soft-infonce-simplex": ("tab:red", "-", "D"),
}


def _axis_label(dgp: str, config: ToyConfig) -> str:
    if dgp == "smoothed":
        return f"label smoothing eps (s = {config.smoothing_scale:g})"
    return "label uncertainty 1/s"


def _plot_panels(rows: Sequence[dict], config: ToyConfig, phase: str, metrics: Sequence[str],
                 path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dgps = [d for d in config.dgps if any(r["dgp"] == d and r["phase"] == phase for r in rows)]
    if not dgps:
        return
    fig, axes = plt.subplots(len(metrics), len(dgps), figsize=(4.3 * len(dgps),
                                                               2.9 * len(metrics) + 1.3),
                             squeeze=False)
    ylabels = {"rel_err": "relative error of centred W", "kl": "KL(true || estimated)",
               "pred_kl": "KL(E[target] || softmax f)"}
    for j, dgp in enumerate(dgps):
        for i, metric in enumerate(metrics):
            ax = axes[i][j]
            agg = aggregate(rows, phase, metric)
            lo_lim, hi_lim = math.inf, 0.0
            all_x: set[float] = set()
            for est in config.estimators_for(dgp):
                pts = sorted((x, v) for (d, e, x), v in agg.items() if d == dgp and e == est)
                if not pts:
                    continue
                xs = [p[0] for p in pts]
                all_x.update(xs)
                m = [p[1][0] for p in pts]
                lo = [max(p[1][1], 1e-12) for p in pts]
                hi = [p[1][2] for p in pts]
                lo_lim = min(lo_lim, *(v for v in m if v > 0))
                hi_lim = max(hi_lim, *(v for v in hi if math.isfinite(v)), *m)
                color, ls, marker = _STYLE[est]
                ax.plot(xs, m, color=color, ls=ls, marker=marker, ms=4, lw=1.4,
                        label=ESTIMATORS[est].label)
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
            ax.set_yscale("log")
            if math.isfinite(lo_lim) and hi_lim > 0:  # wide bands are clipped, not the means
                ax.set_ylim(lo_lim / 3, hi_lim * 1.5)
            if phase == "sweep" or dgp != "smoothed":
                ax.set_xscale("log", base=2)
                ax.set_xticks(sorted(all_x))
                ax.set_xticklabels([f"{x:g}" for x in sorted(all_x)])
                ax.minorticks_off()
            if phase == "sweep":
                s, eps = config.sweep_level(dgp)
                ax.set_xlabel("training set size n" + (f" (eps = {eps:g}, s = {s:g})"
                                                        if dgp == "smoothed" else f" (s = {s:g})"))
            else:
                ax.set_xlabel(_axis_label(dgp, config))
            if i == 0:
                ax.set_title(DGP_TITLES[dgp], fontsize=10)
            if j == 0:
                ax.set_ylabel(ylabels[metric])
            ax.grid(True, which="both", alpha=0.3)
            ax.tick_params(labelsize=8)
            if i == len(metrics) - 1:  # one legend per column, below the panels
                ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                          frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_uncertainty(rows: Sequence[dict], config: ToyConfig, path: Path) -> None:
    """The Figure-1-style plot: error against label uncertainty, 95% bands over seeds."""
    _plot_panels(rows, config, "grid", ("rel_err", "kl", "pred_kl"), path,
                 f"Linear model, K={config.classes}, d={config.dim}, n={config.n}, "
                 f"{config.seeds} seeds (mean, 95% interval)")


def plot_sample_size(rows: Sequence[dict], config: ToyConfig, path: Path) -> None:
    """Error against n at a fixed uncertainty: bias is flat, variance falls like n^-1/2."""
    _plot_panels(rows, config, "sweep", ("rel_err",), path,
                 f"Error against sample size, {config.seeds} seeds (mean, 95% interval)")


# =============================================================================== summary
def _md_table(title: str, values: dict, fmt, dgp: str, names: list[str], xs: list[float],
              xname: str) -> list[str]:
    """One markdown table of a per-(dgp, estimator, level) aggregate, estimators as rows."""
    out = ["", title, "",
           "| estimator | " + " | ".join(f"{xname} = {x:g}" for x in xs) + " |",
           "|---|" + "---|" * len(xs)]
    for e in names:
        out.append(f"| {e} | " + " | ".join(
            fmt(values[(dgp, e, x)]) if (dgp, e, x) in values else "-" for x in xs) + " |")
    return out


def _fmt(m: tuple[float, float, float], pct: bool = True) -> str:
    if pct:
        return f"{100 * m[0]:.1f} [{100 * m[1]:.1f}, {100 * m[2]:.1f}]"
    return f"{m[0]:.3g} [{m[1]:.3g}, {m[2]:.3g}]"


def _fit_time(rows: Sequence[dict]) -> float:
    seen = {}
    for r in rows:
        key = (r["dgp"], r["scale"], r["epsilon"], r["n"], r["seed"], r["estimator"])
        seen[key] = float(r["fit_seconds"])
    return sum(seen.values())


def summary_markdown(rows: Sequence[dict], config: ToyConfig, seconds: float | None,
                     command: str) -> str:
    """The markdown summary: settings, error tables, the claim per DGP, the n-sweep slopes."""
    f = config.fit
    lines = [
        "# softnce toy: parameter estimation under label uncertainty",
        "",
        f"Command: `{command}` ("
        + (f"{seconds:.0f} s wall time, " if seconds is not None else "redrawn from a CSV, ")
        + f"{len(rows)} rows; the distinct fits took {_fit_time(rows):.0f} s).",
        "",
        f"Settings: K = {config.classes}, d = {config.dim}, x ~ N(0, I), eta = s W0 x with "
        f"||W0||_F = 1 (seed {config.w_seed}); n = {config.n} training and {config.n_test} "
        f"held-out points; {config.seeds} seeds (mean and 95% t-interval). NLL and soft-target CE: "
        f"full-batch L-BFGS (float64). InfoNCE variants: Adam from V = 0, batch {f.batch_size}, "
        f"max({f.min_steps}, {f.epochs} epochs) steps, lr {f.lr:g} for the first half and "
        f"{f.lr * f.tail_factor:g} for the second half, whose iterates are averaged; queue "
        f"{f.queue_size}; {f.num_negatives} "
        f"sampled negatives per step (one-hot from the class prior, or Dirichlet("
        f"{f.simplex_concentration:g}) on the simplex); noise q = class prior of the targets.",
        "",
    ]
    agg = aggregate(rows, "grid")
    agg_kl = aggregate(rows, "grid", "kl")
    agg_pk = aggregate(rows, "grid", "pred_kl")
    verdicts = claim_verdicts(rows)
    for dgp in config.dgps:
        names = [e for e in config.estimators_for(dgp)
                 if any(k[0] == dgp and k[1] == e for k in agg)]
        if not names:
            continue
        xs = sorted({k[2] for k in agg if k[0] == dgp})
        xname = "eps" if dgp == "smoothed" else "1/s"
        def mean3(v: tuple) -> str:
            return f"{v[0]:.3g}"

        lines += [f"## {DGP_TITLES[dgp]}"]
        for title, values, fmt in (
            ("Relative error of the centred W in % (mean [95% interval]):", agg, _fmt),
            ("Mean KL(true || estimated) of the label model on held-out x:", agg_kl, mean3),
            ("Mean KL(E[target | x] || softmax(V x)) on held-out x (the prediction):", agg_pk,
             mean3),
        ):
            lines += _md_table(title, values, fmt, dgp, names, xs, xname)
        vs = [v for v in verdicts if v["dgp"] == dgp]
        if vs:
            lines += ["", f"Claim \"NLL's error grows with label uncertainty faster than "
                      f"InfoNCE's\" (growth = error at {xname} = {vs[0]['u_high']:g} minus error "
                      f"at {xname} = {vs[0]['u_low']:g}, in % points; paired over seeds):", "",
                      "| NLL side | InfoNCE side | NLL growth | InfoNCE growth | difference | "
                      "verdict |", "|---|---|---|---|---|---|"]
            for v in vs:
                lines.append(f"| {v['reference']} | {v['estimator']} | "
                             f"{_fmt(v['growth_reference'])} | {_fmt(v['growth_estimator'])} | "
                             f"{_fmt(v['difference'])} | **{v['verdict']}** |")
        lines.append("")
    slopes = sweep_slopes(rows)
    agg_s = aggregate(rows, "sweep")
    if agg_s:
        lines += ["## Error against sample size (bias vs variance)", "",
                  "Relative error in % at each n; slope = d log(error) / d log(n) between the "
                  "smallest and the largest n (-0.5: variance-dominated, 0: bias-dominated).", ""]
        for dgp in config.dgps:
            ns = sorted({k[2] for k in agg_s if k[0] == dgp})
            if not ns:
                continue
            s, eps = config.sweep_level(dgp)
            where = f"eps = {eps:g}, s = {s:g}" if dgp == "smoothed" else f"s = {s:g}"
            lines += [f"### {DGP_TITLES[dgp]} ({where})", "",
                      "| estimator | " + " | ".join(f"n = {int(n)}" for n in ns) + " | slope |",
                      "|---|" + "---|" * (len(ns) + 1)]
            for e in config.estimators_for(dgp):
                if (dgp, e, ns[0]) not in agg_s:
                    continue
                cells = [f"{100 * agg_s[(dgp, e, n)][0]:.1f}" if (dgp, e, n) in agg_s else "-"
                         for n in ns]
                sl = slopes.get((dgp, e))
                lines.append(f"| {e} | " + " | ".join(cells) +
                             f" | {'-' if sl is None else f'{sl:.2f}'} |")
            lines.append("")
    return "\n".join(lines)


# =================================================================================== CLI
def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; found {text!r}") \
            from err


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; found {text!r}") \
            from err


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``softnce toy`` options to ``parser`` (used by the harness CLI)."""
    d = ToyConfig()
    f = d.fit
    parser.add_argument("--quick", action="store_true",
                        help="tiny grid (2 seeds, n=1500, 2 levels): a smoke test in seconds")
    parser.add_argument("--out", type=Path, default=Path("outputs/toy"),
                        help="output folder for toy_runs.csv, the PNGs and toy_summary.md "
                             "(default: outputs/toy)")
    parser.add_argument("--dgp", nargs="+", choices=DGPS, default=None,
                        help="data-generating processes (default: all)")
    parser.add_argument("--estimators", nargs="+", choices=tuple(ESTIMATORS), default=None,
                        help="estimators (default: every one applicable to each DGP)")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds (default {d.seeds})")
    parser.add_argument("--n", type=int, default=None, help=f"training size (default {d.n})")
    parser.add_argument("--n-test", type=int, default=None,
                        help=f"held-out x for the KL metrics (default {d.n_test})")
    parser.add_argument("--classes", type=int, default=None, help=f"K (default {d.classes})")
    parser.add_argument("--dim", type=int, default=None, help=f"d (default {d.dim})")
    parser.add_argument("--scales", type=_floats, default=None,
                        help="s values for categorical and CC, comma-separated (default "
                             + ",".join(f"{s:g}" for s in d.scales) + ")")
    parser.add_argument("--epsilons", type=_floats, default=None,
                        help="smoothing values for `smoothed` (default "
                             + ",".join(f"{e:g}" for e in d.epsilons) + ")")
    parser.add_argument("--smoothing-scale", type=float, default=None,
                        help=f"s of `smoothed` (default {d.smoothing_scale:g})")
    parser.add_argument("--sweep-n", type=_ints, default=None,
                        help="sample sizes of the sweep (default "
                             + ",".join(str(m) for m in d.sweep_n) + ")")
    parser.add_argument("--sweep-scale", type=float, default=None,
                        help=f"s of the sweep for categorical and CC (default {d.sweep_scale:g})")
    parser.add_argument("--sweep-epsilon", type=float, default=None,
                        help=f"eps of the sweep for `smoothed` (default {d.sweep_epsilon:g})")
    parser.add_argument("--w-seed", type=int, default=None, help="seed of W0 (default 0)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"Adam epochs of the InfoNCE fits (default {f.epochs})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"minibatch size (default {f.batch_size})")
    parser.add_argument("--lr", type=float, default=None, help=f"Adam peak lr (default {f.lr:g})")
    parser.add_argument("--queue-size", type=int, default=None,
                        help=f"queue length (default {f.queue_size})")
    parser.add_argument("--num-negatives", type=int, default=None,
                        help=f"sampled negatives per step (default {f.num_negatives})")
    parser.add_argument("--simplex-concentration", type=float, default=None,
                        help="Dirichlet concentration of the simplex negatives (default 1: "
                             "uniform)")
    parser.add_argument("--replot", type=Path, default=None, metavar="CSV",
                        help="skip the fits: redraw the figures and the summary from a "
                             "toy_runs.csv of an earlier run with the same grid options")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the fits are tiny)")


def config_from_args(args: argparse.Namespace) -> ToyConfig:
    """The grid described by parsed ``softnce toy`` arguments (``--quick`` as the base)."""
    cfg = quick_config() if args.quick else ToyConfig()
    fit_keys = ("epochs", "batch_size", "lr", "queue_size", "num_negatives",
                "simplex_concentration")
    fit = replace(cfg.fit, **{k: getattr(args, k) for k in fit_keys
                              if getattr(args, k) is not None})
    over = {k: getattr(args, k) for k in ("seeds", "n", "n_test", "classes", "dim", "scales",
                                          "epsilons", "smoothing_scale", "sweep_n",
                                          "sweep_scale", "sweep_epsilon", "w_seed")
            if getattr(args, k) is not None}
    if args.dgp is not None:
        over["dgps"] = tuple(dict.fromkeys(args.dgp))
    if args.estimators is not None:
        over["estimators"] = tuple(dict.fromkeys(args.estimators))
    return replace(cfg, fit=fit, **over).validate()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run ``softnce toy`` for parsed arguments; returns the exit code."""
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as err:
        print(f"softnce toy: error: {err}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(_check_positive_int("threads", args.threads))
    out: Path = args.out
    command = getattr(args, "_command", None)  # set by main()
    if command is None:  # the softnce CLI keeps its argv (starting with "toy") in args.argv
        argv = getattr(args, "argv", None)
        command = "softnce " + " ".join(argv if isinstance(argv, list) else sys.argv[1:])
    t0 = time.perf_counter()
    if args.replot is not None:
        try:
            rows = read_runs(args.replot)
        except (OSError, KeyError, ValueError) as err:
            print(f"softnce toy: error: cannot read --replot {args.replot}: {err}",
                  file=sys.stderr)
            return 2
        out.mkdir(parents=True, exist_ok=True)
    else:
        rows = run_experiment(config, out)
    plot_uncertainty(rows, config, out / "toy_uncertainty.png")
    plot_sample_size(rows, config, out / "toy_sample_size.png")
    wall = None if args.replot is not None else time.perf_counter() - t0
    text = summary_markdown(rows, config, wall, command.strip())
    (out / "toy_summary.md").write_text(text + "\n")
    print(f"wrote {out / 'toy_uncertainty.png'}, {out / 'toy_sample_size.png'}, "
          f"{out / 'toy_summary.md'}" + ("" if args.replot is not None else
                                         f", {out / 'toy_runs.csv'}")
          + f" ({time.perf_counter() - t0:.0f} s)")
    return 0


def read_runs(path: Path) -> list[dict]:
    """Rows of a ``toy_runs.csv`` with their numeric fields parsed."""
    ints, strs = ("n", "seed", "steps"), ("phase", "dgp", "estimator")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError("no rows")
    return [{k: (r[k] if k in strs else int(r[k]) if k in ints else float(r[k])) for k in FIELDS}
            for r in rows]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softnce toy", description=HELP)
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m softnce.experiments.toy [options]`` (or ``softnce toy`` via the CLI)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._command = " ".join(["python -m softnce.experiments.toy", *argv])
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
