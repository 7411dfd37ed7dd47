"""Data-generating processes of ``softnce toy`` with known parameters: the ground truth ``W0``,
exact samplers (categorical, the continuous categorical's ordered rejection sampler, label
smoothing), the continuous categorical's normaliser and mean, one cell's training data
(:func:`generate`) and the error metrics against the truth (see :mod:`softnce.experiments.toy`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from softnce.targets import SoftTargets

__all__ = [
    "DGPS", "DGP_TITLES", "cc_log_normalizer", "cc_mean", "conditional_kl", "expected_target",
    "generate", "make_true_weights", "prediction_kl", "relative_error", "sample_categorical",
    "sample_continuous_categorical", "smooth_labels", "uncertainty",
]

DGPS = ("categorical", "continuous-categorical", "smoothed")
DGP_TITLES = {
    "categorical": "categorical (hard labels)",
    "continuous-categorical": "continuous categorical (soft labels)",
    "smoothed": "label-smoothed hard labels",
}


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



# ================================================================================ metrics
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

