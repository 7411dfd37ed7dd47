"""The training step's pieces that are not the trainer's state: the model + criterion as one
module (what DDP wraps) and the step's candidate targets under gradient accumulation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _ForwardLoss(nn.Module):
    """``model_input, targets -> loss`` as one module, so DDP sees the whole computation (the
    model's ``compute_loss`` hook included). The criterion is not a submodule (its buffers, e.g.
    the queue, must not be broadcast by DDP)."""

    def __init__(self, model: nn.Module, criterion: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.__dict__["criterion"] = criterion

    def forward(self, x: Any, targets: Any, mask: torch.Tensor | None = None) -> torch.Tensor:
        hook = getattr(self.model, "compute_loss", None)
        if hook is not None:
            kw = {"mask": mask} if mask is not None else {}
            return hook(x, targets, self.criterion, **kw)
        logits = self.model(x)
        if mask is not None:
            logits = logits[mask]
        return self.criterion(logits, targets)


# ------------------------------------------------------------------------------ trainer


def _cat_targets(parts: list[Any]) -> Any:
    """The targets of several micro-batches as one candidate set (labels, dense or sparse)."""
    from softnce.targets import SoftTargets

    if isinstance(parts[0], SoftTargets):
        return SoftTargets.cat(parts)
    return torch.cat(parts)


def relax_checks(criterion: nn.Module) -> list[nn.Module]:
    """Turn off the value checks of every submodule with ``validate_args=True``; returns them.

    The trainer does this after the first optimiser step of an epoch, fully checked: no host
    synchronisation and no extra passes for the rest of the epoch. The targets come from the
    harness's own constructors, and every micro-step reads its loss back and stops on a
    non-finite value (``NonFiniteLossError``). What that misses: a NaN/inf logit in a column that
    no target of the batch touches (a finite loss from hard labels without uniform mass); it is
    caught at the next epoch's first step, and the epoch's evaluation shows it.
    """
    relaxed = [m for m in criterion.modules() if getattr(m, "validate_args", None) is True]
    for m in relaxed:
        m.validate_args = False
    return relaxed


def restore_checks(modules: list[nn.Module]) -> None:
    """Undo :func:`relax_checks`."""
    for m in modules:
        m.validate_args = True
