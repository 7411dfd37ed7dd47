"""Sparse soft targets: one-hot, label smoothing, MixUp/CutMix mixes (torch only).

A :class:`SoftTargets` batch stores, for each row ``j``, ``k`` class indices with weights plus a
uniform mass::

    y_j = sum_r weights[j, r] * onehot(indices[j, r]) + uniform[j] / C

Label smoothing is ``k = 1`` (weight ``1 - eps``, uniform ``eps``); a MixUp/CutMix mix of two
smoothed labels is ``k = 2`` (weights ``lam (1 - eps)`` and ``(1 - lam)(1 - eps)``, uniform
``eps``), which is exactly what ``timm.data.mixup_target`` builds densely. Scores against such
targets need a gather of ``k`` logits plus one row sum instead of a dense ``C``-wide product, so
losses stay cheap for 10^4..10^6 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from softnce._validation import (
    _fmt_shape,
    check_float_dtype,
    check_labels,
    check_row_sums,
    simplex_atol,
)


class SoftTargets:
    """A batch of sparse soft targets ``y_j = sum_r w[j,r] e_{idx[j,r]} + u_j / C``.

    Args:
        indices: (M, k) integer class indices in ``[0, C)``.
        weights: (M, k) non-negative weights.
        uniform: (M,) non-negative uniform mass, spread evenly over all C classes.
        num_classes: C.
        validate_args: check values (ranges, non-negativity, rows summing to 1 within
            :func:`softnce._validation.simplex_atol` of the weights' dtype, i.e. 1e-3 for
            float32/float64 and 2 eps for float16/bfloat16). Shapes and types are always checked.

    A batch remembers that it passed :meth:`validate` (the losses then do not re-check it on
    every call); mutating its tensors in place afterwards is not detected.

    Example::

        >>> t = SoftTargets.label_smoothing(torch.tensor([2, 0]), num_classes=3, smoothing=0.3)
        >>> t.to_dense()
        tensor([[0.1000, 0.1000, 0.8000],
                [0.8000, 0.1000, 0.1000]])
    """

    __slots__ = ("indices", "weights", "uniform", "num_classes", "_validated")

    def __init__(
        self,
        indices: torch.Tensor,
        weights: torch.Tensor,
        uniform: torch.Tensor,
        num_classes: int,
        validate_args: bool = True,
    ) -> None:
        for name, t in (("indices", indices), ("weights", weights), ("uniform", uniform)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"SoftTargets {name} must be a torch.Tensor; found "
                                f"{type(t).__name__}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SoftTargets num_classes must be a positive int; found {num_classes!r}")
        if indices.dim() != 2:
            raise ValueError(f"SoftTargets indices must have shape (M, k); found shape "
                             f"{_fmt_shape(indices)}")
        if indices.is_floating_point() or indices.dtype == torch.bool or indices.is_complex():
            raise TypeError(f"SoftTargets indices must be an integer tensor; found {indices.dtype}")
        if indices.shape[1] < 1:
            raise ValueError(f"SoftTargets indices must have at least one component (shape (M, k) "
                             f"with k >= 1; use weight 0 for a purely uniform row); found shape "
                             f"{_fmt_shape(indices)}")
        if weights.shape != indices.shape:
            raise ValueError(
                f"SoftTargets weights must have the shape of indices {_fmt_shape(indices)}; found "
                f"{_fmt_shape(weights)}"
            )
        if not weights.is_floating_point():
            raise TypeError(f"SoftTargets weights must be floating point; found {weights.dtype}")
        if uniform.shape != indices.shape[:1]:
            raise ValueError(
                f"SoftTargets uniform must have shape ({indices.shape[0]},); found "
                f"{_fmt_shape(uniform)}"
            )
        if not uniform.is_floating_point():
            raise TypeError(f"SoftTargets uniform must be floating point; found {uniform.dtype}")
        self.indices = indices.long()
        self.weights = weights
        self.uniform = uniform.to(weights.dtype)
        self.num_classes = int(num_classes)
        self._validated = False
        if validate_args:
            self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, name: str = "SoftTargets") -> SoftTargets:
        """Value checks: indices in range, finite non-negative masses, rows summing to 1.

        O(M k), one host synchronisation when valid (a fused flag); the detailed diagnosis runs
        only on failure. Done once per batch: a batch that passed is not checked again."""
        if self._validated or not len(self):
            return self
        lo, hi = torch.aminmax(self.indices)
        sums = self.weights.sum(dim=1, dtype=torch.float64) + self.uniform.double()
        ok = ((lo >= 0) & (hi < self.num_classes) & (self.weights.amin() >= 0)
              & (self.uniform.amin() >= 0)
              & ((sums - 1.0).abs() <= simplex_atol(self.weights.dtype)).all())
        if not bool(ok):
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(
                    f"{name} indices must lie in [0, {self.num_classes - 1}]; found values in "
                    f"[{lo}, {hi}]"
                )
            for part, t in (("weights", self.weights), ("uniform", self.uniform)):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{name} {part} must be finite; found NaN or infinite values")
                if bool((t < 0).any()):
                    raise ValueError(f"{name} {part} must be non-negative; found minimum "
                                     f"{float(t.min()):.6g}")
            check_row_sums(name, sums, self.weights.dtype,
                           "weights plus uniform mass must sum to 1 per row")
        self._validated = True
        return self

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_labels(
        cls, labels: torch.Tensor, num_classes: int, validate_args: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> SoftTargets:
        """One-hot targets from integer labels (N,)."""
        return cls.label_smoothing(labels, num_classes, 0.0, validate_args, dtype)

    @classmethod
    def label_smoothing(
        cls, labels: torch.Tensor, num_classes: int, smoothing: float = 0.1,
        validate_args: bool = True, dtype: torch.dtype = torch.float32,
    ) -> SoftTargets:
        """``y = (1 - eps) onehot(label) + eps / C`` (timm's convention)."""
        check_float_dtype("dtype", dtype)
        labels = _int_labels("labels", labels, num_classes, validate_args)
        eps = _check_fraction("smoothing", smoothing)
        n = labels.shape[0]
        weights = torch.full((n, 1), 1.0 - eps, dtype=dtype, device=labels.device)
        uniform = torch.full((n,), eps, dtype=dtype, device=labels.device)
        out = cls(labels.view(n, 1), weights, uniform, num_classes, validate_args=False)
        out._validated = bool(validate_args)  # labels checked above, masses valid by construction
        return out

    @classmethod
    def mix(
        cls, labels_a: torch.Tensor, labels_b: torch.Tensor, lam: float | torch.Tensor,
        num_classes: int, smoothing: float = 0.0, validate_args: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> SoftTargets:
        """Two-class mix (MixUp/CutMix): ``lam * y(a) + (1 - lam) * y(b)`` of smoothed labels.

        ``lam`` is a float or an (N,) tensor of per-sample mixing weights in [0, 1].
        """
        check_float_dtype("dtype", dtype)
        la = _int_labels("labels_a", labels_a, num_classes, validate_args)
        lb = _int_labels("labels_b", labels_b, num_classes, validate_args)
        if la.shape != lb.shape:
            raise ValueError(f"labels_a and labels_b must have the same shape; found "
                             f"{_fmt_shape(la)} and {_fmt_shape(lb)}")
        eps = _check_fraction("smoothing", smoothing)
        n = la.shape[0]
        if isinstance(lam, torch.Tensor):
            lam_t = lam.to(device=la.device, dtype=_weights_dtype(la.device)).reshape(-1)
            if lam_t.numel() == 1:
                lam_t = lam_t.expand(n)
            if lam_t.shape[0] != n:
                raise ValueError(f"lam must be a float or a tensor of shape ({n},); found "
                                 f"{_fmt_shape(lam)}")
            if validate_args and n and bool(((lam_t < 0) | (lam_t > 1) | ~torch.isfinite(lam_t))
                                            .any()):
                raise ValueError("lam must lie in [0, 1]; found values outside")
        else:
            lam_f = _check_fraction("lam", lam)
            lam_t = None
        if lam_t is None:  # a float: both weights in Python's float64, rounded once
            weights = torch.empty((n, 2), dtype=dtype, device=la.device)  # fills: no host copy
            weights[:, 0].fill_(lam_f * (1.0 - eps))
            weights[:, 1].fill_((1.0 - lam_f) * (1.0 - eps))
        else:
            # float64 where the device has it: 1 - lam in float32 loses digits as lam -> 1
            weights = torch.stack([lam_t * (1.0 - eps), (1.0 - lam_t) * (1.0 - eps)],
                                  dim=1).to(dtype)
        uniform = torch.full((n,), eps, dtype=dtype, device=la.device)
        out = cls(torch.stack([la, lb], dim=1), weights, uniform, num_classes,
                  validate_args=False)
        out._validated = bool(validate_args)  # labels and lam checked above
        return out

    @staticmethod
    def cat(parts: Sequence[SoftTargets]) -> SoftTargets:
        """Concatenate rows; parts with fewer components are padded with zero weights."""
        if not parts:
            raise ValueError("SoftTargets.cat needs at least one part")
        c = parts[0].num_classes
        if any(p.num_classes != c for p in parts):
            raise ValueError(f"SoftTargets.cat: all parts must have the same num_classes; found "
                             f"{[p.num_classes for p in parts]}")
        k = max(p.k for p in parts)
        return SoftTargets(
            torch.cat([p.pad_to(k).indices for p in parts]),
            torch.cat([p.pad_to(k).weights for p in parts]),
            torch.cat([p.uniform for p in parts]),
            c,
            validate_args=False,
        )

    # -------------------------------------------------------------- utilities
    @property
    def k(self) -> int:
        return self.indices.shape[1]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.num_classes))

    @property
    def device(self) -> torch.device:
        return self.indices.device

    @property
    def dtype(self) -> torch.dtype:
        return self.weights.dtype

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, idx: int | slice | torch.Tensor) -> SoftTargets:
        if isinstance(idx, int):
            m = len(self)
            if not -m <= idx < m:
                raise IndexError(f"SoftTargets index {idx} is out of range for {m} rows")
            idx = slice(idx % m, idx % m + 1)
        out = SoftTargets(self.indices[idx], self.weights[idx], self.uniform[idx],
                          self.num_classes, validate_args=False)
        out._validated = self._validated
        return out

    def __repr__(self) -> str:
        return f"SoftTargets(M={len(self)}, k={self.k}, num_classes={self.num_classes})"

    def to(self, *args, **kwargs) -> SoftTargets:
        """Move to a device; a floating dtype applies to weights and uniform only."""
        w = self.weights.to(*args, **kwargs)
        dev = w.device
        out = SoftTargets(self.indices.to(dev), w, self.uniform.to(device=dev, dtype=w.dtype),
                          self.num_classes, validate_args=False)
        # a dtype change moves a row sum by at most eps/2 of the new dtype: still within tolerance
        out._validated = self._validated
        return out

    def pad_to(self, k: int) -> SoftTargets:
        """Pad to ``k`` components with index 0 and weight 0 (the target is unchanged)."""
        if k < self.k:
            raise ValueError(f"pad_to: k={k} is smaller than the current k={self.k}")
        if k == self.k:
            return self
        extra = k - self.k
        m = len(self)
        idx = torch.cat([self.indices, self.indices.new_zeros(m, extra)], dim=1)
        w = torch.cat([self.weights, self.weights.new_zeros(m, extra)], dim=1)
        out = SoftTargets(idx, w, self.uniform, self.num_classes, validate_args=False)
        out._validated = self._validated
        return out

    def to_dense(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (M, C) dense target matrix."""
        dtype = dtype or self.weights.dtype
        out = torch.zeros(len(self), self.num_classes, dtype=dtype, device=self.device)
        out.scatter_add_(1, self.indices, self.weights.to(dtype))
        out += (self.uniform.to(dtype) / self.num_classes).unsqueeze(1)
        return out

    def argmax(self) -> torch.Tensor:
        """The most likely class per row (the hard label for accuracy metrics)."""
        return self.indices.gather(1, self.weights.argmax(dim=1, keepdim=True)).squeeze(1)

    # -------------------------------------------------- products with targets
    def dot_rows(self, a: torch.Tensor) -> torch.Tensor:
        """``(a_i . y_i)`` for matching rows: a (M, C) -> (M,). O(M k + M C)."""
        a = a.to(self.weights.dtype) if not a.is_floating_point() else a
        w = self.weights.to(a.dtype)
        out = (a.gather(1, self.indices) * w).sum(dim=1)
        return out + _uniform_term(a.sum(dim=1), self.uniform.to(a.dtype) / self.num_classes)

    def scores(self, a: torch.Tensor) -> torch.Tensor:
        """All pairs ``S_ij = a_i . y_j``: a (N, C) -> (N, M). O(N M k + N C), no N x C x M.

        ``S = sum_r a[:, idx[:, r]] * w[:, r] + rowsum(a) u / C``: one (N, M) gather per
        component (k is small); an einsum over an (N, M, k) gather was 2-7x slower for k = 2.
        """
        w = self.weights.to(a.dtype)
        out = _uniform_term(a.sum(dim=1, keepdim=True),
                            (self.uniform.to(a.dtype) / self.num_classes).unsqueeze(0))
        for r in range(self.k):
            out = out + a.index_select(1, self.indices[:, r]) * w[:, r]
        return out

    def dot_vector(self, v: torch.Tensor) -> torch.Tensor:
        """``(v . y_j)`` for a single vector v (C,) -> (M,)."""
        w = self.weights.to(v.dtype)
        return (v[self.indices] * w).sum(dim=1) + v.sum() * self.uniform.to(v.dtype) / self.num_classes


def _weights_dtype(device: torch.device) -> torch.dtype:
    """float64 for intermediate weights, except on MPS (no float64 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _uniform_term(row_sums: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """``row_sums * mass`` with an exactly zero ``mass`` giving exactly 0 (not ``inf * 0``)."""
    prod = row_sums * mass
    return torch.where(mass == 0, torch.zeros_like(prod), prod)


def _int_labels(name: str, labels: object, num_classes: int, validate_args: bool) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels; found "
                        f"{type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise TypeError(f"{name} must be an integer tensor of class indices; found {labels.dtype}")
    return check_labels(name, labels.long(), num_classes, None, validate_args)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1]; found {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1]; found {value}")
    return float(value)
