"""timm image models for the paper's recipe: ViT-B/16 with MAE fine-tuning conventions.

Registered models: ``timm`` (generic: the timm architecture named by the config's ``model``
field; :func:`softnce.models.build_model` also routes any unregistered timm name here) and the MAE
backbones ``vit_base_patch16_224``, ``vit_large_patch16_224``, ``vit_huge_patch14_224``.

Always ``pretrained=False``: weights come only from ``--finetune PATH``
(:func:`load_finetune_checkpoint`), nothing is downloaded.

Vision transformers are built as in MAE fine-tuning: ``global_pool="avg"`` (mean over the patch
tokens, the class token excluded) with ``fc_norm=True`` (the final LayerNorm applied after pooling,
timm then replaces the pre-pool ``norm`` by ``Identity``), ``img_size=input_size`` and
``drop_path_rate`` (0.1 in the paper configs).

Heads (``head`` option):

* ``linear``: timm's own ``Linear(D, C)``.
* ``mlp``: the paper's 3-layer head :class:`MLPHead`
  ``Linear(D,h,no bias) -> BN -> ReLU -> Linear(h,h,no bias) -> BN -> ReLU -> Linear(h,C) ->
  BN(C, affine=False)`` with ``h = head_hidden_dim`` (4096 in the paper).
* any other head registered in :data:`softnce.models.basic.HEADS` (e.g. ``embedding``): the timm
  model without classifier, wrapped in ``FeatureClassifier(backbone, head)`` (checkpoint weights
  go into ``backbone``; timm's layer-decay groups are kept under the ``backbone.`` prefix).

MAE checkpoints (``mae_pretrain_vit_base.pth``: ``{"model": state_dict}``) — what
:func:`load_finetune_checkpoint` does, mirroring MAE's ``main_finetune.py``:

1. drop ``mask_token`` and every ``decoder_*`` key (the MAE decoder; present in the "visualize"
   checkpoints and full training checkpoints);
2. drop the checkpoint's classifier if its keys or shapes differ from the model's head;
3. resample ``pos_embed`` to the model's patch grid with timm ``resample_abs_pos_embed``
   (bicubic; prefix tokens kept as they are);
4. ``load_state_dict(strict=False)`` and report missing / unexpected keys (logged and returned);
5. re-initialise the head's final ``Linear`` with a truncated normal, std ``2e-5``, bias 0.

Final norm: MAE pre-training ends with ``norm`` (LayerNorm before the [CLS] read-out). With global
pooling MAE fine-tuning deletes ``norm`` and learns a fresh ``fc_norm``; we do the same, so for a
ViT loaded from the public MAE checkpoint ``norm.weight``/``norm.bias`` are reported *unexpected*
and ``fc_norm.*`` + the head are reported *missing* — exactly the set MAE asserts. We do not use
timm's ``checkpoint_filter_fn``: it keeps ``norm`` (timm's ``.mae`` tag is a token-pool feature
extractor, not the fine-tuning model), does not drop decoder keys, and routes any checkpoint with
a ``mask_token`` key through its DINOv2 converter.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softnce.models import MODELS

logger = logging.getLogger(__name__)

__all__ = [
    "MLPHead",
    "LoadReport",
    "build_timm_classifier",
    "filter_pretrained_state_dict",
    "load_finetune_checkpoint",
    "classifier_name",
    "reinit_head",
]

HEAD_INIT_STD = 2e-5


class MLPHead(nn.Module):
    """The paper's 3-layer MLP classification head.

    ``z = BN_0(W_3 r(BN_2(W_2 r(BN_1(W_1 x)))))`` with ``r = ReLU``, ``W_1: D -> h``,
    ``W_2: h -> h`` (no biases: each is followed by BatchNorm), ``W_3: h -> C`` and a final
    BatchNorm without affine parameters (MoCo v3-style projection head, used as classifier).
    ``W_3`` has no bias either: the following mean-subtracting BatchNorm would cancel it.

    Args:
        in_features: D, the backbone feature size.
        num_classes: C.
        hidden_dim: h (4096 in the paper; small values for tests).
    """

    def __init__(self, in_features: int, num_classes: int, hidden_dim: int = 4096) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("num_classes", num_classes),
                        ("hidden_dim", hidden_dim)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, found {v!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_classes, bias=False),
            nn.BatchNorm1d(num_classes, affine=False),
        )
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)

    @property
    def last_linear(self) -> nn.Linear:
        return self.layers[6]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# --------------------------------------------------------------------------------------------------
# Building


def _is_vision_transformer(model_name: str) -> bool:
    import timm

    return timm.models.model_entrypoint(model_name).__module__.endswith(".vision_transformer")


def classifier_name(model: nn.Module) -> str:
    """Dotted name of the classifier module (``pretrained_cfg['classifier']``, else ``head``)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("classifier", "head")
    return name[0] if isinstance(name, (list, tuple)) else name


