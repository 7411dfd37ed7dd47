"""The recipes of docs/training-loops.md (examples/*.py), run on CPU with tiny hand-built models:
a plain loop with timm's MixUp, PyTorch Lightning (checkpoint with the queue, accumulation, DDP
with uneven last batches), Hugging Face's Trainer (gradient accumulation, soft labels) and timm's
ClassificationTask (loss state in the checkpoint)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

from softnce import SoftTargetInfoNCE, SoftTargets, class_prior  # noqa: E402

C = 5


def _mlp(seed: int = 0, d: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, C))


def _data(n: int, seed: int = 1, d: int = 6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, C, (n,), generator=g)


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------------------ the docs page
def test_every_code_block_of_the_docs_page_is_tested_code():
    page = (ROOT / "docs" / "training-loops.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 4
    sources = {p.name: p.read_text() for p in EXAMPLES.glob("*.py")}
    for block in blocks:
        assert any(block.strip() in src for src in sources.values()), block[:200]


# ------------------------------------------------------------------------------ plain loop
def test_plain_loop_accumulation_equals_one_batch():
    from plain_loop import train_step

    x, labels = _data(64)
    y = SoftTargets.mix(labels, labels.flip(0), 0.6, C, smoothing=0.1)
    q = class_prior(labels, C)
    out = []
    for accum in (1, 4, 3):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loss = train_step(model, SoftTargetInfoNCE(q, temperature=0.7), opt, x, y, accum)
        out.append((loss, _params(model)))
    for loss, params in out[1:]:
        assert loss == pytest.approx(out[0][0], rel=1e-5)
        torch.testing.assert_close(params, out[0][1], rtol=1e-5, atol=1e-6)
    # without step_candidates the micro-batches would see 16 candidates: a different objective
    model = _mlp()
    loss_fn = SoftTargetInfoNCE(q, temperature=0.7)
    naive = sum(float(loss_fn(model(x[i:i + 16]), y[i:i + 16])) / 4 for i in range(0, 64, 16))
    assert abs(naive - out[0][0]) > 0.1


def test_plain_loop_runs_with_sparse_mixup():
    pytest.importorskip("timm")
    from plain_loop import main

    np.random.seed(0)
    metrics = main(steps=3)
    assert metrics["n"] == 256 and np.isfinite(metrics["nll"]) and 0 <= metrics["ece"] <= 1


# ------------------------------------------------------------------------------ Lightning
def _lightning_trainer(tmp_path, **kw):
    import lightning as L

    kw = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
          "enable_model_summary": False, "enable_checkpointing": False,
          "default_root_dir": str(tmp_path), **kw}
    return L.Trainer(**kw)


def _loader(n: int, batch_size: int, seed: int = 1):
    x, y = _data(n, seed)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                       batch_size=batch_size)


def test_lightning_checkpoint_keeps_the_queue(tmp_path):
    pytest.importorskip("lightning")
    from lightning_module import SoftNCEClassifier

    _, labels = _data(40)
    q = class_prior(labels, C)
    module = SoftNCEClassifier(_mlp(), q, C, negatives="queue", queue_size=100)
    trainer = _lightning_trainer(tmp_path, max_epochs=2)
    trainer.fit(module, _loader(40, 8), _loader(16, 8, seed=2))
    assert int(module.loss_fn.queue_len) == 80   # two epochs of 40 rows, validation not queued
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"]
    assert "loss_fn.queue_weights" in state and "val_calibration.bins" not in state
    fresh = SoftNCEClassifier(_mlp(seed=5), q, C, negatives="queue", queue_size=100)
    fresh.load_state_dict(state)
    for name in ("queue_indices", "queue_weights", "queue_uniform", "queue_ptr", "queue_len"):
        assert torch.equal(getattr(fresh.loss_fn, name), getattr(module.loss_fn, name)), name
    # resuming through Lightning continues from the saved queue: 80 + 40 rows fill the 100
    # slots (a lost queue would hold only the 40 rows of the third epoch)
    resumed = SoftNCEClassifier(_mlp(seed=5), q, C, negatives="queue", queue_size=100)
    _lightning_trainer(tmp_path, max_epochs=3).fit(resumed, _loader(40, 8), ckpt_path=path)
    assert int(resumed.loss_fn.queue_len) == 100 and resumed.current_epoch == 3


def test_lightning_micro_batches_equal_one_batch(tmp_path):
    pytest.importorskip("lightning")
    from lightning_module import SoftNCEClassifier

    _, labels = _data(32)
    q = class_prior(labels, C)
    out = []
    for micro in (1, 4):
        module = SoftNCEClassifier(_mlp(), q, C, negatives="batch", micro_batches=micro, lr=0.05)
        _lightning_trainer(tmp_path, max_steps=1).fit(module, _loader(32, 32))
        out.append(_params(module.model))
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-6)


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset
    from lightning_module import SoftNCEClassifier
    from softnce import class_prior

    C, out = 5, sys.argv[1]

    class Recorded(SoftNCEClassifier):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(1)
            x, y = torch.randn(19, 6, generator=g), torch.randint(0, C, (19,), generator=g)
            r = self.trainer.global_rank
            rows = slice(0, 10) if r == 0 else slice(10, 19)   # 10 and 9 rows: last batches 2, 1
            return DataLoader(TensorDataset(x[rows], y[rows]), batch_size=4)

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            x, labels = batch
            with torch.no_grad():
                self.record = {"z": self(x), "labels": labels, "loss": loss.detach()}
            return loss

        def on_train_end(self):
            rec = dict(self.record, params=torch.cat([p.detach().reshape(-1)
                                                      for p in self.model.parameters()]))
            torch.save(rec, f"{out}/rank{self.trainer.global_rank}.pt")

    if __name__ == "__main__":
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, C))
        module = Recorded(model, class_prior(torch.arange(C), C), C, negatives="batch", lr=0.0)
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1,
                            logger=False, enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, use_distributed_sampler=False,
                            default_root_dir=out)
        trainer.fit(module)
""")


