"""Soft-target InfoNCE in a plain PyTorch loop: timm's MixUp/CutMix as sparse targets, gradient
accumulation whose candidates are the whole optimiser step, and monitoring with the NLL of
softmax(z / tau). Run it: ``python examples/plain_loop.py`` (a tiny CNN on random images).

Tested by ``tests/test_loops.py``; ``docs/training-loops.md`` quotes it.
"""

from __future__ import annotations

import torch
from torch import nn

from softnce import SoftTargetInfoNCE, class_prior
from softnce.data.mixup import SparseMixup
from softnce.metrics.torchmetric import CalibrationMetric


def train_step(model: nn.Module, loss_fn: SoftTargetInfoNCE, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, targets, accum_steps: int = 1) -> float:
    """One optimiser step over ``images`` split into ``accum_steps`` micro-batches.

    The candidates of every micro-batch are all the step's targets (they carry no gradient, so
    they are known before the first forward): the loss and gradients do not depend on
    ``accum_steps``. Each micro-batch loss is weighted by its share of the step's rows.
    """
    optimizer.zero_grad(set_to_none=True)
    n, total = len(images), 0.0
    with loss_fn.step_candidates(targets):
        for idx in torch.arange(n).chunk(accum_steps):
            loss = loss_fn(model(images[idx]), targets[idx]) * (len(idx) / n)
            loss.backward()
            total += float(loss.detach())
    optimizer.step()
    return total


@torch.no_grad()
def monitor(model: nn.Module, loss_fn: SoftTargetInfoNCE, images: torch.Tensor,
            labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """NLL, ECE and accuracy of ``softmax(z / tau)``: the InfoNCE value itself depends on the
    batch (its candidates), these do not."""
    metric = CalibrationMetric(num_classes=num_classes, temperature=loss_fn.temperature,
                               topk=(1,))
    metric.update(model(images), labels)
    return {k: float(v) for k, v in metric.compute().items()}


def main(steps: int = 20, num_classes: int = 10, batch_size: int = 32, accum_steps: int = 4,
         seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    images = torch.randn(256, 3, 16, 16)
    labels = torch.randint(0, num_classes, (256,))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, num_classes))
    loss_fn = SoftTargetInfoNCE(noise_probs=class_prior(labels, num_classes), temperature=1.0)
    mixup = SparseMixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1,
                        num_classes=num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,))
        x, y = mixup(images[idx].clone(), labels[idx])   # y: SoftTargets, k = 2
        train_step(model, loss_fn, optimizer, x, y, accum_steps)
    return monitor(model, loss_fn, images, labels, num_classes)


if __name__ == "__main__":
    print(main())
