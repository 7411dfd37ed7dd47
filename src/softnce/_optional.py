"""Optional dependencies: one clear error naming the extra to install.

The core (losses, targets, noise, distributed, embedded, metrics) needs only torch (and numpy).
The harness, the data sets and the models import their packages lazily through :func:`require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingDependencyError", "require"]

#: extra -> what it brings (``pip install 'softnce[EXTRA]'``)
EXTRAS = {
    "train": "the harness and the embedded data sets: pyyaml, rich, scikit-learn, matplotlib, "
             "mnist1d, scipy, safetensors",
    "images": "image data sets and models: timm, torchvision, pillow",
    "graph": "CellTypeGraph: torch-geometric, h5py",
    "loops": "other people's training loops: torchmetrics, lightning, transformers, accelerate",
    "all": "train, images and graph",
}

#: import name -> distribution name (where they differ)
_DIST = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow",
         "torch_geometric": "torch-geometric"}


class MissingDependencyError(ImportError):
    """An optional package is not installed; the message names the extra that brings it."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist = _DIST.get(module.split(".")[0], module.split(".")[0])
        raise MissingDependencyError(
            f"{purpose} needs the optional package {dist!r}, which is not installed; install "
            f"it with: pip install 'softnce[{extra}]'") from e