def test_lightning_ddp_uneven_last_batches_use_global_candidates(tmp_path):
    pytest.importorskip("lightning")
    script = tmp_path / "ddp_lightning.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(EXAMPLES), str(ROOT / "src")]),
               OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert (len(r0["labels"]), len(r1["labels"])) == (2, 1)    # the uneven last batches
    torch.testing.assert_close(r0["params"], r1["params"])
    # lr = 0: the last step's logits are the initial model's; the loss of each rank is its rows'
    # mean over the *global* candidates (3 = 2 + 1 rows gathered across the ranks)
    z = torch.cat([r0["z"], r1["z"]])
    y = SoftTargets.label_smoothing(torch.cat([r0["labels"], r1["labels"]]), C, 0.1)
    rows = SoftTargetInfoNCE(class_prior(torch.arange(C), C), reduction="none")(z, y)
    assert float(r0["loss"]) == pytest.approx(float(rows[:2].mean()), rel=1e-5)
    assert float(r1["loss"]) == pytest.approx(float(rows[2:].mean()), rel=1e-5)


# ------------------------------------------------------------------------------ Hugging Face
class _DictModel(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.net = _mlp(seed)

    def forward(self, x):
        return {"logits": self.net(x)}


def _hf_train(tmp_path, labels, batch_size: int, accum: int, negatives: str = "batch",
              eval_rows: int = 0, max_steps: int = 1):
    from transformers import TrainingArguments

    from hf_trainer import SoftNCETrainer

    x, hard = _data(len(labels))
    data = [{"x": x[i], "labels": labels[i]} for i in range(len(labels))]
    args = TrainingArguments(
        output_dir=str(tmp_path / f"hf-{batch_size}-{accum}"), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accum, max_steps=max_steps, learning_rate=0.5, optim="sgd",
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        remove_unused_columns=False, dataloader_drop_last=True, logging_strategy="no",
        label_names=["labels"], per_device_eval_batch_size=20,
        **({"eval_strategy": "steps", "eval_steps": 1} if eval_rows else {}))
    model = _DictModel()
    loss_fn = SoftTargetInfoNCE(class_prior(hard, C), temperature=0.7, negatives=negatives,
                                queue_size=256)
    xe, ye = _data(eval_rows, seed=9) if eval_rows else (None, None)
    evals = [{"x": xe[i], "labels": ye[i]} for i in range(eval_rows)] or None
    trainer = SoftNCETrainer(model=model, args=args, train_dataset=data, eval_dataset=evals,
                             loss_fn=loss_fn)
    result = trainer.train()
    return result.training_loss, _params(model), loss_fn


@pytest.mark.parametrize("soft", [False, True], ids=["labels", "dense-soft-labels"])
def test_hf_trainer_accumulation_equals_one_batch(tmp_path, soft):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    _, hard = _data(64)
    labels = hard
    if soft:
        labels = torch.softmax(3 * torch.randn(64, C, generator=torch.Generator().manual_seed(4)),
                               dim=1)
    loss_a, params_a, _ = _hf_train(tmp_path, labels, 64, 1)
    loss_b, params_b, _ = _hf_train(tmp_path, labels, 16, 4)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)        # not 4x, not 16 candidates
    torch.testing.assert_close(params_b, params_a, rtol=1e-5, atol=1e-6)
    # the reference: the step as one batch, by hand
    model = _DictModel()
    x, _ = _data(64)
    loss_fn = SoftTargetInfoNCE(class_prior(hard, C), temperature=0.7)
    assert loss_a == pytest.approx(float(loss_fn(model(x)["logits"], labels)), rel=1e-5)


