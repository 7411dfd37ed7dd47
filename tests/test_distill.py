"""Knowledge distillation (``--teacher``): target maths, teacher loading, cache, resume, DDP,
``softnce study distill --quick``. Tiny synthetic runs (no scikit-learn in subprocesses)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _helpers import free_port
from softnce import SoftTargets
from softnce.harness.config import ConfigError, load_config
from softnce.harness.distill import Distiller, mix_targets, teacher_targets, topk_targets
from softnce.harness.trainer import KILL_ENV, Trainer, train

DATA = {"n_train": 512, "n_val": 301}
NONTIME = ("epoch", "step", "train_loss", "lr", "top1", "top5", "ece", "nll", "brier")


def _cfg(out: Path, **kw):
    base = dict(dataset="synthetic", epochs=1, cpu_threads=1, quiet=True,
                dataset_options=DATA, output_dir=str(out))
    base.update(kw)
    return load_config(**base)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "t"
    train(_cfg(out, loss="nll", epochs=2, model_options={"hidden": [64]}))
    return out


def _records(out: Path) -> list[dict]:
    return [{k: r[k] for k in NONTIME}
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


# ------------------------------------------------------------------------------ target maths
def test_topk_targets_equal_dense_on_kept_classes_and_carry_the_rest_uniformly():
    torch.manual_seed(0)
    z, t, c, k = torch.randn(7, 10) * 3, 2.0, 10, 3
    dense = F.softmax(z / t, dim=1)
    st = topk_targets(z, t, k)
    assert isinstance(st, SoftTargets) and st.k == k
    st.validate()  # non-negative, rows sum to 1
    got = st.to_dense()
    kept = dense.topk(k, dim=1).indices
    assert torch.allclose(got.gather(1, kept), dense.gather(1, kept), atol=1e-6)
    rest = 1 - dense.gather(1, kept).sum(1)
    drop = torch.ones_like(dense, dtype=torch.bool).scatter_(1, kept, False)
    assert torch.allclose(got[drop].view(7, c - k), (rest / (c - k))[:, None].expand(7, c - k),
                          atol=1e-6)
    assert torch.allclose(st.uniform, rest * c / (c - k), atol=1e-6)
    full = topk_targets(z, t, c)  # k = C: exactly the dense target
    assert torch.equal(full.to_dense(), dense) and torch.equal(full.uniform, torch.zeros(7))
    assert torch.equal(teacher_targets(z, t), dense)
    # sparse mix with the own (smoothed) targets equals the dense mix
    own = SoftTargets.label_smoothing(torch.arange(7) % c, c, 0.1)
    mixed = mix_targets(st, own, 0.3)
    assert isinstance(mixed, SoftTargets) and mixed.k == k + 1
    assert torch.allclose(mixed.to_dense(), 0.3 * got + 0.7 * own.to_dense(), atol=1e-6)
    assert torch.allclose(mix_targets(dense, own, 0.3), 0.3 * dense + 0.7 * own.to_dense())


# ------------------------------------------------------------------------------ refusal
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_teacher_with_code_carrying_checkpoint_is_refused_and_payload_never_runs(teacher,
                                                                                    tmp_path):
    from softnce.cli import main

    bad, marker = tmp_path / "bad", tmp_path / "PWNED"
    shutil.copytree(teacher, bad)
    for name in ("best.pt", "checkpoint.pt"):
        torch.save({"model": _Payload(marker)}, bad / name)
    with pytest.raises(SystemExit) as e:
        main(["train", "--dataset", "synthetic", "--loss", "soft-ce", "--teacher", str(bad),
              "--quiet", "--set", "dataset_options={n_train: 512, n_val: 301}",
              "--output-dir", str(tmp_path / "s")])
    assert e.value.code == 2
    assert not marker.exists()


@pytest.mark.parametrize("args,match", [
    (["--dataset", "synthetic", "--num-classes", "5"], "classes"),
    (["--dataset", "synthetic", "--set", "dataset_options={n_train: 256, n_val: 301}"],
     "dataset_options"),
    (["--dataset", "synthetic", "--loss", "nll"], "soft-target loss"),
])
def test_mismatched_teacher_is_refused_with_exit_2(teacher, tmp_path, capsys, args, match):
    from softnce.cli import main

    argv = ["train", "--loss", "soft-ce", *args, "--teacher", str(teacher), "--quiet",
            "--output-dir", str(tmp_path / "s")]
    if "dataset_options" not in " ".join(args):
        argv += ["--set", "dataset_options={n_train: 512, n_val: 301}"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "s" / "checkpoint.pt").exists()


def test_unfinished_teacher_dir_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a finished run"):
        train(_cfg(tmp_path / "s", loss="soft-ce", teacher=str(tmp_path / "empty")))


# ------------------------------------------------------------------------------ frozen teacher
def test_teacher_is_frozen_eval_mode_outside_the_optimizer_and_unchanged(teacher, tmp_path):
    before = torch.load(teacher / "best.pt", weights_only=True)["model"]
    t = Trainer(_cfg(tmp_path / "s", loss="soft-infonce", teacher=str(teacher), mixup=0.2,
                     kd_topk=3, kd_alpha=0.5, kd_temperature=2.0, max_steps=6))
    t.run()
    d = t.distiller
    assert d.cache is None and d.teacher_forwards == 6  # mixup: one forward per step
    assert not d.teacher.training
    assert all(not p.requires_grad for p in d.teacher.parameters())
    in_opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in d.teacher.parameters()}
    after = d.teacher.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------ cache
def test_cache_replaces_per_step_forwards_and_is_rebuilt_when_the_teacher_changes(teacher,
                                                                                 tmp_path):
    t = Trainer(_cfg(tmp_path / "s", loss="soft-ce", teacher=str(teacher), max_steps=6))
    t.run()
    d = t.distiller
    assert d.cache is not None and d.teacher_forwards == 1  # one chunk of 512 rows, no steps
    saved = torch.load(tmp_path / "s" / "teacher_logits.pt", weights_only=True)
    assert saved["logits"].shape == (512, 10)
    # the cached rows are the teacher's logits of exactly those samples
    x = torch.stack([t.bundle.train[i][0] for i in range(5)])
    assert torch.allclose(saved["logits"][:5], d.teacher(x), atol=1e-5)
    assert t.bundle.train[3][-1].item() == 3  # the train split yields sample indices

    cfg = t.cfg
    again = Distiller(cfg, t.bundle, torch.device("cpu"), tmp_path / "s", 0, False)
    assert again.teacher_forwards == 0  # key matched: loaded, no teacher forward
    # a changed teacher (other weights at the same path) invalidates the cache
    moved = tmp_path / "t2"
    shutil.copytree(teacher, moved)
    best = torch.load(moved / "best.pt", weights_only=True)
    best["model"] = {k: v + 0.01 if v.is_floating_point() else v
                     for k, v in best["model"].items()}
    torch.save(best, moved / "best.pt")
    shutil.copy(tmp_path / "s" / "teacher_logits.pt", tmp_path / "stale.pt")
    d2 = Distiller(cfg.replace(teacher=str(moved)), t.bundle, torch.device("cpu"),
                   tmp_path / "s", 0, False)
    assert d2.teacher_forwards == 1
    new = torch.load(tmp_path / "s" / "teacher_logits.pt", weights_only=True)
    assert new["key"] != saved["key"] and not torch.allclose(new["logits"], saved["logits"])
    with pytest.raises(ConfigError, match="kd_cache=true"):
        Distiller(cfg.replace(mixup=0.2, kd_cache=True), t.bundle, torch.device("cpu"),
                  tmp_path / "s3", 0, False)


# ------------------------------------------------------------------------------ resume
def test_resume_after_sigkill_with_teacher_equals_uninterrupted(teacher, tmp_path):
    args = ["--dataset", "synthetic", "--loss", "soft-infonce", "--epochs", "2", "--quiet",
            "--teacher", str(teacher), "--set", "cpu_threads=1", "--set", "ckpt_every_steps=5",
            "--set", "mixup=0.2", "--set", "kd_topk=3", "--set", "kd_alpha=0.5",
            "--set", "kd_temperature=2", "--set", "dataset_options={n_train: 512, n_val: 301}"]
    killed = tmp_path / "killed"
    env = dict(os.environ, **{KILL_ENV: "12"})
    proc = subprocess.run([sys.executable, "-m", "softnce", "train", *args, "--output-dir",
                           str(killed)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["global_step"] == 10
    from softnce.cli import main

    assert main(["train", *args, "--output-dir", str(killed), "--resume"]) == 0
    assert main(["train", *args, "--output-dir", str(tmp_path / "straight")]) == 0
    assert _records(killed) == _records(tmp_path / "straight")


# ------------------------------------------------------------------------------ distributed
DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from softnce.harness.config import load_config
    from softnce.harness.trainer import Trainer
    out, teacher = sys.argv[1], sys.argv[2]
    cfg = load_config(dataset="synthetic", loss="soft-ce", teacher=teacher, kd_temperature=2.0,
                      kd_alpha=0.5, epochs=1, batch_size=32, cpu_threads=1, quiet=True,
                      model_options={"dropout": 0.0}, dataset_options={"n_train": 512,
                      "n_val": 301}, output_dir=out + "/run")
    t = Trainer(cfg)
    s = t.run()
    with open(out + f"/rank{os.environ['RANK']}.json", "w") as f:
        json.dump({"final": s["final"], "cached": t.distiller.cache is not None}, f)
""")


