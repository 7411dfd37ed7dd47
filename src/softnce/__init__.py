"""softnce: soft-target InfoNCE (Hugger & Uhlmann, arXiv 2404.14076) and its baselines.

Core API::

    from softnce import (soft_target_infonce, SoftTargetInfoNCE, InfoNCE,
                         SoftTargetCrossEntropy, class_prior, SoftTargets)

``softnce.load_run(run_dir, checkpoint="best")`` loads a finished training run for prediction
(imported lazily: ``import softnce`` needs only torch).

Hard NLL is ``torch.nn.CrossEntropyLoss``. Predictions are ``softmax(logits / temperature)``.
"""

from softnce.losses import (
    InfoNCE,
    SoftTargetCrossEntropy,
    SoftTargetInfoNCE,
    separated_infonce,
    soft_target_cross_entropy,
    soft_target_infonce,
)
from softnce.noise import class_prior, uniform_noise
from softnce.targets import SoftTargets

__version__ = "0.1.0"

__all__ = [
    "InfoNCE",
    "SoftTargetCrossEntropy",
    "SoftTargetInfoNCE",
    "SoftTargets",
    "class_prior",
    "separated_infonce",
    "soft_target_cross_entropy",
    "soft_target_infonce",
    "uniform_noise",
    "load_run",
    "__version__",
]


def __getattr__(name: str):
    """``softnce.load_run`` (and ``RunError``, ``LoadedRun``) without importing the harness at
    ``import softnce``."""
    if name in ("load_run", "LoadedRun", "RunError"):
        from softnce.harness import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'softnce' has no attribute {name!r}")
