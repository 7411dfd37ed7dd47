"""End-to-end tests of the training harness (softnce.harness.trainer) on the embedded data.

Every run pins torch to one CPU thread (``cpu_threads=1``): the models are tiny and the numbers
must be reproducible between processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from _helpers import free_port as _free_port
from softnce import SoftTargets
from softnce.data import DATASETS, DataBundle
from softnce.harness.config import ConfigError, load_config
from softnce.harness.evaluation import truth_metrics
from softnce.harness.mixing import BatchTargetBuilder
from softnce.harness.trainer import (
    KILL_ENV,
    LOSSES,
    NonFiniteLossError,
    Trainer,
    lr_at,
    register_loss,
    train,
)
from softnce.models import MODELS

NONTIME = ("epoch", "step", "train_loss", "lr", "top1", "top5", "ece", "mce", "ace", "nll",
           "brier", "n")


def cfg_for(tmp_path: Path, name: str = "run", **kw):
    base = dict(dataset="digits", epochs=1, cpu_threads=1, quiet=True,
                output_dir=str(tmp_path / name))
    base.update(kw)
    return load_config(**base)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def strip_time(recs: list[dict]) -> list[dict]:
    return [{k: r[k] for k in NONTIME if k in r} for r in recs]


# ---------------------------------------------------------------------- training works
@pytest.mark.parametrize("loss,extra", [
    ("nll", {}),
    ("infonce", {}),
    ("soft-ce", {"smoothing": 0.1, "mixup": 0.2}),
    ("soft-infonce", {"smoothing": 0.1, "mixup": 0.2}),
])
def test_each_loss_beats_chance_on_digits(tmp_path, loss, extra):
    summary = train(cfg_for(tmp_path, loss=loss, epochs=2, lr=2e-3, **extra))
    final = summary["final"]
    assert final["top1"] > 0.85, final  # chance is 0.10
    assert final["nll"] < 0.6 and 0 <= final["ece"] < 0.25 and final["brier"] < 0.3
    out = tmp_path / "run"
    for name in ("config.json", "run_info.json", "metrics.jsonl", "checkpoint.pt",
                 "val_logits.pt", "summary.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "summary.json").read_text())
    assert saved["final"]["top1"] == final["top1"] and set(saved) >= {"final", "best"}
    assert {"top1", "ece", "nll"} <= set(saved["best"])
    info = json.loads((out / "run_info.json").read_text())
    assert info["seed"] == 0 and info["versions"]["torch"] and "git_commit" in info
    assert json.loads((out / "config.json").read_text())["loss"] == loss
    vl = torch.load(out / "val_logits.pt", weights_only=True)
    assert vl["logits"].shape == (360, 10) and vl["labels"].shape == (360,)
    # the saved logits reproduce the reported accuracy
    assert (vl["logits"].argmax(1) == vl["labels"]).float().mean().item() == \
        pytest.approx(final["top1"])


@pytest.mark.parametrize("negatives", ["queue", "sampled", "simplex"])
def test_separated_negatives_modes_train(tmp_path, negatives):
    from softnce.harness.trainer import build_loss

    cfg = cfg_for(tmp_path, loss="soft-infonce", smoothing=0.1, mixup=0.2, epochs=2, lr=2e-3,
                  negatives=negatives, queue_size=256, num_negatives=64)
    summary = train(cfg)
    assert summary["final"]["top1"] > 0.8, summary["final"]
    from softnce.data import DATASETS

    crit = build_loss(cfg, DATASETS.get("digits")(cfg))
    assert crit.negatives == negatives
    # simplex negatives carry their own exact density correction: no class prior
    assert (crit.noise_probs is None) == (negatives == "simplex")


def test_same_seed_gives_identical_metrics_and_other_seed_differs(tmp_path):
    a = train(cfg_for(tmp_path, "a", loss="soft-infonce", smoothing=0.1, mixup=0.2,
                      max_steps=12))
    b = train(cfg_for(tmp_path, "b", loss="soft-infonce", smoothing=0.1, mixup=0.2,
                      max_steps=12))
    c = train(cfg_for(tmp_path, "c", loss="soft-infonce", smoothing=0.1, mixup=0.2,
                      max_steps=12, seed=1))
    assert strip_time([a["final"]]) == strip_time([b["final"]])
    assert a["final"]["nll"] != c["final"]["nll"]
    assert a["steps"] == 12 and a["complete"]


def test_checkpoint_is_weights_only_and_complete(tmp_path):
    train(cfg_for(tmp_path, loss="infonce", negatives="queue", queue_size=100, max_steps=5,
                  ema=0.9, accum_steps=2, clip_grad=1.0))
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["global_step"] == 5 and ck["complete"]
    assert ck["criterion"]["queue_len"].item() == 100  # queue filled and checkpointed
    assert ck["ema"] and ck["optimizer"]["state"]
    rng = ck["per_rank"][0]["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and isinstance(rng["numpy"]["keys"],
                                                                 torch.Tensor)
    assert not (tmp_path / "run" / "checkpoint.pt.tmp").exists()


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    """A subprocess run SIGKILLs itself in the middle of epoch 2 (after a mid-epoch checkpoint
    at step 20; 16 steps per epoch); resuming must end with exactly the metrics of an
    uninterrupted run. (synthetic data: no scikit-learn import in the subprocess.)"""
    args = ["--dataset", "synthetic", "--loss", "soft-infonce", "--epochs", "3", "--quiet",
            "--set", "cpu_threads=1", "--set", "ckpt_every_steps=5", "--set", "smoothing=0.1",
            "--set", "mixup=0.2", "--set", "negatives=queue", "--set", "queue_size=200",
            "--set", "dataset_options={n_train: 1024, n_val: 300}"]
    killed = tmp_path / "killed"
    env = dict(os.environ, **{KILL_ENV: "22"})
    proc = subprocess.run([sys.executable, "-m", "softnce", "train", *args, "--output-dir",
                           str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ck = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert ck["global_step"] == 20 and ck["step_in_epoch"] == 4 and not ck["complete"]
    assert len(records(killed)) == 1  # epoch 1 evaluated before the kill

    from softnce.cli import main

    assert main(["train", *args, "--output-dir", str(killed), "--resume"]) == 0
    assert main(["train", *args, "--output-dir", str(tmp_path / "straight")]) == 0
    resumed, straight = records(killed), records(tmp_path / "straight")
    assert len(resumed) == 3
    assert strip_time(resumed) == strip_time(straight)
    # a finished run resumed again does nothing and keeps its summary
    before = json.loads((killed / "summary.json").read_text())["final"]
    assert main(["train", *args, "--output-dir", str(killed), "--resume"]) == 0
    assert json.loads((killed / "summary.json").read_text())["final"] == before


@pytest.mark.parametrize("interval,expected", [(0.0, [1, 2, 3, 4, 5]), (25.0, [3, 5]),
                                               (1e6, [5])])
def test_epoch_end_checkpoints_follow_ckpt_every_seconds(tmp_path, monkeypatch, interval,
                                                         expected):
    """10 fake seconds per read of the checkpoint clock: with a 25 s interval the epoch ends
    write at epochs 3 (30 s after the start) and 5 (the final epoch always writes)."""
    import softnce.harness.rundir as rundir

    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(rundir, "_now", lambda: float(next(clock)))
    saved: list[int] = []
    orig = Trainer._save_checkpoint

    def spy(self, gen):
        saved.append(self.epoch)
        return orig(self, gen)

    monkeypatch.setattr(Trainer, "_save_checkpoint", spy)
    train(cfg_for(tmp_path, epochs=5, ckpt_every_seconds=interval), log=lambda m: None)
    assert saved == expected
    with pytest.raises(ConfigError, match="ckpt_every_seconds"):
        cfg_for(tmp_path, ckpt_every_seconds=-1.0)


@pytest.mark.parametrize("interval", [0.0, 25.0, 1e6])
def test_best_weights_are_written_with_the_checkpoints(tmp_path, monkeypatch, interval):
    """best.pt is written just before checkpoint.pt, and only when an evaluation since the
    last write made new best weights; each write holds the weights as they were at that
    evaluation (not at the write), and what ends on disk is the best evaluation's."""
    import softnce.harness.rundir as rundir
    import softnce.harness.runs as runs
    import softnce.harness.state as state

    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(rundir, "_now", lambda: float(next(clock)))
    writes: list[tuple[str, object]] = []
    snapshots: dict[float, dict] = {}
    orig_save, orig_best = state.atomic_save, runs.best_weights

    def spy_save(obj, path):
        writes.append((Path(path).name, obj["record"]["step"] if "record" in obj else None))
        return orig_save(obj, path)

    def spy_best(trainer, rec):
        payload = orig_best(trainer, rec)
        snapshots[rec["step"]] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        return payload

    monkeypatch.setattr(state, "atomic_save", spy_save)
    monkeypatch.setattr(rundir, "atomic_save", spy_save)
    monkeypatch.setattr(runs, "best_weights", spy_best)
    out = tmp_path / "run"
    summary = train(cfg_for(tmp_path, epochs=5, ckpt_every_seconds=interval), log=lambda m: None)
    names = [n for n, _ in writes if n in ("best.pt", "checkpoint.pt")]
    assert names.count("checkpoint.pt") == {0.0: 5, 25.0: 2, 1e6: 1}[interval]
    for i, name in enumerate(names):  # every best.pt write comes right before a checkpoint
        if name == "best.pt":
            assert names[i + 1] == "checkpoint.pt"
    best_steps = [step for n, step in writes if n == "best.pt"]
    assert best_steps and best_steps == sorted(set(best_steps))  # never rewritten unchanged
    assert set(best_steps) <= set(snapshots)  # only improvements are written
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["record"]["step"] == summary["best"]["step"] == best_steps[-1]
    want = snapshots[best_steps[-1]]  # the weights at that evaluation, bit for bit
    assert all(torch.equal(best["model"][k], want[k]) for k in want)


