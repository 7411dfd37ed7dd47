"""Soft-target InfoNCE as the criterion of timm's ``ClassificationTask``, with its state kept.

``ClassificationTask(model, criterion=loss_fn)`` works as is (the task calls
``criterion(output, target)``; targets may be labels, dense soft targets or ``SoftTargets``, e.g.
from :class:`softnce.data.mixup.SparseMixup`). timm's training script saves only the model's
``state_dict``; the loss's buffers (the queue of negatives, ``noise_probs``) live in
``task.criterion``, so save and restore them too -- :func:`save_checkpoint` /
:func:`load_checkpoint` below, loaded with ``weights_only=True``.

Tested by ``tests/test_loops.py``; ``docs/training-loops.md`` quotes it.
"""

from __future__ import annotations

import os
import tempfile

import torch
from timm.task import ClassificationTask


def save_checkpoint(path: str, task: ClassificationTask, optimizer: torch.optim.Optimizer,
                    epoch: int) -> None:
    """Model, loss state (queue) and optimiser in one file, written atomically."""
    state = {"model": task.trainable_module.state_dict(),
             "criterion": task.criterion.state_dict(),
             "optimizer": optimizer.state_dict(), "epoch": epoch}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, task: ClassificationTask,
                    optimizer: torch.optim.Optimizer) -> int:
    """Restore what :func:`save_checkpoint` wrote; returns the epoch."""
    state = torch.load(path, map_location=task.device, weights_only=True)
    task.trainable_module.load_state_dict(state["model"])
    task.criterion.load_state_dict(state["criterion"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"])
