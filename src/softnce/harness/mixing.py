r"""Per-batch soft-target builder: label smoothing, MixUp and CutMix.

:class:`BatchTargetBuilder` turns a batch ``(inputs, labels, soft)`` into ``(inputs, targets)``
for the configured loss:

* hard-label losses (``nll``, ``infonce``): ``targets = labels`` and inputs unchanged;
* image data (``bundle.kind == "image"``) with ``mixup > 0`` or ``cutmix > 0``: timm's
  ``Mixup`` (MixUp/CutMix with ``mix_prob``, ``switch_prob``, ``mix_mode`` and label smoothing;
  through :class:`~softnce.data.mixup.SparseMixup`, whose targets are sparse
  :class:`~softnce.targets.SoftTargets` with k = 2 equal to timm's dense ``(N, C)`` targets;
  timm draws from numpy's global RNG, which the engine checkpoints);
* other non-graph data with ``mixup > 0``: MixUp on the input tensors,
  ``x' = lam x + (1 - lam) x[perm]`` and
  ``y' = lam y_s(label) + (1 - lam) y_s(label[perm])`` with ``y_s = (1 - eps) onehot + eps / C``,
  as sparse :class:`~softnce.targets.SoftTargets` (two components per row, cheap for any C).
  ``lam ~ Beta(alpha, alpha)`` per batch (``mix_mode: batch``) or per sample (``elem``), applied
  with probability ``mix_prob`` (else ``lam = 1``);
* otherwise label smoothing ``SoftTargets.label_smoothing(labels, C, eps)``; soft targets that
  come with the data (graphs: per-node ``soft_y``) become ``(1 - eps) y + eps / C``.

The builder's own random numbers come from a ``numpy.random.RandomState`` seeded from the run
seed; :meth:`state_dict` / :meth:`load_state_dict` save it as plain tensors for exact resumption.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from softnce.targets import SoftTargets

__all__ = ["BatchTargetBuilder", "numpy_state_to_dict", "numpy_state_from_dict"]


def numpy_state_to_dict(state: tuple) -> dict[str, Any]:
    """``RandomState.get_state()`` -> tensors / plain python (``weights_only`` loadable)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_state_from_dict(d: dict[str, Any]) -> tuple:
    """Inverse of :func:`numpy_state_to_dict`."""
    return (d["name"], d["keys"].numpy().astype(np.uint32), int(d["pos"]), int(d["has_gauss"]),
            float(d["cached_gaussian"]))


class BatchTargetBuilder:
    """Builds the loss targets of each training batch (see the module docstring).

    Args:
        cfg: the run's ``TrainConfig`` (``smoothing``, ``mixup``, ``cutmix``, ``mix_prob``,
            ``switch_prob``, ``mix_mode``).
        kind: ``bundle.kind``.
        num_classes: C.
        hard: the loss takes integer labels.
        seed: seed of the builder's RNG.
    """

    def __init__(self, cfg: Any, kind: str, num_classes: int, hard: bool, seed: int = 0) -> None:
        self.num_classes = int(num_classes)
        self.smoothing = float(cfg.smoothing)
        self.alpha = float(cfg.mixup)
        self.mix_prob = float(cfg.mix_prob)
        self.mode_elem = cfg.mix_mode == "elem"
        self.rng = np.random.RandomState(seed % 2**32)
        self.timm_mixup = None
        mixing = cfg.mixup > 0 or cfg.cutmix > 0
        if hard:
            self.mode = "hard"
        elif kind == "graph":
            if mixing:
                raise ValueError("mixup/cutmix are not available for graph data (kind 'graph'); "
                                 "use smoothing or per-node soft targets; found "
                                 f"mixup={cfg.mixup}, cutmix={cfg.cutmix}")
            self.mode = "smooth"
        elif kind == "image" and mixing:
            from softnce.data.mixup import SparseMixup

            self.mode = "timm"
            self.timm_mixup = SparseMixup(
                mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                switch_prob=cfg.switch_prob, mode=cfg.mix_mode, label_smoothing=cfg.smoothing,
                num_classes=self.num_classes,
            )
        elif mixing:
            if cfg.cutmix > 0:
                raise ValueError(f"cutmix needs image data (kind 'image'); this data set is "
                                 f"{kind!r}; found cutmix={cfg.cutmix}")
            if cfg.mix_mode == "pair":
                raise ValueError(f"mix_mode 'pair' needs image data (kind 'image'); this data set "
                                 f"is {kind!r}; use batch or elem")
            self.mode = "vector_mixup"
        else:
            self.mode = "smooth"

    @property
    def needs_even_batch(self) -> bool:
        """timm's Mixup needs an even batch size (the engine drops the last partial batch)."""
        return self.mode == "timm"

    def __call__(self, inputs: Any, labels: torch.Tensor, soft: Any = None) -> tuple[Any, Any]:
        """``(inputs, labels, soft_or_None) -> (inputs, targets)``."""
        if self.mode == "hard":
            return inputs, labels
        if self.mode == "timm":
            if len(labels) % 2:
                raise ValueError(f"timm Mixup needs an even batch size; found {len(labels)}")
            return self.timm_mixup(inputs, labels)
        if soft is not None:
            return inputs, self._smooth_given(soft)
        if self.mode == "vector_mixup":
            return self._vector_mixup(inputs, labels)
        return inputs, SoftTargets.label_smoothing(labels, self.num_classes, self.smoothing,
                                                   validate_args=False)

    def _smooth_given(self, soft: Any) -> Any:
        eps = self.smoothing
        if isinstance(soft, SoftTargets):
            if eps == 0:
                return soft
            return SoftTargets(soft.indices, soft.weights * (1 - eps),
                               soft.uniform * (1 - eps) + eps, soft.num_classes,
                               validate_args=False)
        soft = soft.float()
        return soft if eps == 0 else soft * (1 - eps) + eps / soft.shape[-1]

    def _vector_mixup(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"MixUp on vector data needs floating-point input tensors; found "
                            f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
        n = len(labels)
        c, eps = self.num_classes, self.smoothing
        if self.mode_elem:
            lam_np = self.rng.beta(self.alpha, self.alpha, size=n)
            keep = self.rng.rand(n) >= self.mix_prob
            lam_np[keep] = 1.0
            lam: float | torch.Tensor = torch.as_tensor(lam_np, dtype=torch.float32,
                                                        device=x.device)
        else:
            lam = float(self.rng.beta(self.alpha, self.alpha))
            if self.rng.rand() >= self.mix_prob:
                lam = 1.0
        perm_np = self.rng.permutation(n)
        if isinstance(lam, float) and lam == 1.0:
            return x, SoftTargets.label_smoothing(labels, c, eps, validate_args=False)
        perm = torch.as_tensor(perm_np, device=x.device)
        lam_x = lam.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) if isinstance(lam, torch.Tensor) \
            else lam
        x = x * lam_x + x[perm] * (1 - lam_x)
        return x, SoftTargets.mix(labels, labels[perm], lam, c, eps, validate_args=False)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": numpy_state_to_dict(self.rng.get_state())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.set_state(numpy_state_from_dict(state["rng"]))