def test_first_step_checked_then_loss_checks_relaxed(tmp_path, monkeypatch):
    """The harness builds its loss with validate_args=True, checks the first optimiser step
    fully, then turns the loss's value checks off (its own non-finite check stays)."""
    from softnce import SoftTargetInfoNCE

    seen: list[bool] = []
    orig = SoftTargetInfoNCE.forward

    def spy(self, *a, **kw):
        if self.training:
            seen.append(self.validate_args)
        return orig(self, *a, **kw)

    monkeypatch.setattr(SoftTargetInfoNCE, "forward", spy)
    train(cfg_for(tmp_path, loss="soft-infonce", smoothing=0.1, max_steps=4), log=lambda m: None)
    assert seen == [True, False, False, False]
    seen.clear()          # and again at the first step of every epoch
    train(cfg_for(tmp_path, "two", loss="soft-infonce", smoothing=0.1, epochs=2),
          log=lambda m: None)
    per_epoch = len(seen) // 2
    assert [i for i, v in enumerate(seen) if v] == [0, per_epoch] and per_epoch > 2


# ------------------------------------------------------------------ plug-in extension
class _NanAfter(nn.Module):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, logits, targets):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, targets)
        return loss * float("nan") if self.calls > self.after else loss


if "test-nan-after-5" not in LOSSES:
    register_loss("test-nan-after-5", targets="hard")(lambda cfg, bundle: _NanAfter(5))
