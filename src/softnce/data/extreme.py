r"""``extreme-synthetic``: a Gaussian class-prototype data set with 10^3..10^6 classes, generated
lazily so that it costs almost no memory.

Model (the same family as ``synthetic``, with C in the hundreds of thousands)::

    mu_c ~ N(0, separation^2 I / dim)              class prototypes, c = 0..C-1
    y    ~ pi,  pi_c  propto  imbalance^(-c / (C - 1))   (balanced for imbalance = 1)
    x | y ~ N(mu_y, sigma^2 I)

so the Bayes posterior is ``p(y=c | x) = softmax_c(mu_c . x / sigma^2 - ||mu_c||^2 / (2 sigma^2)
+ log pi_c)`` -- a *linear* function of x, which the ``head-only`` model (the default) can
represent exactly. ``sigma`` is the label-uncertainty knob: larger sigma, more overlapping
classes, lower Bayes accuracy.

Nothing of size C x dim or N x dim is stored: every number is a deterministic function of
``(seed, stream, row, column)`` (a SplitMix64 hash turned into normals by Box-Muller), computed
when a batch is requested. A batch of B samples costs O(B dim); the data set holds only the
labels (N int64). The same ``seed`` always gives the same data, independent of ``--seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from softnce.data import DATASETS, DataBundle, DataError

__all__ = ["ExtremeGaussian", "hash_normal", "build_extreme_synthetic"]

_TRUTH_LIMIT = 20_000_000  # store val_true_probs (N_val x C) only up to this many entries
_STREAM_PROTOTYPES, _STREAM_TRAIN, _STREAM_VAL, _STREAM_LABELS = 1, 2, 3, 4


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash_bits(seed: int, stream: int, rows: np.ndarray, width: int) -> np.ndarray:
    """uint64 hash of ``(seed, stream, row, col)`` for each row and ``col < width``: (R, width)."""
    key = _splitmix64(np.array([(seed * 16 + stream) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        ctr = rows.astype(np.uint64)[:, None] * np.uint64(width) + \
            np.arange(width, dtype=np.uint64)[None, :]
        return _splitmix64(_splitmix64(ctr ^ key) + key)


def hash_uniform(seed: int, stream: int, rows: np.ndarray) -> np.ndarray:
    """One uniform number in (0, 1) per row, a deterministic function of ``(seed, stream, row)``."""
    bits = _hash_bits(seed, stream, np.asarray(rows), 1)[:, 0]
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def hash_normal(seed: int, stream: int, rows: np.ndarray, width: int) -> np.ndarray:
    """Standard normals (R, width), a deterministic function of ``(seed, stream, row, col)``.

    Box-Muller on two 26-bit uniforms taken from one 64-bit hash per entry.
    """
    bits = _hash_bits(seed, stream, np.asarray(rows), width)
    u1 = ((bits >> np.uint64(38)).astype(np.float64) + 0.5) / float(2**26)
    u2 = (((bits >> np.uint64(12)) & np.uint64(0x3FFFFFF)).astype(np.float64) + 0.5) / float(2**26)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _class_prior(num_classes: int, imbalance: float) -> np.ndarray:
    pi = imbalance ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    return pi / pi.sum()


class ExtremeGaussian(Dataset):
    """Lazily generated split of the ``extreme-synthetic`` model; items are ``(x (dim,), y)``.

    ``__getitems__`` (used by ``DataLoader`` for whole batches) generates a batch in one
    vectorised call. ``prototypes(classes)`` gives ``mu_c`` for any class ids.
    """

    def __init__(self, labels: torch.Tensor, dim: int, sigma: float, separation: float,
                 seed: int, stream: int) -> None:
        self.labels = labels
        self.dim = dim
        self.sigma = sigma
        self.scale = separation / np.sqrt(dim)
        self.seed = seed
        self.stream = stream

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def prototypes(self, classes: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``mu_c`` for the given class ids: (len(classes), dim) float32."""
        rows = np.asarray(classes, dtype=np.int64)
        mu = self.scale * hash_normal(self.seed, _STREAM_PROTOTYPES, rows, self.dim)
        return torch.from_numpy(mu.astype(np.float32))

    def batch(self, indices: np.ndarray | torch.Tensor | list[int]) -> tuple[torch.Tensor, ...]:
        """``(x (B, dim) float32, y (B,) int64)`` for sample indices."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a split of {n} samples")
        idx = np.where(idx < 0, idx + n, idx)
        y = self.labels[torch.from_numpy(idx)]
        mu = self.scale * hash_normal(self.seed, _STREAM_PROTOTYPES, y.numpy(), self.dim)
        eps = hash_normal(self.seed, self.stream, idx, self.dim)
        x = torch.from_numpy((mu + self.sigma * eps).astype(np.float32))
        return x, y

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch([int(index)])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.batch(indices)
        return list(zip(x.unbind(0), y.unbind(0)))

    def true_probs(self, log_prior: np.ndarray | torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Bayes posterior ``p(y=c | x_i)`` (len, C) float32 of every sample of this split, with
        ``log_prior`` = ``log pi`` (C,): ``softmax_c(mu_c . x / sigma^2 - ||mu_c||^2 /
        (2 sigma^2) + log pi_c)``. Memory O(len x C): for small C only."""
        log_pi = torch.as_tensor(np.asarray(log_prior), dtype=torch.float64)
        c = log_pi.shape[0]
        x, _ = self.batch(np.arange(len(self)))
        x64 = x.double()
        logits = torch.empty(len(self), c, dtype=torch.float64)
        s2 = self.sigma**2
        for c0 in range(0, c, chunk):
            c1 = min(c, c0 + chunk)
            mu = self.prototypes(np.arange(c0, c1)).double()
            logits[:, c0:c1] = (x64 @ mu.T) / s2 - (mu * mu).sum(1) / (2 * s2)
        logits += log_pi
        return torch.softmax(logits, dim=1).float()


