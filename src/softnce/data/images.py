"""Image classification data sets read from their native on-disk layouts.

Registered names (``softnce train --dataset NAME --data-path PATH``):

* ``imagenet``: ``PATH/train/<wnid>/*.JPEG`` and ``PATH/val/<wnid>/*.JPEG`` (the usual layout after
  running the ``valprep.sh`` script on the ILSVRC-2012 validation images).
* ``tiny-imagenet``: the CS231n zip as distributed (``wnids.txt``, ``train/<wnid>/images/*.JPEG``,
  ``val/images/*.JPEG`` + ``val/val_annotations.txt``). Class ids follow the line order of
  ``wnids.txt``. ``PATH`` may be the ``tiny-imagenet-200`` folder or its parent.
* ``cifar10`` / ``cifar100``: the "python version" pickles from cs.toronto.edu/~kriz
  (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``;
  ``cifar-100-python/train``, ``test``, ``meta``). ``PATH`` may be the extracted folder or its
  parent. The pickles are read with a restricted unpickler (see :func:`safe_unpickle`).
* ``imagefolder``: any ``PATH/train/<class>/*`` and ``PATH/val/<class>/*`` tree.

Nothing is ever downloaded. Missing files raise :class:`DatasetNotFoundError` (both a
``FileNotFoundError`` and a :class:`softnce.data.DataError`) naming the expected file and where
the data set can be obtained; malformed content raises :class:`DatasetFormatError`; an image that
cannot be decoded raises :class:`CorruptImageError` naming the file (all are ``DataError``, a
``ValueError``, which the CLI prints as ``error: ...``).

Labels are known without decoding a single image (folder names, annotation files or the pickled
label lists), so :attr:`DataBundle.train_labels` — from which the harness computes the class prior
used as the InfoNCE noise distribution — costs nothing.

Transforms are built with timm's ``create_transform`` from the config's ``augment`` options
(``cfg.augment_options()``; the harness defaults have no RandAugment and no erasing). The paper
configs (``configs/paper/*.yaml``) set the MAE fine-tuning recipe: ``RandomResizedCrop`` to the
input size (bicubic), horizontal flip, RandAugment ``rand-m9-mstd0.5-inc1``, normalisation, then
random erasing (probability 0.25, pixel mode, one box). Evaluation resizes the short side to
``input_size / crop_pct`` with ``crop_pct = 224/256`` (256 for a 224 input; ``crop_pct = 1``
above 224, as in MAE) unless ``augment.crop_pct`` is set, then centre-crops ``input_size``.
Normalisation uses :data:`NORMALIZATION` for the data set unless ``augment.mean``/``std`` are
set. MixUp/CutMix are batch-level and applied by the harness (``kind == "image"``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from softnce.data import DataError
from softnce.data.safe_pickle import DatasetFormatError, safe_unpickle

logger = logging.getLogger(__name__)

__all__ = [
    "NORMALIZATION",
    "IMAGE_EXTENSIONS",
    "CorruptImageError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageFileDataset",
    "ImageArrayDataset",
    "ImageSplits",
    "load_cifar",
    "load_imagefolder",
    "load_tiny_imagenet",
    "safe_unpickle",
]


class DatasetNotFoundError(FileNotFoundError, DataError):
    """A file or folder the data set layout requires is missing."""



class CorruptImageError(DataError):
    """An image file could not be decoded."""


# Per-channel normalisation constants (RGB, on [0, 1] pixel values). Fixed published values, never
# computed at run time:
# * ImageNet: torchvision / timm ``IMAGENET_DEFAULT_MEAN``/``_STD`` (the MAE fine-tuning default).
# * Tiny ImageNet: mean (0.4802, 0.4481, 0.3975), std (0.2302, 0.2265, 0.2262), the values
#   published with github.com/tjmoon0104/pytorch-tiny-imagenet and used throughout the Tiny
#   ImageNet literature.
# * CIFAR-100: mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564, 0.2762), training-set
#   statistics as published in github.com/weiaicunzai/pytorch-cifar100 (``CIFAR100_TRAIN_MEAN``).
# * CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616), per-channel training-set
#   mean and standard deviation over all pixels (the widely copied std (0.2023, 0.1994, 0.2010) is
#   the mean of per-image stds, not the data-set std).
# * imagefolder: ImageNet defaults (the right choice when fine-tuning an ImageNet-pretrained model
#   on arbitrary photos).
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tiny-imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp",
)

_WHERE = {
    "imagenet": "ImageNet (ILSVRC-2012) is available after registration at https://image-net.org "
    "(download the train/val archives and arrange val into per-class folders).",
    "tiny-imagenet": "Tiny ImageNet is the CS231n zip http://cs231n.stanford.edu/tiny-imagenet-200.zip "
    "(unzip it and pass the tiny-imagenet-200 folder or its parent).",
    "cifar10": "CIFAR-10 (python version) is https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
    "(extract it and pass cifar-10-batches-py or its parent).",
    "cifar100": "CIFAR-100 (python version) is https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz "
    "(extract it and pass cifar-100-python or its parent).",
    "imagefolder": "imagefolder expects PATH/train/<class>/<image> and PATH/val/<class>/<image>.",
}


def _missing(dataset: str, what: Path | str, detail: str = "") -> DatasetNotFoundError:
    extra = f" ({detail})" if detail else ""
    return DatasetNotFoundError(
        f"{dataset}: expected {what} but it does not exist{extra}. {_WHERE[dataset]} "
        "Data sets are never downloaded by softnce; pass the local folder with --data-path."
    )


# --------------------------------------------------------------------------------------------------
# Datasets


def _open_rgb(path: Path):
    """Decode ``path`` fully into an RGB PIL image, or raise :class:`CorruptImageError`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()  # force full decode so truncated files fail here, not inside a transform
            return img.convert("RGB")
    except FileNotFoundError as e:
        raise DatasetNotFoundError(f"image file {path} listed in the data set does not exist") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode image file {path}: {e}") from e