if "test-nan-after-40" not in LOSSES:
    register_loss("test-nan-after-40", targets="hard")(lambda cfg, bundle: _NanAfter(40))


def test_run_stopped_by_non_finite_loss_keeps_its_best_weights(tmp_path):
    """No checkpoint was due before the loss turned NaN after 40 training steps
    (ckpt_every_seconds is large), yet the best evaluation's weights reach best.pt on the way
    out."""
    cfg = cfg_for(tmp_path, loss="test-nan-after-40", epochs=10, ckpt_every_seconds=1e6)
    with pytest.raises(NonFiniteLossError):
        train(cfg, log=lambda m: None)
    out = tmp_path / "run"
    assert not (out / "checkpoint.pt").exists()
    recs = records(out)
    assert 1 <= len(recs) < 10  # stopped part-way, after at least one evaluation
    top = max(recs, key=lambda r: (r["top1"], -r["nll"]))
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["record"]["step"] == top["step"]
    assert all(torch.isfinite(v).all() for v in best["model"].values())


def test_resume_says_when_best_is_ahead_of_the_checkpoint(tmp_path):
    """A run stopped by an error after an improvement that no checkpoint covered leaves a
    best.pt ahead of checkpoint.pt; the resume keeps it and says so."""
    cfg = cfg_for(tmp_path, loss="test-nan-after-40", epochs=10, ckpt_every_seconds=1e6,
                  ckpt_every_steps=30)
    with pytest.raises(NonFiniteLossError):
        train(cfg, log=lambda m: None)
    out = tmp_path / "run"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["global_step"] == 30
    ahead = torch.load(out / "best.pt", weights_only=True)["record"]["step"]
    assert ahead > 30  # the evaluation after the checkpoint improved (digits: step 32)
    logs: list[str] = []
    with pytest.raises(NonFiniteLossError):
        train(cfg_for(tmp_path, loss="test-nan-after-40", epochs=10, ckpt_every_seconds=1e6,
                      ckpt_every_steps=30, resume=True), log=logs.append)
    assert any(f"evaluation at step {int(ahead)}, after this checkpoint's step 30" in m
               for m in logs), logs