def _set_submodule(model: nn.Module, dotted: str, module: nn.Module) -> None:
    parent_name, _, leaf = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, module)


def _final_linear(head: nn.Module) -> nn.Linear | None:
    if isinstance(head, MLPHead):
        return head.last_linear
    if isinstance(head, nn.Linear):
        return head
    return None


def reinit_head(model: nn.Module, std: float = HEAD_INIT_STD) -> None:
    """Truncated-normal (``std``) weights and zero bias for the classifier's final ``Linear``.

    As in MAE (``trunc_normal_(head.weight, std=2e-5)``) the truncation bounds are the default
    absolute ``[-2, 2]``, so for such a small std this is in effect a plain normal draw.
    """
    lin = _final_linear(model.get_submodule(classifier_name(model)))
    if lin is None:
        logger.warning("classifier %s is not a Linear/MLPHead; not re-initialised",
                       classifier_name(model))
        return
    with torch.no_grad():
        nn.init.trunc_normal_(lin.weight, std=std)
        if lin.bias is not None:
            lin.bias.zero_()


def build_timm_classifier(
    model_name: str,
    num_classes: int,
    *,
    input_size: int | None = 224,
    drop_path_rate: float = 0.0,
    head: str = "linear",
    head_hidden_dim: int = 4096,
    timm_kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Create a timm model (``pretrained=False``) with ``num_classes`` outputs and the chosen head.

    Vision transformers get the MAE fine-tuning defaults ``global_pool="avg"``, ``fc_norm=True``
    and ``img_size=input_size``; ``timm_kwargs`` override anything (e.g. ``embed_dim``, ``depth``,
    ``num_heads``, ``patch_size`` for a miniature ViT).
    """
    from softnce._optional import require

    timm = require("timm", "images", "timm models")

    if not isinstance(model_name, str) or not timm.is_model(model_name):
        raise ValueError(
            f"model: expected a timm model name (see timm.list_models()), found {model_name!r}"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2, found {num_classes!r}")
    if head not in ("linear", "mlp"):
        raise ValueError(f"head: expected 'linear' or 'mlp', found {head!r}")
    if not 0.0 <= float(drop_path_rate) < 1.0:
        raise ValueError(f"drop_path_rate: expected a value in [0, 1), found {drop_path_rate}")
    kwargs: dict[str, Any] = {}
    if _is_vision_transformer(model_name):
        kwargs.update(global_pool="avg", fc_norm=True)
        if input_size is not None:
            kwargs["img_size"] = int(input_size)
        kwargs["drop_path_rate"] = float(drop_path_rate)
    elif drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    kwargs.update(dict(timm_kwargs or {}))
    kwargs["num_classes"] = num_classes
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ValueError(f"timm model {model_name!r} rejected the options {kwargs}: {e}") from e

    if head == "mlp":
        name = classifier_name(model)
        old = model.get_submodule(name)
        if not isinstance(old, nn.Linear):
            raise ValueError(
                f"head='mlp' needs a model whose classifier {name!r} is an nn.Linear; "
                f"{model_name} has {type(old).__name__}"
            )
        _set_submodule(model, name, MLPHead(old.in_features, num_classes, int(head_hidden_dim)))
    return model


def _prefix_pattern(pattern: str, prefix: str) -> str:
    """Anchor a timm ``group_matcher`` regex (applied with ``re.match``) below ``prefix``."""
    return "^" + prefix.replace(".", r"\.") + "(?:" + pattern.lstrip("^") + ")"


@functools.cache
def _timm_feature_classifier_cls() -> type:
    """``FeatureClassifier`` subclass that keeps timm's layer-decay grouping and no-weight-decay
    list under the ``backbone.`` prefix (created once, on first use, so that importing this module
    does not require :mod:`softnce.models.basic`)."""
    from softnce.models.basic import FeatureClassifier

    class TimmFeatureClassifier(FeatureClassifier):
        def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
            inner = self.backbone.group_matcher(coarse=coarse)
            out: dict[str, Any] = {}
            for key, spec in inner.items():
                if isinstance(spec, (list, tuple)):
                    out[key] = [(_prefix_pattern(p, "backbone."), suffix) for p, suffix in spec]
                else:
                    out[key] = _prefix_pattern(spec, "backbone.")
            return out

        def no_weight_decay(self) -> set[str]:
            fn = getattr(self.backbone, "no_weight_decay", None)
            return {f"backbone.{n}" for n in (fn() if fn else ())}

    TimmFeatureClassifier.__module__ = __name__
    TimmFeatureClassifier.__qualname__ = "TimmFeatureClassifier"
    return TimmFeatureClassifier


def _wrap_with_registered_head(backbone: nn.Module, head_name: str, num_classes: int,
                               cfg: Any) -> nn.Module:
    """``FeatureClassifier(backbone, HEADS[head_name](D, C, cfg))`` for heads other than
    ``linear``/``mlp`` (e.g. ``embedding``)."""
    from softnce.models.basic import build_head

    head = build_head(head_name, int(backbone.num_features), num_classes, cfg)
    return _timm_feature_classifier_cls()(backbone, head)


# --------------------------------------------------------------------------------------------------
# Checkpoint loading


@dataclass
class LoadReport:
    """What :func:`load_finetune_checkpoint` did.

    Attributes:
        path: the file read.
        missing_keys: model parameters/buffers not found in the checkpoint (freshly initialised).
        unexpected_keys: checkpoint entries the model has no place for (ignored).
        dropped_keys: checkpoint entries removed before loading, with the reason.
        pos_embed_resized: ``(old_grid, new_grid)`` when the position embedding was resampled.
        head_reinitialized: whether the head's final Linear was re-initialised.
    """

    path: str
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    dropped_keys: dict[str, str] = field(default_factory=dict)
    pos_embed_resized: tuple[tuple[int, int], tuple[int, int]] | None = None
    head_reinitialized: bool = False


def filter_pretrained_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, interpolation: str = "bicubic"
) -> tuple[dict[str, torch.Tensor], dict[str, str], tuple | None]:
    """Adapt a pre-training state dict to ``model`` (steps 1-3 of the module docstring).

    Returns ``(state_dict, dropped {key: reason}, (old_grid, new_grid) or None)``. Raises
    ``ValueError`` if a remaining key exists in the model with a different shape.
    """
    from timm.layers import resample_abs_pos_embed

    sd = dict(state_dict)
    dropped: dict[str, str] = {}
    for k in list(sd):
        if k == "mask_token" or k.startswith("decoder_") or k.startswith("decoder."):
            dropped[k] = "MAE decoder / mask token (pre-training only)"
            del sd[k]

    model_sd = model.state_dict()
    clf = classifier_name(model)
    ck_head = {k for k in sd if k == clf or k.startswith(clf + ".")}
    mo_head = {k for k in model_sd if k == clf or k.startswith(clf + ".")}
    if ck_head and (
        ck_head != mo_head or any(sd[k].shape != model_sd[k].shape for k in ck_head)
    ):
        for k in sorted(ck_head):
            dropped[k] = f"classifier of a different shape/layout than the model's {clf!r}"
            del sd[k]

    resized = None
    pos = sd.get("pos_embed")
    if (
        pos is not None
        and "pos_embed" in model_sd
        and hasattr(model, "patch_embed")
        and pos.shape != model_sd["pos_embed"].shape
    ):
        n_prefix = 0 if getattr(model, "no_embed_class", False) else int(
            getattr(model, "num_prefix_tokens", 1)
        )
        n_old = pos.shape[1] - n_prefix
        side = int(round(n_old**0.5))
        if side * side != n_old:
            raise ValueError(
                f"pos_embed: checkpoint has {n_old} patch positions (+{n_prefix} prefix), not a "
                "square grid; cannot resample"
            )
        new_grid = tuple(int(g) for g in model.patch_embed.grid_size)
        sd["pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(new_grid), old_size=[side, side], num_prefix_tokens=n_prefix,
            interpolation=interpolation, antialias=True,
        )
        resized = ((side, side), new_grid)

    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}"
        for k, v in sd.items()
        if k in model_sd and v.shape != model_sd[k].shape
    ]
    if bad:
        raise ValueError(
            "checkpoint does not fit the model (different architecture or patch size?): "
            + "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
        )
    return sd, dropped, resized


def load_finetune_checkpoint(
    model: nn.Module, path: str | Path, interpolation: str = "bicubic"
) -> LoadReport:
    """Load pre-trained weights (MAE ``.pth``, timm ``.pth``/``.bin``, ``.safetensors``) into
    ``model`` for fine-tuning; see the module docstring for the exact steps.

    The file is read with ``weights_only=True`` (:func:`softnce.models.checkpoints.load_state_dict_file`);
    a checkpoint that would execute code is refused with a ``ValueError``.
    """
    from softnce.models.checkpoints import load_state_dict_file

    sd = load_state_dict_file(path)
    sd, dropped, resized = filter_pretrained_state_dict(sd, model, interpolation)
    result = model.load_state_dict(sd, strict=False)
    report = LoadReport(
        path=str(path),
        missing_keys=sorted(result.missing_keys),
        unexpected_keys=sorted(result.unexpected_keys),
        dropped_keys=dropped,
        pos_embed_resized=resized,
    )
    clf = classifier_name(model)
    if any(k == clf or k.startswith(clf + ".") for k in report.missing_keys):
        reinit_head(model)
        report.head_reinitialized = True
    loaded = len(sd) - len(report.unexpected_keys)
    logger.info(
        "loaded %d tensors from %s; missing: %s; unexpected: %s; dropped: %d (%s)%s%s",
        loaded, path, report.missing_keys or "none", report.unexpected_keys or "none",
        len(dropped), ", ".join(sorted({r for r in dropped.values()})) or "-",
        f"; pos_embed resampled {resized[0]} -> {resized[1]}" if resized else "",
        "; head re-initialised (trunc normal, std 2e-5)" if report.head_reinitialized else "",
    )
    if loaded == 0:
        raise ValueError(
            f"checkpoint {path}: none of its tensors match the model's parameter names; "
            f"model expects e.g. {list(model.state_dict())[:3]}, file has e.g. {list(sd)[:3]}"
        )
    return report


# --------------------------------------------------------------------------------------------------
# Registered factories


MODEL_OPTIONS = ("head_hidden_dim", "timm_kwargs")


def _build(model_name: str | None, bundle: Any, cfg: Any) -> nn.Module:
    """Shared factory body: read the harness config, build, optionally load ``--finetune``.

    Config fields used: ``head`` (``linear``/``mlp``), ``drop_path``, ``input_size`` (default:
    the bundle's image side), ``finetune``; ``model_options`` keys ``head_hidden_dim`` (MLP head
    width, default 4096) and ``timm_kwargs`` (dict passed to ``timm.create_model``, e.g.
    ``{embed_dim: 64, depth: 2, num_heads: 2, patch_size: 8}`` for a miniature ViT).
    """
    opts = dict(getattr(cfg, "model_options", None) or {})
    unknown = sorted(set(opts) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(
            f"model_options: unknown key(s) {unknown} for timm model {model_name!r}; valid keys: "
            f"{list(MODEL_OPTIONS)} (architecture arguments go under timm_kwargs)"
        )
    timm_kwargs = opts.get("timm_kwargs") or {}
    if not isinstance(timm_kwargs, Mapping):
        raise ValueError(
            f"model_options.timm_kwargs: expected a mapping, found {type(timm_kwargs).__name__}"
        )
    input_size = getattr(cfg, "input_size", None)
    shape = getattr(bundle, "input_shape", None)
    if shape is not None and len(shape) != 3:
        raise ValueError(
            f"timm model {model_name!r} needs image input (C, H, W); data set "
            f"{getattr(bundle, 'name', '?')!r} has input shape {tuple(shape)} (use mlp or cnn)"
        )
    if input_size is None and shape is not None and len(shape) == 3:
        input_size = int(shape[-1])
    head = str(getattr(cfg, "head", None) or "linear")
    own_head = head in ("linear", "mlp")
    model = build_timm_classifier(
        model_name,  # type: ignore[arg-type]
        int(bundle.num_classes),
        input_size=input_size,
        drop_path_rate=float(getattr(cfg, "drop_path", 0.0) or 0.0),
        head=head if own_head else "linear",
        head_hidden_dim=int(opts.get("head_hidden_dim", 4096)),
        timm_kwargs=timm_kwargs,
    )
    if not own_head:
        model.reset_classifier(0)  # pooled features out; the registered head maps them to C
    finetune = getattr(cfg, "finetune", None)
    report = load_finetune_checkpoint(model, finetune) if finetune else None
    if not own_head:
        model = _wrap_with_registered_head(model, head, int(bundle.num_classes), cfg)
    if report is not None:
        model.load_report = report  # type: ignore[attr-defined]
        model.finetune_loaded = True  # type: ignore[attr-defined]
    return model


@MODELS.register("timm", help="any timm model by name (pretrained=False; weights via --finetune)")
def build_timm(bundle: Any, cfg: Any) -> nn.Module:
    """Any timm model, named by ``cfg.model``."""
    return _build(getattr(cfg, "model", None), bundle, cfg)


def _register_named(name: str, desc: str) -> None:
    def factory(bundle: Any, cfg: Any) -> nn.Module:
        return _build(name, bundle, cfg)

    factory.__doc__ = desc
    MODELS.register(name, help=desc)(factory)


for _name, _desc in (
    ("vit_base_patch16_224", "ViT-B/16 (the paper's backbone), MAE fine-tuning variant"),
    ("vit_large_patch16_224", "ViT-L/16, MAE fine-tuning variant"),
    ("vit_huge_patch14_224", "ViT-H/14, MAE fine-tuning variant"),
):
    _register_named(_name, _desc)
