"""The optimiser of a run: plain ``torch.optim`` for AdamW / Adam without layer decay (no timm
import, so a vector-data run starts fast), timm's ``create_optimizer_v2`` for everything else.

The plain path builds exactly timm's parameter groups (``param_groups_weight_decay``): no weight
decay on 1-D parameters, biases and the names in ``model.no_weight_decay()``; the first group
is the no-decay one. The same optimiser class with the same groups and defaults gives the same
numbers as timm (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["PLAIN_OPTIMIZERS", "build_optimizer", "weight_decay_groups"]

#: Optimiser names served by torch.optim directly when no layer decay is asked for.
PLAIN_OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """timm's weight-decay parameter groups, without importing timm."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if not weight_decay or p.ndim <= 1 or name.endswith(".bias") or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups: list[dict[str, Any]] = []
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    layer_decay: float | None) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` / ``Adam`` (no layer decay) or timm's ``create_optimizer_v2``.

    Raises ``ValueError`` naming the optimiser when timm does not know it.
    """
    plain = PLAIN_OPTIMIZERS.get(name.lower())
    if plain is not None and layer_decay is None:
        return plain(weight_decay_groups(model, weight_decay), lr=lr, weight_decay=weight_decay)
    from softnce._optional import require

    require("timm", "images", f"optimizer {name!r} / layer decay")
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay,
                               layer_decay=layer_decay)
