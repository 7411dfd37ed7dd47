"""Model registry: ``@MODELS.register("name")`` on a factory ``build(bundle, cfg) -> nn.Module``.

Every model maps the ``model_input`` of a batch (see :mod:`softnce.data`) to logits ``(N, C)``
(for graphs: one row per node).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from softnce.registry import Registry

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def build_model(name: str, bundle, cfg) -> nn.Module:
    """Build a registered model; a name that is not registered but is a timm model name is
    handed to the ``"timm"`` factory (registered by :mod:`softnce.models.vit`)."""
    if name not in MODELS and "timm" in MODELS:
        from softnce._optional import require

        timm = require("timm", "images", f"model {name!r} (a timm model name)")

        if timm.is_model(name):
            return MODELS.get("timm")(bundle, cfg)
    return MODELS.get(name)(bundle, cfg)


def _import_builtin_modules() -> None:
    import importlib
    import importlib.util

    for mod in ("basic", "vit", "graph", "embedding"):
        name = f"{__name__}.{mod}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


_import_builtin_modules()
