"""Small models for the embedded data sets: ``mlp`` and ``cnn``, plus the head registry.

Every model here is ``FeatureClassifier(backbone, head)``: the backbone maps the batch input to
features ``(N, D)``, the head (``HEADS``: ``linear``, ``mlp``; ``embedding`` comes from
:mod:`softnce.models.embedding`) maps features to logits ``(N, C)``. If the head defines the
optional hooks ``compute_loss(features, targets, criterion, **kw)`` /
``eval_stats(features, labels, temperature, **kw)``, the classifier exposes them to the engine
with the backbone applied first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from softnce.models import MODELS
from softnce.registry import Registry, merge_options

__all__ = ["HEADS", "FeatureClassifier", "build_head", "MLPBackbone", "CNNBackbone"]

HeadFactory = Callable[..., nn.Module]
#: ``build(in_features, num_classes, cfg) -> nn.Module`` mapping features (N, D) to logits.
HEADS: Registry[HeadFactory] = Registry("head")


def _options(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return merge_options("model_options", f"model {name!r}", given, defaults)


#: Widest layer a model option may ask for (wider is a typo, and would allocate gigabytes).
MAX_WIDTH = 65536


def _int_list(name: str, value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WIDTH for v in value
    ) or len(value) > 1000:
        raise ValueError(f"model_options {name} must be a list of ints in [1, {MAX_WIDTH}]; "
                         f"found {value!r:.80}")
    return list(value)


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"model_options {name} must be a float in [0, 1); found {value!r}")
    return float(value)


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model_options norm must be one of layer, batch, none; found {kind!r}")


# ----------------------------------------------------------------------------- heads
@HEADS.register("linear", help="one linear layer features -> C logits")
def _linear_head(in_features: int, num_classes: int, cfg: Any) -> nn.Module:
    return nn.Linear(in_features, num_classes)


@HEADS.register("mlp", help="Linear-GELU-Linear head (hidden width = feature width)")
def _mlp_head(in_features: int, num_classes: int, cfg: Any) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, in_features), nn.GELU(), nn.Linear(in_features, num_classes)
    )


def build_head(name: str, in_features: int, num_classes: int, cfg: Any) -> nn.Module:
    """Build a registered head (``ValueError`` listing the choices if unknown)."""
    return HEADS.get(name)(in_features, num_classes, cfg)


class FeatureClassifier(nn.Module):
    """``head(backbone(x))``, forwarding the head's optional engine hooks."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        # The engine checks ``hasattr(model, "compute_loss")``: expose only what the head has.
        if hasattr(head, "compute_loss"):
            self.compute_loss = self._compute_loss
        if hasattr(head, "eval_stats"):
            self.eval_stats = self._eval_stats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def _compute_loss(self, x: Any, targets: Any, criterion: nn.Module, **kw: Any) -> torch.Tensor:
        return self.head.compute_loss(self.backbone(x), targets, criterion, **kw)

    def _eval_stats(self, x: Any, labels: torch.Tensor, temperature: float, **kw: Any) -> dict:
        return self.head.eval_stats(self.backbone(x), labels, temperature, **kw)


# ------------------------------------------------------------------------- backbones
class MLPBackbone(nn.Module):
    """Flatten, then ``[Linear -> norm -> GELU -> Dropout] x len(hidden)``."""

    def __init__(self, in_features: int, hidden: list[int], dropout: float, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _norm(norm, h), nn.GELU(), nn.Dropout(dropout)]
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNNBackbone(nn.Module):
    """Conv blocks ``[Conv(k=3) -> BatchNorm -> GELU -> MaxPool(2)]`` then global average pool.

    1-D convolutions for ``(L,)`` / ``(C, L)`` inputs, 2-D for ``(C, H, W)``; flat vectors are
    first reshaped to ``image_shape`` when given. Pooling stops once a spatial side reaches 1.
    """

    def __init__(self, input_shape: tuple[int, ...], channels: list[int], dropout: float,
                 image_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        shape = tuple(image_shape) if image_shape else tuple(input_shape)
        if image_shape and math.prod(image_shape) != math.prod(input_shape):
            raise ValueError(f"image_shape {tuple(image_shape)} does not match input_shape "
                             f"{tuple(input_shape)}")
        if len(shape) == 1:
            shape = (1, shape[0])
        if len(shape) not in (2, 3):
            raise ValueError(f"cnn needs inputs of shape (L,), (C, L) or (C, H, W); found "
                             f"{tuple(input_shape)}")
        self.view_shape = shape
        two_d = len(shape) == 3
        conv = nn.Conv2d if two_d else nn.Conv1d
        bn = nn.BatchNorm2d if two_d else nn.BatchNorm1d
        pool = nn.MaxPool2d if two_d else nn.MaxPool1d
        layers: list[nn.Module] = []
        c_in, side = shape[0], min(shape[1:])
        for c_out in channels:
            layers += [conv(c_in, c_out, 3, padding=1), bn(c_out), nn.GELU()]
            if side >= 2:
                layers.append(pool(2))
                side //= 2
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1) if two_d else nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                   nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)
        self.out_features = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], *self.view_shape))


@MODELS.register("mlp", help="MLP on flattened inputs (model_options: hidden, dropout, norm)")
def build_mlp(bundle: Any, cfg: Any) -> nn.Module:
    """``mlp``: options ``hidden`` ([256, 256]), ``dropout`` (0.1), ``norm`` (layer|batch|none)."""
    o = _options("mlp", dict(cfg.model_options), {"hidden": [256, 256], "dropout": 0.1,
                                                  "norm": "layer"})
    backbone = MLPBackbone(math.prod(bundle.input_shape), _int_list("hidden", o["hidden"]),
                           _fraction("dropout", o["dropout"]), str(o["norm"]))
    return FeatureClassifier(backbone, build_head(cfg.head, backbone.out_features,
                                                  bundle.num_classes, cfg))


@MODELS.register("cnn", help="small 1-D/2-D CNN (model_options: channels, dropout)")
def build_cnn(bundle: Any, cfg: Any) -> nn.Module:
    """``cnn``: options ``channels`` ([32, 64]), ``dropout`` (0.1)."""
    o = _options("cnn", dict(cfg.model_options), {"channels": [32, 64], "dropout": 0.1})
    backbone = CNNBackbone(tuple(bundle.input_shape), _int_list("channels", o["channels"]),
                           _fraction("dropout", o["dropout"]), bundle.extra.get("image_shape"))
    return FeatureClassifier(backbone, build_head(cfg.head, backbone.out_features,
                                                  bundle.num_classes, cfg))