def _options(cfg: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    from softnce.registry import merge_options

    return merge_options("dataset_options", "dataset 'extreme-synthetic'", cfg.dataset_options,
                         defaults, DataError)


def _num(name: str, value: Any, lo: float, integer: bool = False, open_lo: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value > lo if open_lo else value >= lo
    if not ok:
        kind = "an integer" if integer else "a number"
        rel = ">" if open_lo else ">="
        raise DataError(f"dataset_options {name} must be {kind} {rel} {lo}; found {value!r}")
    return int(value) if integer else float(value)


def make_labels(n: int, num_classes: int, imbalance: float, seed: int, stream: int,
                balanced_cycle: bool) -> torch.Tensor:
    """Labels for ``n`` samples: ``i mod C`` (every class equally often) when
    ``balanced_cycle`` and ``imbalance == 1``, else i.i.d. draws from ``pi`` by inverse CDF of
    hashed uniforms."""
    if balanced_cycle and imbalance == 1.0:
        return torch.arange(n, dtype=torch.long) % num_classes
    cdf = np.cumsum(_class_prior(num_classes, imbalance))
    u = hash_uniform(seed, _STREAM_LABELS * 8 + stream, np.arange(n))
    y = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), num_classes - 1)
    return torch.from_numpy(y.astype(np.int64))


@DATASETS.register("extreme-synthetic",
                   help="Gaussian class prototypes, 10^3..10^6 classes, generated lazily "
                        "(--num-classes; default model head-only)")
def build_extreme_synthetic(cfg: Any) -> DataBundle:
    """Options (``dataset_options``): ``dim`` (64), ``n_train`` (10 x C), ``n_val``
    (min(5000, 2 C)), ``sigma`` (0.2; label uncertainty), ``separation`` (1.0; ``E||mu||^2``
    = separation^2), ``imbalance`` (1.0 = balanced; ``max pi / min pi``), ``seed`` (0; the data
    do not follow the training seed). ``--num-classes`` sets C (default 100000)."""
    o = _options(cfg, {"dim": 64, "n_train": None, "n_val": None, "sigma": 0.2,
                       "separation": 1.0, "imbalance": 1.0, "seed": 0})
    c = cfg.num_classes if cfg.num_classes is not None else 100_000
    if isinstance(c, bool) or not isinstance(c, int) or c < 2:
        raise DataError(f"num_classes must be an int >= 2 for 'extreme-synthetic'; found {c!r}")
    dim = _num("dim", o["dim"], 1, integer=True)
    n_train = _num("n_train", o["n_train"] if o["n_train"] is not None else 10 * c, 1,
                   integer=True)
    n_val = _num("n_val", o["n_val"] if o["n_val"] is not None else min(5000, 2 * c), 1,
                 integer=True)
    sigma = _num("sigma", o["sigma"], 0.0, open_lo=True)
    separation = _num("separation", o["separation"], 0.0)
    imbalance = _num("imbalance", o["imbalance"], 1.0)
    seed = _num("seed", o["seed"], 0, integer=True)
    y_train = make_labels(n_train, c, imbalance, seed, _STREAM_TRAIN, balanced_cycle=True)
    y_val = make_labels(n_val, c, imbalance, seed, _STREAM_VAL, balanced_cycle=False)
    train = ExtremeGaussian(y_train, dim, sigma, separation, seed, _STREAM_TRAIN)
    val = ExtremeGaussian(y_val, dim, sigma, separation, seed, _STREAM_VAL)
    pi = _class_prior(c, imbalance)
    truth = None
    if n_val * c <= _TRUTH_LIMIT:
        truth = val.true_probs(np.log(pi))
    return DataBundle(
        name="extreme-synthetic", kind="tabular", train=train, val=val, num_classes=c,
        input_shape=(dim,), train_labels=y_train, default_model="head-only",
        val_true_probs=truth,
        extra={"class_prior": torch.from_numpy(pi.astype(np.float32)), "sigma": sigma,
               "separation": separation, "seed": seed},
    )