def test_non_finite_loss_stops_naming_the_step_and_keeps_checkpoint(tmp_path, capsys):
    cfg = cfg_for(tmp_path, loss="test-nan-after-5", ckpt_every_steps=2)
    with pytest.raises(NonFiniteLossError, match="step 6"):
        train(cfg)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    from softnce.cli import main

    rc = main(["train", "--dataset", "digits", "--loss", "test-nan-after-5", "--quiet",
               "--set", "cpu_threads=1", "--output-dir", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert rc == 1 and "non-finite" in err and "step 6" in err and "Traceback" not in err


class _Hooked(nn.Module):
    """A model with the optional engine hooks (counts their calls)."""

    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, c)
        self.loss_calls = self.stats_calls = 0

    def forward(self, x):
        return self.lin(x)

    def compute_loss(self, x, targets, criterion):
        self.loss_calls += 1
        return criterion(self(x), targets)

    def eval_stats(self, x, labels, temperature):
        self.stats_calls += 1
        p = torch.softmax(self(x) / temperature, 1)
        conf, pred = p.max(1)
        acc = (pred == labels).double()
        onehot = nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)
        top5 = (p.topk(5, 1).indices == labels[:, None]).any(1).double()
        return {"confidences": conf, "accuracies": acc,
                "nll": -p.gather(1, labels[:, None]).squeeze(1).log(),
                "brier": ((p - onehot) ** 2).sum(1), "topk_correct": {1: acc, 5: top5},
                "predictions": pred}


_HOOKED: list[_Hooked] = []
if "test-hooked" not in MODELS:
    @MODELS.register("test-hooked")
    def _build_hooked(bundle, cfg):
        m = _Hooked(int(np.prod(bundle.input_shape)), bundle.num_classes)
        _HOOKED.append(m)
        return m


