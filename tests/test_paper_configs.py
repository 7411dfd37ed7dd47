"""The paper's recipe files ``configs/paper/*.yaml``: their values, and two training steps each
through ``softnce train`` with a miniature ViT on synthetic data in each data set's real layout."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed

from softnce.cli import main as softnce_main
from softnce.harness.config import CONFIG_DIR, load_config

PAPER = CONFIG_DIR / "paper"
DATASETS = ("imagenet", "tiny-imagenet", "cifar100")
LOSSES = ("nll", "infonce", "soft-ce", "soft-infonce")
CONFIGS = sorted(PAPER.glob("*.yaml"))
# blr of the soft-target InfoNCE runs (paper README); baselines use MAE's ViT-B blr 5e-4.
SOFT_INFONCE_BLR = {"imagenet": 5.5e-4, "tiny-imagenet": 2.5e-4, "cifar100": 5.5e-4}
TINY = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def _split(path: Path) -> tuple[str, str]:
    ds = next(d for d in DATASETS if path.stem.startswith(d + "-"))
    return ds, path.stem[len(ds) + 1:]


def test_one_config_per_dataset_and_loss():
    assert sorted(_split(p) for p in CONFIGS) == sorted(
        (d, loss) for d in DATASETS for loss in LOSSES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_matches_the_paper_recipe(path):
    ds, loss = _split(path)
    cfg = load_config(path)
    cfg.validate()
    assert (cfg.dataset, cfg.loss) == (ds, loss)
    assert cfg.model == "vit_base_patch16_224" and cfg.head == "mlp"
    assert cfg.model_options == {"head_hidden_dim": 4096}
    assert cfg.input_size == 224 and cfg.drop_path == 0.1
    assert (cfg.epochs, cfg.warmup_epochs, cfg.batch_size) == (100, 5, 128)
    assert (cfg.optimizer, cfg.weight_decay, cfg.layer_decay, cfg.min_lr) == (
        "adamw", 0.05, 0.65, 1e-6)
    blr = SOFT_INFONCE_BLR[ds] if loss == "soft-infonce" else 5e-4
    assert math.isclose(cfg.lr, blr * 8 * 128 / 256, rel_tol=1e-9)
    assert cfg.temperature == 1.0 and cfg.noise == "prior"
    soft = loss.startswith("soft")
    assert (cfg.mixup, cfg.cutmix, cfg.smoothing) == ((0.8, 1.0, 0.1) if soft else (0, 0, 0))
    assert (cfg.mix_prob, cfg.switch_prob) == (0.8, 0.5)
    aug = cfg.augment_options()
    assert aug["aa"] == "rand-m9-mstd0.5-inc1" and aug["interpolation"] == "bicubic"
    assert (aug["reprob"], aug["remode"], aug["recount"], aug["crop_pct"]) == (
        0.25, "pixel", 1, None)


# -- synthetic copies of the three layouts ---------------------------------------------------------


def _jpeg(path: Path, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path, "JPEG")


def _make_imagenet(root: Path, rng) -> None:
    for c in ("n01", "n02", "n03", "n04"):
        for i in range(3):
            _jpeg(root / "train" / c / f"{c}_{i}.JPEG", rng)
        _jpeg(root / "val" / c / f"ILSVRC2012_val_{c}.JPEG", rng)


def _make_tiny(root: Path, rng) -> None:
    wnids = ["n09", "n02", "n05", "n01"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for k, w in enumerate(wnids):
        for i in range(3):
            _jpeg(root / "train" / w / "images" / f"{w}_{i}.JPEG", rng)
        _jpeg(root / "val" / "images" / f"val_{k}.JPEG", rng)
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def _make_cifar100(root: Path, rng) -> None:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    for name, labels in (("train", [3, 7, 3, 99, 0, 7, 42, 3, 0, 99, 7, 1]), ("test", [3, 7, 0, 99])):
        with open(d / name, "wb") as f:
            pickle.dump({"fine_labels": labels, "coarse_labels": [0] * len(labels),
                         "data": rng.integers(0, 256, (len(labels), 3072), np.uint8).tobytes()}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-data")
    rng = np.random.default_rng(0)
    _make_imagenet(root / "imagenet", rng)
    _make_tiny(root / "tiny" / "tiny-imagenet-200", rng)
    _make_cifar100(root / "cifar", rng)
    # a miniature MAE pre-training checkpoint at 16 px (2x2 patch grid): decoder + mask token
    torch.manual_seed(0)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, num_classes=0,
                            global_pool="token", **TINY)
    sd = dict(enc.state_dict())
    sd["mask_token"] = torch.zeros(1, 1, 16)
    sd["decoder_embed.weight"] = torch.zeros(16, TINY["embed_dim"])
    sd["decoder_pred.weight"] = torch.zeros(192, 16)
    torch.save({"model": sd}, root / "mae_tiny.pth")
    return root


PATHS = {"imagenet": "imagenet", "tiny-imagenet": "tiny", "cifar100": "cifar"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_two_training_steps_through_the_harness(path, data_root, tmp_path):
    ds, loss = _split(path)
    out = tmp_path / "run"
    argv = [
        "train", "--config", str(path), "--data-path", str(data_root / PATHS[ds]),
        "--model", "vit_tiny_patch16_224", "--input-size", "32", "--max-steps", "2",
        "--batch-size", "4", "--device", "cpu", "--quiet", "--output-dir", str(out),
        "--finetune", str(data_root / "mae_tiny.pth"),
        "--set", "workers=0", "--set", "eval_batch_size=8",
        "--set", "dataset_options.calibration_fraction=0",  # tiny fake sets: keep every image
        "--set", "model_options.head_hidden_dim=16",
        "--set", "model_options.timm_kwargs={patch_size: 8, embed_dim: 32, depth: 2, "
                 "num_heads: 2}",
    ]
    assert softnce_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["loss"] == loss and summary["dataset"] == ds
    final = summary["final"]
    assert all(math.isfinite(final[k]) for k in ("top1", "nll", "ece"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["layer_decay"] == 0.65 and cfg["head"] == "mlp"
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    weights = ckpt["model"]
    assert weights["head.layers.0.weight"].shape == (16, TINY["embed_dim"])  # the MLP head
    assert "head.layers.7.running_mean" in weights
    # loaded by the ViT factory: MAE position embedding resampled from 2x2 to 4x4 patches (two
    # warm-up steps at lr ~1e-5 move it far less than the 0.02-std random init would differ)
    mae = torch.load(data_root / "mae_tiny.pth", weights_only=True)["model"]
    expected = resample_abs_pos_embed(mae["pos_embed"], new_size=[4, 4], num_prefix_tokens=1)
    assert weights["pos_embed"].shape == expected.shape == (1, 17, TINY["embed_dim"])
    assert torch.allclose(weights["pos_embed"], expected, atol=1e-3)
    logits = torch.load(out / "val_logits.pt", weights_only=True)["logits"]
    assert logits.shape == (4, 100 if ds == "cifar100" else 4)


def test_compare_presets_equal_the_yaml_files():
    import dataclasses

    import softnce.data  # noqa: F401  (importing the data modules registers their presets)
    from softnce.experiments.compare import resolve_runs

    for path in CONFIGS:
        ds, loss = _split(path)
        [(name, seed, cfg)] = resolve_runs(ds, losses=[loss], seeds=[0], output_dir="unused")
        from_preset = dataclasses.asdict(cfg)
        from_yaml = dataclasses.asdict(load_config(path))
        for d in (from_preset, from_yaml):
            d.pop("output_dir")
        assert (name, seed) == (loss, 0)
        assert from_preset == from_yaml, path.name
