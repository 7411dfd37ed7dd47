"""Dataset registry and the :class:`DataBundle` contract every data set returns.

A data set is a factory ``build(cfg) -> DataBundle`` registered with
``@DATASETS.register("name")``; ``cfg`` is the harness's resolved ``TrainConfig``.
The engine only talks to :class:`DataBundle`, so tabular, image and graph data share one loop.

Batch convention (what the bundle's loaders yield, after ``collate_fn``):

* tabular / image: a tuple ``(inputs, labels)`` with ``labels`` an ``(N,)`` int64 tensor;
* graph: a ``torch_geometric`` ``Batch``/``Data`` whose ``y`` holds node labels, optionally
  ``soft_y`` (N, C) per-node soft targets and ``train_mask``/``eval_mask`` boolean masks.

``bundle.unpack(batch)`` turns any batch into ``(model_input, labels, soft_targets_or_None,
mask_or_None)`` so the engine never inspects the batch type itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from softnce.registry import Registry

DatasetFactory = Callable[..., "DataBundle"]


class DataError(ValueError):
    """Bad data input (missing or malformed files, unknown dataset option, wrong path).

    Raised by dataset factories; the CLI reports it as ``error: <message>`` (exit code 2)
    without a traceback.
    """

DATASETS: Registry[DatasetFactory] = Registry("dataset")


def _default_unpack(batch: Any) -> tuple[Any, torch.Tensor, torch.Tensor | None, None]:
    inputs, labels = batch[0], batch[1]
    soft = batch[2] if len(batch) > 2 else None
    return inputs, labels, soft, None


@dataclass
class DataBundle:
    """Everything the engine needs to know about a data set.

    Attributes:
        name: registry name.
        kind: ``"tabular"``, ``"image"`` or ``"graph"`` (chooses the MixUp flavour and models).
        train, val: map-style datasets (``test`` optional).
        num_classes: C.
        input_shape: shape of one example's input (``(D,)``, ``(3, H, W)``, or ``(F,)`` node
            features for graphs).
        train_labels: (N_train,) int64 labels, used for the class prior without decoding inputs.
        collate_fn: passed to ``DataLoader`` (``None`` means default collation).
        unpack: batch -> ``(model_input, labels, soft_targets or None, mask or None)``.
        loader_factory: optional ``(dataset, batch_size, shuffle, sampler, **kw) -> iterable``
            for data sets that need their own loader (graphs); ``None`` uses ``DataLoader``.
        class_names: optional display names.
        extra: anything data-set specific (normalisation constants, fold ids, ...).
        default_model: model name used when the config does not name one (``None``: ``mlp``).
        val_true_probs: optional ``(N_val, C)`` true ``p(y|x)`` for the validation split (in the
            order of ``val``), for generated data: the harness then also reports calibration
            against the truth.
        test_true_probs: the same for the ``test`` split.
        splits: the number of samples in each split, e.g. ``{"train": 1077, "calibration": 360,
            "test": 360}``, and how they were made (recorded in the run's summary).

    Split protocol: ``val`` is the *calibration* split (per-epoch evaluation, model selection,
    temperature scaling); ``test`` is held out and only scored at the end of a run. Embedded
    data sets make a fixed, seeded, stratified three-way split; data sets that come with only
    train and test carve the calibration split from the training set.
    """

    name: str
    kind: str
    train: Dataset
    val: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    train_labels: torch.Tensor
    test: Dataset | None = None
    collate_fn: Callable | None = None
    unpack: Callable[[Any], tuple] = _default_unpack
    loader_factory: Callable | None = None
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    default_model: str | None = None
    val_true_probs: torch.Tensor | None = None
    test_true_probs: torch.Tensor | None = None
    splits: dict[str, Any] = field(default_factory=dict)


def _import_builtin_modules() -> None:
    """Import the built-in data set modules that exist so their factories register.

    Heavy optional dependencies (h5py, torch_geometric, PIL) must be imported inside the
    factories, not at module import, so ``import softnce.data`` stays light.
    """
    import importlib
    import importlib.util

    for mod in ("tabular", "image_factories", "celltypegraph", "extreme"):
        name = f"{__name__}.{mod}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


_import_builtin_modules()
