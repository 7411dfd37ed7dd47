"""Image data sets as bundles: the timm transforms of the MAE recipe and the registered factories
(``imagenet``, ``tiny-imagenet``, ``cifar10``, ``cifar100``, ``imagefolder``); the readers are in
:mod:`softnce.data.images`.

Split protocol: these data sets come as train + validation (the papers' test split). The
calibration split is carved from the training set (seeded, stratified; ``dataset_options``
``calibration_fraction``, default 0.02 for ImageNet (25,623 images), 0.05 for Tiny ImageNet
(5,000), 0.1 otherwise (5,000 for CIFAR); ``split_seed`` 0). ``calibration_fraction: 0`` turns
it off and reproduces the paper exactly (all training images are trained on; the calibration
split is then the test split, so post-hoc scaling is fitted on it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from softnce.data import DATASETS, DataBundle, DataError
from softnce.data.images import (
    _WHERE,
    NORMALIZATION,
    ImageSplits,
    load_cifar,
    load_imagefolder,
    load_tiny_imagenet,
)

logger = logging.getLogger(__name__)


def build_image_transforms(
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    interpolation: str = "bicubic",
    eval_crop_pct: float | None = None,
    color_jitter: float = 0.0,
    hflip: float = 0.5,
    vflip: float = 0.0,
    scale: tuple[float, float] | None = None,
    ratio: tuple[float, float] | None = None,
) -> tuple[Callable, Callable]:
    """``(train_transform, eval_transform)`` of the MAE fine-tuning recipe via timm.

    Eval: resize the short side to ``floor(input_size / crop_pct)`` then centre-crop
    ``input_size``, with ``crop_pct = 224/256`` when ``input_size <= 224`` else ``1.0`` (MAE's
    ``build_transform``) unless ``eval_crop_pct`` is given. The defaults are the paper's
    training recipe; ``scale``/``ratio`` ``None`` mean timm's (0.08, 1) / (3/4, 4/3).
    """
    from softnce._optional import require

    require("timm", "images", "image transforms")
    from timm.data import create_transform

    if not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size: expected a positive int, found {input_size!r}")
    if not 0.0 <= re_prob <= 1.0:
        raise ValueError(f"re_prob: expected a probability in [0, 1], found {re_prob}")
    crop_pct = eval_crop_pct if eval_crop_pct is not None else (
        224 / 256 if input_size <= 224 else 1.0
    )
    train_tf = create_transform(
        input_size=input_size,
        is_training=True,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        vflip=vflip,
        # MAE passes None; timm ignores colour jitter under RandAugment anyway
        color_jitter=color_jitter or None,
        auto_augment=auto_augment or None,
        interpolation=interpolation,
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        mean=tuple(mean),
        std=tuple(std),
    )
    eval_tf = create_transform(
        input_size=input_size,
        is_training=False,
        interpolation=interpolation,
        crop_pct=crop_pct,
        mean=tuple(mean),
        std=tuple(std),
    )
    return train_tf, eval_tf


_AUGMENT_FALLBACK: dict[str, Any] = {
    "aa": None, "reprob": 0.0, "remode": "pixel", "recount": 1, "interpolation": "bicubic",
    "color_jitter": 0.0, "hflip": 0.5, "vflip": 0.0, "scale": [0.08, 1.0],
    "ratio": [0.75, 4 / 3], "crop_pct": None, "mean": None, "std": None,
}


def _augment(cfg: Any) -> dict[str, Any]:
    """The harness's augmentation options (``cfg.augment_options()``: ``augment`` + defaults)."""
    if hasattr(cfg, "augment_options"):
        return dict(cfg.augment_options())
    return {**_AUGMENT_FALLBACK, **dict(getattr(cfg, "augment", None) or {})}


def _require_path(cfg: Any, dataset: str) -> Path:
    path = getattr(cfg, "data_path", None)
    if not path:
        raise DataError(
            f"data_path: the {dataset!r} data set needs --data-path pointing at the local copy; "
            f"found {path!r}. {_WHERE[dataset]}"
        )
    opts = getattr(cfg, "dataset_options", None) or {}
    unknown = sorted(set(opts) - {"calibration_fraction", "split_seed"})
    if unknown:
        raise DataError(
            f"dataset_options: the {dataset!r} data set takes calibration_fraction and "
            f"split_seed, found {unknown}; augmentation is set with 'augment' (e.g. --set "
            "augment.reprob=0.25)"
        )
    return Path(path)


#: Default share of the training set carved off as the calibration split.
CALIBRATION_FRACTION = {"imagenet": 0.02, "tiny-imagenet": 0.05}


def _subset(ds: Any, idx: Any) -> Any:
    """A copy of an image data set holding only the rows ``idx`` (no transform yet)."""
    import copy

    out = copy.copy(ds)
    if hasattr(ds, "samples"):
        out.samples = [ds.samples[i] for i in idx]
    else:
        out.images, out.labels = ds.images[idx], [ds.labels[i] for i in idx]
    return out