def test_model_hooks_compute_loss_and_eval_stats_are_used(tmp_path):
    summary = train(cfg_for(tmp_path, model="test-hooked", loss="soft-ce", smoothing=0.1,
                            epochs=2, lr=1e-2))
    m = _HOOKED[-1]
    assert m.loss_calls == 2 * (1077 // 64) and m.stats_calls > 0  # 1077 training rows
    assert summary["final"]["top1"] > 0.8
    assert not (tmp_path / "run" / "val_logits.pt").exists()  # no full logits with eval_stats


if "test-masked" not in DATASETS:
    @DATASETS.register("test-masked")
    def _build_masked(cfg) -> DataBundle:
        """digits with every third sample masked out (as graph node masks would)."""
        base = DATASETS.get("digits")(cfg)
        def with_mask(ds):
            x, y = ds.tensors
            return TensorDataset(x, y, torch.arange(len(y)) % 3 != 0)
        return DataBundle(name="test-masked", kind="graph", train=with_mask(base.train),
                          val=with_mask(base.val), num_classes=10, input_shape=(64,),
                          train_labels=base.train_labels, default_model="mlp",
                          unpack=lambda b: (b[0], b[1], None, b[2]))


def test_masked_rows_are_excluded_from_loss_and_metrics(tmp_path):
    summary = train(cfg_for(tmp_path, dataset="test-masked", loss="soft-infonce",
                            smoothing=0.1, epochs=2))
    assert summary["final"]["n"] == sum(1 for i in range(360) if i % 3 != 0)
    assert summary["final"]["top1"] > 0.8
    with pytest.raises(ConfigError, match="graph"):
        train(cfg_for(tmp_path, "mix", dataset="test-masked", loss="soft-ce", mixup=0.2))


# ------------------------------------------------------------------------ data sets
def test_synthetic_reports_calibration_against_the_truth(tmp_path):
    s = train(cfg_for(tmp_path, dataset="synthetic", loss="infonce", epochs=2,
                      dataset_options={"n_train": 1000, "n_val": 500}))["final"]
    assert 0 <= s["kl_to_truth"] < 0.5 and 0 <= s["ece_to_truth"] < 0.3
    assert 0.3 < s["bayes_top1"] < 1 and s["top1"] <= s["bayes_top1"] + 0.06
    # the truth metrics of the truth itself are zero
    from softnce.data.tabular import make_synthetic

    d = make_synthetic(n_train=10, n_val=50)
    t = truth_metrics(torch.as_tensor(np.log(d["p_val"])), torch.as_tensor(d["p_val"]), 1.0)
    assert t["kl_to_truth"] == pytest.approx(0, abs=1e-9)
    assert t["ece_to_truth"] == pytest.approx(0, abs=1e-9)


def test_mnist1d_is_generated_offline(tmp_path, monkeypatch):
    import socket

    from softnce.data.tabular import _mnist1d_arrays

    def no_network(*a, **k):
        raise AssertionError("mnist1d tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    _mnist1d_arrays.cache_clear()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    cfg = cfg_for(tmp_path, dataset="mnist1d", loss="nll", max_steps=3,
                  dataset_options={"num_samples": 500})
    bundle = DATASETS.get("mnist1d")(cfg)
    assert np.array_equal(np.random.get_state()[1], before)  # global RNG restored
    # the generator's 400 / 100 train / test; the calibration split is carved from train
    assert len(bundle.train) == 320 and len(bundle.val) == 80 and len(bundle.test) == 100
    assert bundle.input_shape == (40,) and bundle.default_model == "cnn"
    train(cfg)
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["model"] == "cnn" and info["dataset"]["n_train"] == 320


def test_user_tabular_data_from_data_path(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "mydata"
    root.mkdir()
    for split, n in (("train", 300), ("val", 100)):
        y = rng.integers(0, 3, n)
        x = rng.normal(size=(n, 5)) + 3 * np.eye(3, 5)[y]
        np.savez(root / f"{split}.npz", x=x, y=y)
    s = train(cfg_for(tmp_path, dataset="tabular", data_path=str(root), loss="nll",
                      epochs=3, batch_size=32))
    assert s["final"]["top1"] > 0.8


# -------------------------------------------------------------------- soft targets
def _cfg_ns(**kw):
    from softnce.harness.config import TrainConfig

    c = TrainConfig()
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_vector_mixup_builds_sparse_soft_targets():
    b = BatchTargetBuilder(_cfg_ns(mixup=0.4, smoothing=0.1), "tabular", 10, hard=False, seed=3)
    x = torch.randn(8, 4)
    labels = torch.arange(8) % 10
    xm, t = b(x, labels)
    assert isinstance(t, SoftTargets) and t.k == 2
    dense = t.to_dense()
    assert torch.allclose(dense.sum(1), torch.ones(8))
    lam = (t.weights[:, 0] / 0.9)[0].item()
    perm = t.indices[:, 1]
    assert torch.allclose(xm, lam * x + (1 - lam) * x[perm], atol=1e-6)
    # the RNG state round-trips
    state = b.state_dict()
    _, t1 = b(x, labels)
    b.load_state_dict(state)
    _, t2 = b(x, labels)
    assert torch.equal(t1.weights, t2.weights) and torch.equal(t1.indices, t2.indices)


def test_image_mixup_uses_timm_and_graph_soft_targets_are_smoothed():
    b = BatchTargetBuilder(_cfg_ns(mixup=0.8, cutmix=1.0, smoothing=0.1), "image", 5,
                           hard=False)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    _, t = b(x, y)
    assert isinstance(t, SoftTargets) and t.k == 2 and t.shape == (4, 5)
    assert torch.allclose(t.to_dense().sum(1), torch.ones(4))
    g = BatchTargetBuilder(_cfg_ns(smoothing=0.2), "graph", 4, hard=False)
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    _, t = g(None, torch.tensor([0]), soft)
    assert torch.allclose(t, 0.8 * soft + 0.05)
    h = BatchTargetBuilder(_cfg_ns(), "tabular", 4, hard=True)
    assert h(x, y)[1] is y
    with pytest.raises(ValueError, match="cutmix needs image data"):
        BatchTargetBuilder(_cfg_ns(cutmix=1.0), "tabular", 4, hard=False)


def test_lr_schedule_warmup_then_cosine():
    cfg = _cfg_ns(lr=1.0, min_lr=0.0, warmup_epochs=1.0, epochs=3)
    lrs = [lr_at(s, cfg, 10) for s in range(30)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.5, abs=0.01)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


# ------------------------------------------------------------------------ distributed
DDP_SCRIPT = textwrap.dedent("""
    import hashlib, json, os, sys
    import torch
    from softnce.harness.config import load_config
    from softnce.harness.trainer import Trainer
    out = sys.argv[1]
    cfg = load_config(dataset="synthetic", loss="soft-infonce", smoothing=0.1, mixup=0.2,
                      epochs=1, max_steps=4, batch_size=32, cpu_threads=1, quiet=True,
                      dataset_options={"n_train": 512, "n_val": 301}, output_dir=out + "/run")
    t = Trainer(cfg)
    s = t.run()
    h = hashlib.sha256()
    for v in t.model.state_dict().values():
        h.update(v.detach().cpu().numpy().tobytes())
    with open(out + f"/rank{os.environ['RANK']}.json", "w") as f:
        json.dump({"digest": h.hexdigest(), "final": s["final"], "world": t.world}, f)
""")


def test_two_process_gloo_ddp_ranks_agree(tmp_path):
    """Two gloo processes with the environment torchrun sets (RANK, WORLD_SIZE, MASTER_*);
    launched directly to save torchrun's extra agent process on this small machine."""
    script = tmp_path / "ddp_job.py"
    script.write_text(DDP_SCRIPT)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["digest"] == r1["digest"]  # DDP kept the replicas identical
    assert strip_time([r0["final"]]) == strip_time([r1["final"]])  # metrics all-reduced
    assert r0["final"]["n"] == 301  # every validation sample counted once (odd: uneven shards)
    assert "kl_to_truth" in r0["final"]
    # the logits gathered from the two shards are back in validation order
    from softnce.data.tabular import make_synthetic

    saved = torch.load(tmp_path / "run" / "val_logits.pt", weights_only=True)
    y_val = make_synthetic(n_train=512, n_val=301)["y_val"]
    assert torch.equal(saved["labels"], torch.as_tensor(y_val))
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["world_size"] == 2


def test_trainer_rejects_unavailable_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(cfg_for(tmp_path, device="cuda"))


def _digest(sd: dict) -> str:
    h = hashlib.sha256()
    for v in sd.values():
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def test_finetune_loads_matching_weights(tmp_path):
    train(cfg_for(tmp_path, "src", loss="nll", max_steps=3))
    ck = tmp_path / "src" / "checkpoint.pt"
    t = Trainer(cfg_for(tmp_path, "ft", loss="nll", max_steps=1, finetune=str(ck)))
    t._setup_distributed()
    t._build()
    src = torch.load(ck, weights_only=True)["model"]
    assert _digest(t.model.state_dict()) == _digest(src)
