"""The harness's loss registry: name -> ``build(cfg, bundle) -> nn.Module``.

Built-in: ``nll``, ``infonce``, ``soft-ce``, ``soft-infonce``; plug-ins add more with
:func:`register_loss`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from softnce.data import DataBundle
from softnce.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from softnce.harness.config import TrainConfig


# ----------------------------------------------------------------------------- losses
@dataclasses.dataclass
class LossSpec:
    """A registered loss: ``build(cfg, bundle) -> nn.Module`` and what targets it takes."""

    build: Callable[[TrainConfig, DataBundle], nn.Module]
    targets: str  # "hard": (N,) int64 labels; "soft": dense / SoftTargets
    uses_negatives: bool = False
    doc: str | None = None

    def __call__(self, cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
        return self.build(cfg, bundle)


LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(
    name: str, targets: str = "soft", uses_negatives: bool = False, help: str = ""
) -> Callable[[Callable], Callable]:
    """Decorator registering ``build(cfg, bundle) -> nn.Module`` as loss ``name``.

    ``targets="hard"``: the module gets (N,) int64 labels; ``"soft"``: dense (N, C) or
    ``SoftTargets``. ``uses_negatives``: the loss honours ``cfg.negatives``.
    """
    if targets not in ("hard", "soft"):
        raise ValueError(f"targets must be 'hard' or 'soft'; found {targets!r}")

    def deco(fn: Callable) -> Callable:
        LOSSES.register(name, help=help or (fn.__doc__ or "").strip().split("\n")[0])(
            LossSpec(fn, targets, uses_negatives, fn.__doc__)
        )
        return fn

    return deco


def noise_probs(cfg: TrainConfig, bundle: DataBundle) -> torch.Tensor | None:
    """The InfoNCE noise distribution: ``class_prior(train labels)`` or ``None`` (uniform)."""
    if cfg.noise == "uniform":
        return None
    from softnce import class_prior

    return class_prior(bundle.train_labels, bundle.num_classes)


def _infonce_kwargs(cfg: TrainConfig, bundle: DataBundle) -> dict[str, Any]:
    # "simplex" negatives come from a Dirichlet density whose exact log-density is the
    # correction, so no class noise distribution applies there.
    simplex = cfg.negatives == "simplex"
    kw = dict(noise_probs=None if simplex else noise_probs(cfg, bundle),
              temperature=cfg.temperature, negatives=cfg.negatives, queue_size=cfg.queue_size,
              num_negatives=cfg.num_negatives, gather_distributed=cfg.gather_distributed)
    if simplex:
        kw["simplex_concentration"] = cfg.simplex_concentration
    return kw


@register_loss("nll", targets="hard", help="hard labels, torch.nn.CrossEntropyLoss")
def _nll(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    return nn.CrossEntropyLoss()


@register_loss("infonce", targets="hard", uses_negatives=True,
               help="hard labels, InfoNCE with the noise distribution (prior/uniform)")
def _infonce(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    from softnce import InfoNCE

    return InfoNCE(**_infonce_kwargs(cfg, bundle))


@register_loss("soft-ce", targets="soft", help="soft targets, SoftTargetCrossEntropy")
def _soft_ce(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    from softnce import SoftTargetCrossEntropy

    return SoftTargetCrossEntropy(temperature=cfg.temperature)


@register_loss("soft-infonce", targets="soft", uses_negatives=True,
               help="soft targets, SoftTargetInfoNCE with the noise distribution")
def _soft_infonce(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    from softnce import SoftTargetInfoNCE

    return SoftTargetInfoNCE(**_infonce_kwargs(cfg, bundle))


def build_loss(cfg: TrainConfig, bundle: DataBundle) -> nn.Module:
    """The loss module for ``cfg.loss`` (see :data:`LOSSES`)."""
    return LOSSES.get(cfg.loss)(cfg, bundle)