def test_two_process_gloo_with_teacher_agrees_with_one_process(teacher, tmp_path):
    """2 ranks x batch 32 see the same 64 samples per step as 1 process x batch 64 (the
    sampler interleaves one permutation); the cached teacher rows follow the indices."""
    script = tmp_path / "job.py"
    script.write_text(DDP_SCRIPT)
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path), str(teacher)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, (i, sorted(x.name for x in tmp_path.iterdir()), err[-3000:])
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    assert r0["cached"]
    one = train(_cfg(tmp_path / "one", loss="soft-ce", teacher=str(teacher), kd_temperature=2.0,
                     kd_alpha=0.5, batch_size=64, model_options={"dropout": 0.0}))["final"]
    two = r0["final"]
    assert two["step"] == one["step"] == 8
    for k in ("nll", "ece", "brier", "train_loss"):
        assert two[k] == pytest.approx(one[k], abs=2e-4), k
    assert abs(two["top1"] - one["top1"]) <= 1 / 301 + 1e-9


# ------------------------------------------------------------------------------ study
def test_study_distill_quick_end_to_end(tmp_path):
    from softnce.cli import main

    out = tmp_path / "study"
    assert main(["study", "distill", "--quick", "--quiet", "--output-dir", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["dataset"] == "digits" and s["settings"]["seeds"] == [0, 1]
    assert set(s["cells"]) == {"nll", "soft-ce_T2_a1", "soft-infonce_T2_a1"}
    assert all(r["metrics"]["kl"] >= 0 and "kl_ts" in r["metrics"] for r in s["runs"])
    assert any(v["metric"] == "top1" and "classic KD" in v["sentence"] for v in s["verdicts"])
    report = (out / "report.md").read_text()
    assert "Verdicts" in report and (out / "results.csv").is_file()
