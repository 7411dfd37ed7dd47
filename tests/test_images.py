"""Image data sets read from tiny synthetic copies of each real on-disk layout."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from softnce.data import DATASETS, DataError
from softnce.data.image_factories import build_image_transforms
from softnce.data.images import (
    NORMALIZATION,
    CorruptImageError,
    DatasetFormatError,
    DatasetNotFoundError,
    load_cifar,
    load_imagefolder,
    load_tiny_imagenet,
    safe_unpickle,
)

PAPER_AUG = {"aa": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "remode": "pixel", "recount": 1}


def _cfg(data_path, input_size=32, **kw):
    return SimpleNamespace(
        data_path=str(data_path), input_size=input_size, augment=dict(PAPER_AUG),
        dataset_options={"calibration_fraction": 0}, num_classes=None, **kw,
    )


def _img(path: Path, value: int, size=(12, 10), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


def _folder_tree(root: Path, classes=("cat", "ant", "dog"), n_train=(2, 3, 1), n_val=1) -> None:
    for c, n in zip(classes, n_train):
        for i in range(n):
            _img(root / "train" / c / f"{c}_{i}.JPEG", 10 * i, fmt="JPEG")
        for i in range(n_val):
            _img(root / "val" / c / f"v_{c}_{i}.png", 200)


# -- imagefolder / imagenet ------------------------------------------------------------------------


def test_imagefolder_labels_and_counts(tmp_path):
    _folder_tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    s = load_imagefolder(tmp_path)
    assert s.class_names == ["ant", "cat", "dog"]  # sorted folder names
    assert s.num_classes == 3
    assert torch.equal(s.train_labels(), torch.tensor([0, 0, 0, 1, 1, 2]))
    assert sorted(y for _, y in s.val.samples) == [0, 1, 2]
    img, y = s.train[0]
    assert img.size == (12, 10) and y == 0


def test_calibration_split_is_carved_from_train_and_can_be_turned_off(tmp_path):
    _folder_tree(tmp_path)
    cfg = _cfg(tmp_path)
    cfg.dataset_options = {"calibration_fraction": 0.5, "split_seed": 0}
    b = DATASETS.get("imagefolder")(cfg)
    assert b.splits["train"] == 3 and b.splits["calibration"] == 3 and b.splits["test"] == 3
    train_paths = {p for p, _ in b.train.samples}
    cal_paths = {p for p, _ in b.val.samples}
    assert not train_paths & cal_paths and len(train_paths | cal_paths) == 6
    assert b.val.transform is b.test.transform and b.train.transform is not b.val.transform
    cfg.dataset_options = {"calibration_fraction": 0}
    b0 = DATASETS.get("imagefolder")(cfg)
    assert len(b0.train) == 6 and b0.val is b0.test
    cfg.dataset_options = {"calibration_fraction": 0.9}
    with pytest.raises(DataError, match="calibration_fraction"):
        DATASETS.get("imagefolder")(cfg)


def test_imagenet_bundle_via_registry(tmp_path):
    _folder_tree(tmp_path)
    cfg0 = _cfg(tmp_path)
    cfg0.dataset_options = {"calibration_fraction": 0}  # the paper's split: every train image
    b = DATASETS.get("imagenet")(cfg0)
    assert b.kind == "image" and b.num_classes == 3 and b.input_shape == (3, 32, 32)
    assert b.train_labels.dtype == torch.int64 and b.train_labels.tolist() == [0, 0, 0, 1, 1, 2]
    x, y = b.train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 1
    xv, _ = b.val[0]
    assert xv.shape == (3, 32, 32)
    assert b.extra["mean"] == NORMALIZATION["imagenet"][0]
    assert b.default_model == "vit_base_patch16_224"
    names = [type(t).__name__ for t in b.train.transform.transforms]
    assert "RandAugment" in names and b.train.transform.transforms[-1].probability == 0.25
    cfg = _cfg(tmp_path)
    cfg.augment = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}  # no aa / erasing given
    plain = DATASETS.get("imagenet")(cfg)
    names = [type(t).__name__ for t in plain.train.transform.transforms]
    assert "RandAugment" not in names and "RandomErasing" not in names
    assert plain.extra["mean"] == (0.5, 0.5, 0.5)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train"):
        load_imagefolder(tmp_path)
    _folder_tree(tmp_path)
    (tmp_path / "val" / "zebra").mkdir()
    _img(tmp_path / "val" / "zebra" / "z.png", 1)
    with pytest.raises(DatasetFormatError, match="zebra"):
        load_imagefolder(tmp_path)


def test_imagenet_missing_val_mentions_source(tmp_path):
    _folder_tree(tmp_path)
    for p in sorted((tmp_path / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(DataError, match=r"val.*image-net\.org"):
        DATASETS.get("imagenet")(_cfg(tmp_path))


def test_missing_data_path_and_unknown_options(tmp_path):
    with pytest.raises(DataError, match="--data-path"):
        DATASETS.get("cifar100")(SimpleNamespace(data_path=None))
    _folder_tree(tmp_path)
    cfg = _cfg(tmp_path)
    cfg.dataset_options = {"foo": 1}
    with pytest.raises(DataError, match="foo"):
        DATASETS.get("imagefolder")(cfg)
    cfg = _cfg(tmp_path, )
    cfg.num_classes = 7
    with pytest.raises(DataError, match="3 classes"):
        DATASETS.get("imagefolder")(cfg)


def test_corrupt_jpeg_names_the_file(tmp_path):
    _folder_tree(tmp_path)
    bad = tmp_path / "train" / "ant" / "ant_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    truncated = tmp_path / "train" / "dog" / "dog_0.JPEG"
    truncated.write_bytes(truncated.read_bytes()[:40])
    b = DATASETS.get("imagefolder")(_cfg(tmp_path))
    idx = [i for i, (p, _) in enumerate(b.train.samples) if p == bad][0]
    with pytest.raises(CorruptImageError, match=str(bad)):
        b.train[idx]
    idx = [i for i, (p, _) in enumerate(b.train.samples) if p == truncated][0]
    with pytest.raises(CorruptImageError, match="dog_0.JPEG"):
        b.train[idx]


# -- tiny-imagenet ---------------------------------------------------------------------------------


def _tiny(root: Path, wnids=("n03", "n01", "n02")) -> None:
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for k, w in enumerate(wnids):
        for i in range(k + 1):
            _img(root / "train" / w / "images" / f"{w}_{i}.JPEG", 30 * k, fmt="JPEG")
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t5\t5\n")
    lines = []
    for i, w in enumerate(["n02", "n03", "n01", "n02"]):
        _img(root / "val" / "images" / f"val_{i}.JPEG", 99, fmt="JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t5\t5")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "test" / "images").mkdir(parents=True)


def test_tiny_imagenet_class_ids_follow_wnids_order(tmp_path):
    # a deep path whose components contain 'train' / 'val' must not matter
    root = tmp_path / "a" / "train" / "val" / "b" / "tiny-imagenet-200"
    _tiny(root)
    s = load_tiny_imagenet(root)
    assert s.class_names == ["n03", "n01", "n02"]
    assert s.train_labels().tolist() == [0, 1, 1, 2, 2, 2]
    assert [y for _, y in s.val.samples] == [2, 0, 1, 2]
    # the parent folder of tiny-imagenet-200 works too
    s2 = load_tiny_imagenet(root.parent)
    assert s2.train_labels().tolist() == s.train_labels().tolist()
    b = DATASETS.get("tiny-imagenet")(_cfg(root, input_size=16))
    assert b.num_classes == 3 and b.train[0][0].shape == (3, 16, 16)
    assert b.extra["std"] == NORMALIZATION["tiny-imagenet"][1]


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"wnids\.txt.*cs231n"):
        load_tiny_imagenet(tmp_path)
    root = tmp_path / "tiny"
    _tiny(root)
    ann = root / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text() + "val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DatasetFormatError, match=r"line 5.*n99"):
        load_tiny_imagenet(root)
    ann.unlink()
    with pytest.raises(DatasetNotFoundError, match="val_annotations.txt"):
        load_tiny_imagenet(root)


# -- CIFAR -----------------------------------------------------------------------------------------


def _cifar_rows(labels, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _cifar10(root: Path) -> dict:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rows = {}
    for i in range(1, 6):
        labels = [(i + j) % 10 for j in range(3)]
        r = _cifar_rows(labels, i)
        rows[i] = (r, labels)
        # plain dict of bytes / lists / ints, like the official archive (keys as bytes)
        _dump(d / f"data_batch_{i}", {b"batch_label": b"training batch", b"labels": labels,
                                      b"data": r.tobytes(), b"filenames": [b"x.png"] * 3})
    tl = [9, 8]
    rows["test"] = (_cifar_rows(tl, 0), tl)
    _dump(d / "test_batch", {b"labels": tl, b"data": [bytes(x) for x in rows["test"][0]]})
    _dump(d / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                               b"num_vis": 3072})
    return rows


def test_cifar10_pickles(tmp_path):
    rows = _cifar10(tmp_path)
    s = load_cifar(tmp_path, 10)  # parent of cifar-10-batches-py
    assert s.num_classes == 10 and s.class_names[3] == "c3"
    expected = [y for i in range(1, 6) for y in rows[i][1]]
    assert s.train_labels().tolist() == expected
    assert len(s.val) == 2 and s.val.targets == [9, 8]
    # pixel layout: row = 1024 R, 1024 G, 1024 B values, each row-major 32x32
    r = rows[2][0][1]
    img, y = s.train[4]
    px = np.asarray(img)
    assert y == rows[2][1][1]
    assert px[0, 0].tolist() == [r[0], r[1024], r[2048]]
    assert px[3, 5].tolist() == [r[3 * 32 + 5], r[1024 + 3 * 32 + 5], r[2048 + 3 * 32 + 5]]
    b = DATASETS.get("cifar10")(_cfg(tmp_path / "cifar-10-batches-py"))
    assert b.train_labels.tolist() == expected and b.train[0][0].shape == (3, 32, 32)


def test_cifar100_pickles_numpy_and_errors(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    fine = [5, 99, 0, 42]
    _dump(d / "train", {"fine_labels": fine, "coarse_labels": [0] * 4,
                        "data": _cifar_rows(fine, 1)})  # a numpy array also loads
    with pytest.raises(DatasetNotFoundError, match=r"test.*cs\.toronto\.edu"):
        load_cifar(d, 100)
    _dump(d / "test", {"fine_labels": [1], "data": _cifar_rows([1], 2)})
    with pytest.raises(DatasetNotFoundError, match="meta"):
        load_cifar(d, 100)
    _dump(d / "meta", {"fine_label_names": [f"f{i}" for i in range(100)]})
    s = load_cifar(tmp_path, 100)
    assert s.num_classes == 100 and s.train_labels().tolist() == fine
    b = DATASETS.get("cifar100")(_cfg(d, input_size=24))
    assert b.extra["mean"] == NORMALIZATION["cifar100"][0] and b.val[0][0].shape == (3, 24, 24)
    _dump(d / "test", {"fine_labels": [1, 2], "data": _cifar_rows([1], 2)})
    with pytest.raises(DatasetFormatError, match="1 images but 2 labels"):
        load_cifar(d, 100)
    _dump(d / "test", {"fine_labels": [100], "data": _cifar_rows([1], 2)})
    with pytest.raises(DatasetFormatError, match="outside"):
        load_cifar(d, 100)


class _Payload:
    """Unpickling this would call os.mkdir(marker)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_cifar_pickle_with_callable_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _dump(d / "data_batch_1", {"labels": [1], "data": _Payload(str(marker))})
    with pytest.raises(DatasetFormatError, match="refusing to unpickle.*posix.mkdir|os.mkdir"):
        safe_unpickle(d / "data_batch_1")
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar(d, 10)
    assert not marker.exists()
    _dump(d / "data_batch_1", {"labels": [1], "data": np.array([object()], dtype=object)})
    with pytest.raises(DatasetFormatError, match="object arrays"):
        safe_unpickle(d / "data_batch_1")
    (d / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DatasetFormatError, match="data_batch_1"):
        safe_unpickle(d / "data_batch_1")


# -- transforms ------------------------------------------------------------------------------------


def test_transforms_follow_the_recipe():
    train_tf, eval_tf = build_image_transforms(224, (0.5,) * 3, (0.25,) * 3)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation"
    assert "RandAugment" in names and names[-1] == "RandomErasing"
    erase = train_tf.transforms[-1]
    assert (erase.probability, erase.mode, erase.max_count) == (0.25, "pixel", 1)
    rand_aug = next(t for t in train_tf.transforms if type(t).__name__ == "RandAugment")
    assert rand_aug.num_layers == 2 and len(rand_aug.ops) > 0
    resize, crop = eval_tf.transforms[0], eval_tf.transforms[1]
    assert resize.size == 256 and crop.size == (224, 224)
    _, eval_384 = build_image_transforms(384, (0.5,) * 3, (0.25,) * 3)
    assert eval_384.transforms[0].size == 384  # crop_pct 1 above 224, as in MAE
    x = eval_tf(Image.fromarray(np.full((300, 400, 3), 128, np.uint8)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-5)
    with pytest.raises(ValueError, match="re_prob"):
        build_image_transforms(32, (0.5,) * 3, (0.25,) * 3, re_prob=2.0)