def carve_calibration(name: str, splits: ImageSplits, cfg: Any) -> tuple[Any, Any, Any, dict]:
    """``(train, calibration, test, split info)``: the calibration split carved (seeded,
    stratified) from the training set; ``calibration_fraction: 0`` keeps all of it for training
    and uses the test split for calibration."""
    import numpy as np

    from softnce.data.tabular import _stratified_split

    opts = getattr(cfg, "dataset_options", None) or {}
    frac = opts.get("calibration_fraction", CALIBRATION_FRACTION.get(name, 0.1))
    seed = opts.get("split_seed", 0)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 0.5:
        raise DataError(f"dataset_options calibration_fraction must be a number in [0, 0.5]; "
                        f"found {frac!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"dataset_options split_seed must be an integer >= 0; found {seed!r}")
    test = splits.val
    if frac == 0:
        info = {"split": "given train/test; calibration = test (calibration_fraction 0)"}
        return splits.train, test, test, info
    y = np.asarray(splits.train.targets)
    tr, ca = _stratified_split(y, float(frac), int(seed))
    info = {"split": "given train/test; calibration carved from train",
            "calibration_fraction": float(frac), "split_seed": int(seed)}
    return _subset(splits.train, tr), _subset(splits.train, ca), test, info


def _bundle(name: str, splits: ImageSplits, cfg: Any) -> DataBundle:
    """Attach the transforms built from ``cfg`` and wrap ``splits`` into a :class:`DataBundle`."""
    requested = getattr(cfg, "num_classes", None)
    if requested is not None and int(requested) != splits.num_classes:
        raise DataError(
            f"num_classes: {name} has {splits.num_classes} classes, found num_classes={requested}"
        )
    input_size = getattr(cfg, "input_size", None) or 224
    aug = _augment(cfg)
    mean, std = NORMALIZATION[name]
    mean = tuple(aug["mean"]) if aug.get("mean") is not None else mean
    std = tuple(aug["std"]) if aug.get("std") is not None else std
    try:
        train_tf, eval_tf = build_image_transforms(
            int(input_size),
            mean,
            std,
            auto_augment=aug.get("aa"),
            re_prob=float(aug.get("reprob") or 0.0),
            re_mode=str(aug.get("remode") or "pixel"),
            re_count=int(aug.get("recount") or 1),
            interpolation=str(aug.get("interpolation") or "bicubic"),
            eval_crop_pct=aug.get("crop_pct"),
            color_jitter=float(aug.get("color_jitter") or 0.0),
            hflip=float(aug.get("hflip", 0.5)),
            vflip=float(aug.get("vflip", 0.0)),
            scale=tuple(aug["scale"]) if aug.get("scale") is not None else None,
            ratio=tuple(aug["ratio"]) if aug.get("ratio") is not None else None,
        )
    except ValueError as e:
        raise DataError(f"{name}: invalid augmentation settings: {e}") from e
    train, cal, test, info = carve_calibration(name, splits, cfg)
    train.transform = train_tf
    cal.transform = eval_tf
    test.transform = eval_tf
    logger.info(
        "%s: %d training / %d validation images, %d classes, input %dx%d",
        name, len(train), len(test), splits.num_classes, input_size, input_size,
    )
    return DataBundle(
        name=name,
        kind="image",
        train=train,
        val=cal,
        test=test,
        splits={"train": len(train), "calibration": len(cal), "test": len(test), **info},
        num_classes=splits.num_classes,
        input_shape=(3, int(input_size), int(input_size)),
        train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
        class_names=splits.class_names,
        default_model="vit_base_patch16_224",
        extra={"mean": mean, "std": std, "input_size": int(input_size)},
    )


@DATASETS.register("imagenet", help="ImageNet-1k, train/<wnid>/*.JPEG + val/<wnid>/*.JPEG")
def build_imagenet(cfg: Any) -> DataBundle:
    """ImageNet-1k from ``--data-path`` (``train/<wnid>``, ``val/<wnid>`` folders)."""
    return _bundle("imagenet", load_imagefolder(_require_path(cfg, "imagenet"), "imagenet"), cfg)


@DATASETS.register("tiny-imagenet", help="Tiny ImageNet (200 classes), CS231n zip layout")
def build_tiny_imagenet(cfg: Any) -> DataBundle:
    """Tiny ImageNet from ``--data-path`` in its distributed layout."""
    return _bundle("tiny-imagenet", load_tiny_imagenet(_require_path(cfg, "tiny-imagenet")), cfg)


@DATASETS.register("cifar10", help="CIFAR-10, python pickle layout (cifar-10-batches-py)")
def build_cifar10(cfg: Any) -> DataBundle:
    """CIFAR-10 from ``--data-path`` (python pickle version; test batch used for validation)."""
    return _bundle("cifar10", load_cifar(_require_path(cfg, "cifar10"), 10), cfg)


@DATASETS.register("cifar100", help="CIFAR-100 (fine labels), python pickle layout")
def build_cifar100(cfg: Any) -> DataBundle:
    """CIFAR-100 from ``--data-path`` (python pickle version; test split used for validation)."""
    return _bundle("cifar100", load_cifar(_require_path(cfg, "cifar100"), 100), cfg)


@DATASETS.register("imagefolder", help="any train/<class>/* + val/<class>/* image tree")
def build_imagefolder(cfg: Any) -> DataBundle:
    """Any ``train/<class>`` + ``val/<class>`` folder tree from ``--data-path``."""
    return _bundle("imagefolder", load_imagefolder(_require_path(cfg, "imagefolder")), cfg)


# --------------------------------------------------------------------------------------------------
