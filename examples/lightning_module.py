"""Soft-target InfoNCE in PyTorch Lightning.

* The loss is a module attribute, so its buffers (the queue of negatives, ``noise_probs``) are in
  ``state_dict`` and therefore in every Lightning checkpoint: resuming keeps the queue.
* Under DDP the loss gathers the targets of all ranks (uneven batch sizes are fine), so the
  candidates are the global batch.
* Gradient accumulation: Lightning's ``accumulate_grad_batches`` runs each micro-batch on its own,
  so its candidates would be that micro-batch only. Load the whole step as one batch instead and
  split it inside ``training_step`` (``micro_batches > 1``, manual optimisation) under
  ``step_candidates``.

Tested by ``tests/test_loops.py``; ``docs/training-loops.md`` quotes it.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from softnce import SoftTargetInfoNCE, SoftTargets
from softnce.metrics.torchmetric import CalibrationMetric


class SoftNCEClassifier(L.LightningModule):
    def __init__(self, model: nn.Module, noise_probs: torch.Tensor, num_classes: int,
                 negatives: str = "queue", queue_size: int = 64, smoothing: float = 0.1,
                 micro_batches: int = 1, lr: float = 1e-2) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = SoftTargetInfoNCE(noise_probs, negatives=negatives, queue_size=queue_size)
        self.val_calibration = CalibrationMetric(num_classes=num_classes,
                                                 temperature=self.loss_fn.temperature)
        self.num_classes, self.smoothing = num_classes, smoothing
        self.micro_batches, self.lr = micro_batches, lr
        self.automatic_optimization = micro_batches == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, labels = batch
        y = SoftTargets.label_smoothing(labels, self.num_classes, self.smoothing)
        if self.micro_batches == 1:
            loss = self.loss_fn(self(x), y)
        else:                                   # the step split in micro-batches
            opt = self.optimizers()
            opt.zero_grad()
            loss, n = 0.0, len(labels)
            with self.loss_fn.step_candidates(y):
                for idx in torch.arange(n).chunk(self.micro_batches):
                    part = self.loss_fn(self(x[idx]), y[idx]) * (len(idx) / n)
                    self.manual_backward(part)
                    loss = loss + part.detach()
            opt.step()
        self.log("train_loss", loss, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        x, labels = batch
        self.val_calibration.update(self(x), labels)   # NLL / ECE of softmax(z / tau)

    def on_validation_epoch_end(self):
        metrics = self.val_calibration.compute()
        self.log_dict({f"val_{k}": metrics[k].float() for k in ("nll", "ece", "top1")},
                      sync_dist=False)   # already global: the metric's state is all-reduced
        self.val_calibration.reset()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)
