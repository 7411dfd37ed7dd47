"""Soft-target InfoNCE in Hugging Face's ``Trainer``, right under gradient accumulation.

Two things go wrong with a plain ``compute_loss_func``:

* the Trainer does not divide a custom loss by the accumulation steps; it passes
  ``num_items_in_batch``, which counts the entries of ``labels`` that are not -100 -- for dense
  (N, C) soft labels that is N x C, not N;
* each micro-batch only sees its own rows as candidates, so the objective changes with
  ``gradient_accumulation_steps``.

:class:`SoftNCETrainer` fixes both: ``get_batch_samples`` (the Trainer fetches all micro-batches
of an optimiser step before the first forward) opens ``step_candidates`` with the step's labels
and returns the number of *rows* as ``num_items_in_batch``; ``compute_loss`` sums the micro-batch
rows and divides by it, so the step's loss and gradients equal one batch of the whole step.
Labels may be (N,) class indices or (N, C) soft labels. Evaluation (``eval_strategy``) scores
each batch against its own rows with the loss in eval mode (the queue of ``negatives="queue"``
is not touched); a plain ``nn.Module`` needs ``label_names=["labels"]`` in ``TrainingArguments``
so that the Trainer does not pass ``labels`` to ``forward``. Tested in one process.

Tested by ``tests/test_loops.py``; ``docs/training-loops.md`` quotes it.
"""

from __future__ import annotations

import torch
from transformers import Trainer

from softnce import SoftTargetInfoNCE


class SoftNCETrainer(Trainer):
    """``Trainer`` whose loss is ``loss_fn`` with the whole accumulated step as candidates."""

    loss_is_scaled_for_ga = True   # compute_loss already normalises over the whole step

    def __init__(self, *args, loss_fn: SoftTargetInfoNCE, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = loss_fn
        self._step_context = None
        self._rows_left = 0

    def _close_step(self) -> None:
        if self._step_context is not None:
            ctx, self._step_context = self._step_context, None
            ctx.__exit__(None, None, None)   # fills the queue (negatives="queue")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        self._close_step()
        batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batches:
            return batches, None
        labels = torch.cat([b["labels"] for b in batches]).to(device)
        self.loss_fn.to(device).train()
        self._step_context = self.loss_fn.step_candidates(labels)
        self._step_context.__enter__()
        self._rows_left = len(labels)
        return batches, len(labels)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs
        if self._step_context is not None and model.training:
            rows = self.loss_fn(logits, labels) * len(labels)      # sum over the rows
            loss = rows / num_items_in_batch
            self._rows_left -= len(labels)
            if self._rows_left == 0:            # the step's last micro-batch
                self._close_step()
        else:                                   # evaluation: in-batch candidates, and in
            was_training = self.loss_fn.training  # eval mode so nothing enters the queue
            self.loss_fn.eval()
            try:
                with torch.no_grad():
                    loss = self.loss_fn(logits, labels)
            finally:
                self.loss_fn.train(was_training)
        return (loss, outputs) if return_outputs else loss

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            self._close_step()