def test_hf_trainer_queue_is_filled_once_per_step(tmp_path):
    pytest.importorskip("transformers")
    _, hard = _data(64)
    _, _, loss_fn = _hf_train(tmp_path, hard, 16, 4, negatives="queue")
    assert int(loss_fn.queue_len) == 64 and loss_fn._step is None


def test_hf_trainer_evaluation_mid_training_leaves_the_queue_alone(tmp_path):
    """Evaluation after every step (40 rows in batches of 20): the queue holds only the 2 x 32
    training rows, and evaluation runs outside any step context."""
    pytest.importorskip("transformers")
    _, hard = _data(64)
    _, _, loss_fn = _hf_train(tmp_path, hard, 16, 2, negatives="queue", eval_rows=40,
                              max_steps=2)
    assert int(loss_fn.queue_len) == 64 and loss_fn._step is None and loss_fn.training


# ------------------------------------------------------------------------------ timm task
def test_timm_task_checkpoint_keeps_the_loss_state(tmp_path):
    pytest.importorskip("timm")
    from timm.task import ClassificationTask

    from timm_task import load_checkpoint, save_checkpoint

    x, labels = _data(48)
    y = SoftTargets.mix(labels, labels.flip(0), 0.7, C, smoothing=0.1)

    def make(seed):
        loss_fn = SoftTargetInfoNCE(class_prior(labels, C), negatives="queue", queue_size=20)
        task = ClassificationTask(_mlp(seed), criterion=loss_fn, verbose=False)
        return task, torch.optim.SGD(task.trainable_module.parameters(), lr=0.1, momentum=0.9)

    def step(task, opt, i):
        opt.zero_grad()
        out = task(x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8])
        out["loss"].backward()
        opt.step()
        return float(out["loss"])

    task, opt = make(0)
    for i in range(3):
        step(task, opt, i)
    save_checkpoint(str(tmp_path / "ckpt.pt"), task, opt, epoch=1)
    straight = copy.deepcopy((task, opt))
    after = [step(*straight, i) for i in (3, 4)]
    task2, opt2 = make(7)
    assert load_checkpoint(str(tmp_path / "ckpt.pt"), task2, opt2) == 1
    assert torch.equal(task2.criterion.queue_indices, task.criterion.queue_indices)
    resumed = [step(task2, opt2, i) for i in (3, 4)]
    assert resumed == after


def test_hf_plain_compute_loss_func_is_wrong_under_accumulation(tmp_path):
    """The failure the recipe fixes: a mean-reduced compute_loss_func under accumulation 4 gives
    a loss about 4x too large (the Trainer does not divide it) over 16-row candidate sets."""
    pytest.importorskip("transformers")
    from transformers import Trainer, TrainingArguments

    x, hard = _data(64)
    data = [{"x": x[i], "labels": hard[i]} for i in range(64)]
    loss_fn = SoftTargetInfoNCE(class_prior(hard, C), temperature=0.7)
    args = TrainingArguments(
        output_dir=str(tmp_path / "plain"), per_device_train_batch_size=16,
        gradient_accumulation_steps=4, max_steps=1, learning_rate=0.0, optim="sgd",
        report_to="none", save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        remove_unused_columns=False, logging_strategy="no")

    class InOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return torch.utils.data.SequentialSampler(self.train_dataset)

    trainer = InOrder(model=_DictModel(), args=args, train_dataset=data,
                      compute_loss_func=lambda out, labels, num_items_in_batch=None:
                      loss_fn(out["logits"], labels))
    plain = trainer.train().training_loss
    z = _DictModel()(x)["logits"]
    micro = [float(loss_fn(z[i:i + 16], hard[i:i + 16])) for i in range(0, 64, 16)]
    assert plain == pytest.approx(sum(micro), rel=1e-5)       # 4x the mean of the micro-batches
    assert abs(sum(micro) / 4 - float(loss_fn(z, hard))) > 0.5   # 16 candidates, not 64
