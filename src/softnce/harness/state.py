"""Run state helpers: seeding and RNG state, atomic writes, provenance (commit, versions), the
learning-rate schedule and config comparison."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from softnce.harness.config import RUNTIME_ONLY_KEYS, TrainConfig
from softnce.harness.mixing import (
    numpy_state_from_dict,
    numpy_state_to_dict,
)


# ----------------------------------------------------------------------------- helpers
def move_to(obj: Any, device: torch.device) -> Any:
    """Move tensors (in tuples / lists / dicts) or objects with ``.to`` to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        moved = [move_to(o, device) for o in obj]
        return type(obj)(moved) if isinstance(obj, list) else tuple(moved)
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    if hasattr(obj, "to") and callable(obj.to):
        return obj.to(device)
    return obj


def _batch_len(labels: torch.Tensor) -> int:
    return int(labels.shape[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python / numpy / torch / CUDA RNG states as tensors and plain python."""
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": numpy_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(numpy_state_from_dict(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path.tmp``, fsync, then ``os.replace`` (never a half-written file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_commit() -> str | None:
    """The checkout's commit (``+dirty`` if modified), or None outside a git checkout."""
    root = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("softnce", "torch", "timm", "numpy", "scikit-learn", "torchvision",
                 "torch-geometric", "mnist1d"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to ``min_lr`` (see the module docstring)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = min(total, int(round(cfg.warmup_epochs * steps_per_epoch)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, frac)))



def _config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    now_plain = json.loads(json.dumps(now, default=str))
    keys = (set(saved) | set(now_plain)) - RUNTIME_ONLY_KEYS
    return sorted(k for k in keys if saved.get(k) != now_plain.get(k))