class ImageFileDataset(Dataset):
    """A list of ``(path, label)`` pairs decoded lazily with PIL.

    Args:
        samples: ``(path, class index)`` pairs.
        transform: applied to the RGB PIL image; ``None`` returns the PIL image.
    """

    def __init__(self, samples: Sequence[tuple[Path, int]], transform: Callable | None = None):
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [y for _, y in self.samples]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = _open_rgb(path)
        if self.transform is not None:
            img = self.transform(img)
        return img, label


class ImageArrayDataset(Dataset):
    """Images held in memory as an ``(N, H, W, 3)`` uint8 array (CIFAR).

    Args:
        images: ``(N, H, W, 3)`` uint8 numpy array.
        labels: ``N`` integer labels.
        transform: applied to the RGB PIL image; ``None`` returns the PIL image.
    """

    def __init__(self, images, labels: Sequence[int], transform: Callable | None = None):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected shape (N, H, W, 3), found {tuple(images.shape)}")
        if len(labels) != images.shape[0]:
            raise ValueError(
                f"labels: expected {images.shape[0]} labels (one per image), found {len(labels)}"
            )
        self.images = images
        self.labels = list(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def targets(self) -> list[int]:
        return self.labels

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.images[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.labels[index]


@dataclass
class ImageSplits:
    """A data set as read from disk, before transforms: training and validation samples."""

    train: ImageFileDataset | ImageArrayDataset
    val: ImageFileDataset | ImageArrayDataset
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_labels(self) -> torch.Tensor:
        return torch.as_tensor(self.train.targets, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# Folder layouts


def _has_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    """Sorted image files under ``folder``, found with ``os.scandir`` (no per-file ``stat`` on
    most file systems, which matters for ImageNet's 1.28 M files read by every rank)."""
    out: list[Path] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir():
                    if recursive and not e.name.startswith("."):
                        stack.append(Path(e.path))
                elif _has_image_name(e.name) and e.is_file():
                    out.append(Path(e.path))
    return sorted(out)


def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted(d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_split(
    dataset: str, split_dir: Path, class_to_idx: dict[str, int] | None
) -> tuple[list[tuple[Path, int]], list[str]]:
    """Scan ``split_dir/<class>/*`` (recursively inside each class folder)."""
    if not split_dir.is_dir():
        raise _missing(dataset, f"the folder {split_dir}", "with one sub-folder per class")
    dirs = _class_dirs(split_dir)
    if not dirs:
        raise DatasetFormatError(
            f"{dataset}: {split_dir} contains no class sub-folders; expected "
            f"{split_dir}/<class>/<image>. {_WHERE[dataset]}"
        )
    names = [d.name for d in dirs]
    if class_to_idx is None:
        class_to_idx = {n: i for i, n in enumerate(names)}
    else:
        unknown = sorted(set(names) - set(class_to_idx))
        if unknown:
            raise DatasetFormatError(
                f"{dataset}: {split_dir} has class folders that are not in the training split: "
                f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}"
            )
    samples: list[tuple[Path, int]] = []
    for d in dirs:
        files = _list_images(d, recursive=True)
        samples.extend((p, class_to_idx[d.name]) for p in files)
    if not samples:
        raise DatasetFormatError(
            f"{dataset}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {split_dir}"
        )
    return samples, names


def load_imagefolder(root: str | Path, dataset: str = "imagefolder") -> ImageSplits:
    """Read ``root/train/<class>/*`` and ``root/val/<class>/*``.

    Class ids are the sorted training folder names; every validation folder must be a training
    class (a class seen only in validation would have no logit).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _missing(dataset, f"the data folder {root}")
    train, names = _scan_split(dataset, root / "train", None)
    class_to_idx = {n: i for i, n in enumerate(names)}
    val, _ = _scan_split(dataset, root / "val", class_to_idx)
    return ImageSplits(ImageFileDataset(train), ImageFileDataset(val), names)


def _tiny_root(root: Path) -> Path:
    if (root / "wnids.txt").is_file():
        return root
    if (root / "tiny-imagenet-200" / "wnids.txt").is_file():
        return root / "tiny-imagenet-200"
    raise _missing("tiny-imagenet", root / "wnids.txt", "the list of the 200 class ids")


def load_tiny_imagenet(root: str | Path) -> ImageSplits:
    """Read Tiny ImageNet in its distributed layout.

    Class ``i`` is the ``i``-th line of ``wnids.txt``. Training images are
    ``train/<wnid>/images/*``; validation images are ``val/images/<file>`` with the class of each
    file given by ``val/val_annotations.txt`` (tab separated: file, wnid, box). Paths are built
    relative to ``root``, independent of how deep ``root`` is.
    """
    root = _tiny_root(Path(root).expanduser())
    wnids = [ln.strip() for ln in (root / "wnids.txt").read_text().splitlines() if ln.strip()]
    if not wnids:
        raise DatasetFormatError(f"tiny-imagenet: {root / 'wnids.txt'} lists no class ids")
    if len(set(wnids)) != len(wnids):
        raise DatasetFormatError(f"tiny-imagenet: {root / 'wnids.txt'} lists a class id twice")
    class_to_idx = {w: i for i, w in enumerate(wnids)}

    train: list[tuple[Path, int]] = []
    for w in wnids:
        img_dir = root / "train" / w / "images"
        if not img_dir.is_dir():
            raise _missing("tiny-imagenet", f"the folder {img_dir}", f"training images of {w}")
        train.extend((p, class_to_idx[w]) for p in _list_images(img_dir, recursive=False))
    if not train:
        raise DatasetFormatError(f"tiny-imagenet: no training images under {root / 'train'}")

    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise _missing("tiny-imagenet", ann, "the validation labels")
    val_dir = root / "val" / "images"
    if not val_dir.is_dir():
        raise _missing("tiny-imagenet", f"the folder {val_dir}")
    val: list[tuple[Path, int]] = []
    for lineno, line in enumerate(ann.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DatasetFormatError(
                f"tiny-imagenet: {ann} line {lineno}: expected 'file<TAB>wnid<TAB>box...', "
                f"found {line!r}"
            )
        fname, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in class_to_idx:
            raise DatasetFormatError(
                f"tiny-imagenet: {ann} line {lineno}: class id {wnid!r} is not in wnids.txt"
            )
        path = val_dir / fname
        if not path.is_file():
            raise _missing("tiny-imagenet", path, f"listed in {ann.name} line {lineno}")
        val.append((path, class_to_idx[wnid]))
    if not val:
        raise DatasetFormatError(f"tiny-imagenet: {ann} lists no validation images")
    return ImageSplits(ImageFileDataset(train), ImageFileDataset(val), wnids)


# --------------------------------------------------------------------------------------------------
# CIFAR pickles


#: Upper bound on the bytes one unpickled array may claim (set per file by :func:`safe_unpickle`
#: to the file's size: every array's data must come from the file itself).
def _str_keys(d: Any, path: Path) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, found {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in d.items()}


def _to_text(x: Any) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _cifar_batch(path: Path, label_key: str, dataset: str):
    """Return ``(images (N, 32, 32, 3) uint8, labels list[int])`` from one CIFAR batch file."""
    import numpy as np

    if not path.is_file():
        raise _missing(dataset, path)
    d = _str_keys(safe_unpickle(path), path)
    for key in ("data", label_key):
        if key not in d:
            raise DatasetFormatError(
                f"{dataset}: {path} has no {key!r} entry (found keys {sorted(d)})"
            )
    raw = d["data"]
    if isinstance(raw, (bytes, bytearray)):
        arr = np.frombuffer(bytes(raw), dtype=np.uint8)
    elif isinstance(raw, np.ndarray):
        arr = raw
    else:  # a list of rows (bytes or lists of ints)
        try:
            arr = np.asarray(
                [np.frombuffer(r, dtype=np.uint8) if isinstance(r, bytes) else r for r in raw]
            )
        except (TypeError, ValueError) as e:
            raise DatasetFormatError(f"{dataset}: {path}: 'data' is not an image array: {e}") from e
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.integer) or arr.min(initial=0) < 0 or arr.max(
            initial=0
        ) > 255:
            raise DatasetFormatError(
                f"{dataset}: {path}: 'data' must hold uint8 pixel values, found dtype {arr.dtype}"
            )
        arr = arr.astype(np.uint8)
    if arr.size % 3072:
        raise DatasetFormatError(
            f"{dataset}: {path}: 'data' must hold rows of 3072 bytes (3x32x32), found "
            f"{arr.size} values"
        )
    images = arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    raw_labels = d[label_key]
    if isinstance(raw_labels, np.ndarray):
        if raw_labels.dtype.kind not in "iu":
            raise DatasetFormatError(f"{dataset}: {path}: {label_key!r} must hold integer "
                                     f"labels; found dtype {raw_labels.dtype}")
        raw_labels = raw_labels.tolist()
    def _is_int(y: Any) -> bool:
        return isinstance(y, (int, np.integer)) and not isinstance(y, bool)

    if not isinstance(raw_labels, (list, tuple)) or not all(_is_int(y) for y in raw_labels):
        bad = next((y for y in raw_labels if not _is_int(y)), None) \
            if isinstance(raw_labels, (list, tuple)) else raw_labels
        raise DatasetFormatError(f"{dataset}: {path}: {label_key!r} must be a list of integer "
                                 f"labels; found {type(bad).__name__} {bad!r:.40}")
    labels = [int(y) for y in raw_labels]
    if len(labels) != images.shape[0]:
        raise DatasetFormatError(
            f"{dataset}: {path}: {images.shape[0]} images but {len(labels)} labels"
        )
    return images, labels


def load_cifar(root: str | Path, num_classes: int) -> ImageSplits:
    """Read CIFAR-10 (``num_classes=10``) or CIFAR-100 (``num_classes=100``, fine labels)."""
    import numpy as np

    if num_classes not in (10, 100):
        raise ValueError(f"num_classes: expected 10 or 100, found {num_classes}")
    dataset = f"cifar{num_classes}"
    root = Path(root).expanduser()
    if num_classes == 10:
        folder, train_files, test_file = (
            "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
        )
        meta_file, label_key, names_key = "batches.meta", "labels", "label_names"
    else:
        folder, train_files, test_file = "cifar-100-python", ["train"], "test"
        meta_file, label_key, names_key = "meta", "fine_labels", "fine_label_names"
    if not (root / train_files[0]).exists() and (root / folder).is_dir():
        root = root / folder
    if not root.is_dir():
        raise _missing(dataset, f"the folder {root}")

    parts = [_cifar_batch(root / f, label_key, dataset) for f in train_files]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = [y for p in parts for y in p[1]]
    test_x, test_y = _cifar_batch(root / test_file, label_key, dataset)

    meta_path = root / meta_file
    if not meta_path.is_file():
        raise _missing(dataset, meta_path, "the class names")
    meta = _str_keys(safe_unpickle(meta_path), meta_path)
    if names_key not in meta:
        raise DatasetFormatError(f"{dataset}: {meta_path} has no {names_key!r} entry")
    names = [_to_text(n) for n in meta[names_key]]
    if len(names) != num_classes:
        raise DatasetFormatError(
            f"{dataset}: {meta_path} lists {len(names)} class names, expected {num_classes}"
        )
    for split, ys in (("training", train_y), ("test", test_y)):
        bad = [y for y in ys if not 0 <= y < num_classes]
        if bad:
            raise DatasetFormatError(
                f"{dataset}: {split} label {bad[0]} is outside [0, {num_classes})"
            )
    return ImageSplits(ImageArrayDataset(train_x, train_y), ImageArrayDataset(test_x, test_y), names)
