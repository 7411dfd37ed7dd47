"""Safe reading of weight files: PyTorch checkpoints (``weights_only=True``) and safetensors.

:func:`load_state_dict_file` never executes code from a file. PyTorch files are read with
``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain containers; a
checkpoint whose pickle references anything else (a class, a function) is refused with a
``ValueError`` naming the file. The one extra type allowed is ``argparse.Namespace`` (its
reconstruction only sets attributes), because the MAE / DeiT / timm training scripts store their
command-line ``args`` next to the weights.
"""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["load_state_dict_file", "extract_state_dict"]

# Keys under which training scripts nest the weights, in order of preference.
_NESTED_KEYS = ("model", "state_dict", "module", "model_state", "model_state_dict")


def _torch_load(path: Path) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK\x03\x04); legacy files are a pickle (0x80 PROTO)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a "
                         f"pickle; found {head!r} at its start) nor a .safetensors file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"refusing to load checkpoint {path}: it contains pickled Python objects beyond "
            "tensors and plain containers, which would execute code when unpickled, so "
            "torch.load(weights_only=True) rejected it. softnce only loads weights-only "
            "checkpoints. If you trust the file, re-save just its tensors, e.g. "
            "torch.save({'model': ckpt['model']}, 'clean.pth') in a session where you load it "
            f"yourself, or convert it to safetensors. (torch said: {first})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"cannot read {path} as a PyTorch checkpoint (truncated or corrupt: "
                         f"{first})") from e


def extract_state_dict(obj: Any, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Find the tensor state dict inside a loaded checkpoint object.

    Accepts a flat ``{name: tensor}`` dict or one nested under ``model`` (MAE), ``state_dict``
    (timm train.py, Lightning), ``module`` ...; strips a ``module.`` prefix (DataParallel/DDP)
    when every key has it. Non-tensor entries of a flat dict (e.g. ``epoch``) are ignored.
    """
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"checkpoint {path}: expected a dict of tensors, found {type(obj).__name__}"
        )
    for key in _NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(
            f"checkpoint {path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]}); "
            f"expected a state dict, possibly nested under one of {list(_NESTED_KEYS)}"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weight file into a CPU ``{name: tensor}`` dict without executing code.

    ``*.safetensors`` files go through :func:`safetensors.torch.load_file`; anything else through
    ``torch.load(weights_only=True)``. Raises ``FileNotFoundError`` if ``path`` does not exist and
    ``ValueError`` for a file that is unsafe or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read {path} as a safetensors file: {e}") from e
    else:
        obj = _torch_load(path)
    return extract_state_dict(obj, path)
