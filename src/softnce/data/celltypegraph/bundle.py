"""The registered ``celltypegraph`` data set: the benchmark's stage-stratified folds, reading one
fold into in-memory graphs (:func:`load_fold`) and the :class:`~softnce.data.DataBundle` factory
(:func:`build_celltypegraph`) with its graph loader, batch unpacking and stable row ids."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from softnce.data import DataBundle, DataError
from softnce.data.celltypegraph.features import (
    CLASS_NAMES,
    NUM_CLASSES,
    NUM_EDGE_FEATURES,
    NUM_NODE_FEATURES,
    SOFT_TARGET_SOURCES,
    to_data,
)
from softnce.data.celltypegraph.reader import (
    WHERE_TO_GET,
    check_files,
    load_stack_list,
    read_ovule,
    stack_list_for_root,
    stack_path,
)


def stratified_folds(
    stacks: Sequence[tuple[str, str]], num_folds: int = 5, seed: int = 0
) -> list[dict[str, list[tuple[str, str]]]]:
    """The benchmark's stage-stratified K-fold split.

    Per stage (in order of first appearance), the ids ``f"{stage}_{stack[:-3]}"`` are shuffled by
    ``numpy.random.RandomState(seed).shuffle`` (identical to ``np.random.seed(seed);
    np.random.shuffle``) and cut into ``num_folds`` parts by ``numpy.array_split``; fold ``i``
    tests on part ``i`` of every stage and trains on the others. Returns, per fold, ``{"train":
    [...], "test": [...]}`` lists of (stage, stack) pairs.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an int >= 2; found {num_folds!r}")
    by_stage: dict[str, list[str]] = {}
    for stage, stack in stacks:
        by_stage.setdefault(stage, []).append(stack)
    folds: list[dict[str, list[tuple[str, str]]]] = [
        {"train": [], "test": []} for _ in range(num_folds)
    ]
    for stage, names in by_stage.items():
        ids = [f"{stage}_{n[:-3] if n.endswith('.h5') else n}" for n in names]
        back = dict(zip(ids, names))
        np.random.RandomState(seed).shuffle(ids)
        parts = [list(p) for p in np.array_split(np.array(ids, dtype=object), num_folds)]
        for i in range(num_folds):
            for j, part in enumerate(parts):
                key = "test" if i == j else "train"
                folds[i][key].extend((stage, back[s]) for s in part)
    return folds



class GraphListDataset(Dataset):
    """A map-style data set over in-memory ``torch_geometric`` graphs."""

    def __init__(self, graphs: Sequence[Any]) -> None:
        self.graphs = list(graphs)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> Any:
        return self.graphs[i]



_KNOWN_OPTIONS = {"fold", "num_folds", "fold_seed", "soft_targets", "undirected", "stack_list"}


def unpack_graph_batch(batch: Any) -> tuple[Any, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(batch, y, soft_y or None, train_mask)``: the model reads the whole PyG batch; only
    annotated nodes (the mask) enter the loss and the metrics."""
    return batch, batch.y, getattr(batch, "soft_y", None), batch.train_mask


#: ``row id = graph_id * ROW_ID_STRIDE + node index within the graph`` (see :func:`val_row_ids`).
ROW_ID_STRIDE = 1 << 32


def val_row_ids(batch: Any) -> torch.Tensor:
    """Stable key of every node row of a PyG batch: ``graph_id * 2**32 + local node index``
    (``graph_id`` = position of the stack in the stack list). The harness saves these keys, for
    the masked rows, as ``row_ids`` in ``val_logits.pt`` (``bundle.extra["val_row_ids"]``), so
    :func:`softnce.experiments.celltypegraph_cv.summarize_cv` maps rows to graphs by key, not by their order, which multi-process
    evaluation does not preserve."""
    gid = batch.graph_id
    local = torch.arange(gid.shape[0], device=gid.device)
    ptr, bidx = getattr(batch, "ptr", None), getattr(batch, "batch", None)
    if ptr is not None and bidx is not None:
        local = local - ptr[bidx]
    return gid.long() * ROW_ID_STRIDE + local


def graph_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, sampler: Any = None,
                 **kw: Any) -> Any:
    """``torch_geometric.loader.DataLoader`` (batches graphs); extra keywords (``num_workers``,
    ``drop_last``, ``generator``) go to ``torch.utils.data.DataLoader``."""
    from torch_geometric.loader import DataLoader

    kw.pop("collate_fn", None)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                      sampler=sampler, **kw)


def load_fold(
    root: str | Path,
    fold: int = 0,
    num_folds: int = 5,
    fold_seed: int = 0,
    soft: str = "smoothing",
    undirected: bool = True,
    stack_list: str | Path | None = None,
) -> tuple[GraphListDataset, GraphListDataset, dict[str, Any]]:
    """Read the train and test graphs of one cross-validation fold (see :func:`stratified_folds`).

    Raises :class:`~softnce.data.DataError` listing every missing file before reading anything.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise DataError(f"dataset_options.num_folds must be an int >= 2; found {num_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise DataError(f"dataset_options.fold must be an int in [0, {num_folds - 1}]; found "
                        f"{fold!r}")
    if soft not in SOFT_TARGET_SOURCES:
        raise DataError(f"dataset_options.soft_targets must be one of {SOFT_TARGET_SOURCES}; "
                        f"found {soft!r}")
    root = Path(root)
    stacks = load_stack_list(stack_list) if stack_list else stack_list_for_root(root)
    check_files(root, stacks)
    split = stratified_folds(stacks, num_folds=num_folds, seed=fold_seed)[fold]
    for part in ("train", "test"):
        if not split[part]:
            raise DataError(
                f"CellTypeGraph fold {fold} of {num_folds} has an empty {part} set with the "
                f"{len(stacks)} stacks listed (each stage needs >= {num_folds} stacks for every "
                f"fold to be non-empty)"
            )
    gid = {s: i for i, s in enumerate(stacks)}

    def build(pairs: list[tuple[str, str]]) -> GraphListDataset:
        out = []
        for stage, stack in pairs:
            g = read_ovule(stack_path(root, stage, stack))
            out.append(to_data(g, soft=soft, undirected=undirected, stage=stage, stack=stack,
                               graph_id=gid[(stage, stack)]))
        return GraphListDataset(out)

    train, test = build(split["train"]), build(split["test"])
    with_set2 = sum(int(bool((d.y_set2 >= 0).any())) for d in [*train.graphs, *test.graphs])
    if soft == "annotators" and with_set2 == 0:
        warnings.warn(
            "soft_targets='annotators' but no graph holds cell_labels_set2: every soft target is "
            "the one-hot first annotation (plus the config's smoothing)",
            stacklevel=2,
        )
    info = {
        "fold": fold,
        "num_folds": num_folds,
        "fold_seed": fold_seed,
        "train_stacks": [f"{a}/{b}" for a, b in split["train"]],
        "test_stacks": [f"{a}/{b}" for a, b in split["test"]],
        "graphs_with_second_annotator": with_set2,
        "soft_targets": soft,
        "undirected": undirected,
    }
    return train, test, info


def build_celltypegraph(cfg: Any) -> DataBundle:
    """CellTypeGraph node classification: one fold of the benchmark's 5-fold protocol.

    Reads ``cfg.data_path``; ``cfg.dataset_options`` keys: ``fold`` (0), ``num_folds`` (5),
    ``fold_seed`` (0), ``soft_targets`` (``smoothing|annotators``), ``undirected`` (True),
    ``stack_list`` (CSV path; default: ``DATA/celltypegraph_stacks.csv`` if present, else the
    packaged 84). The test part of the fold is the bundle's ``val`` split.
    """
    opts = getattr(cfg, "dataset_options", None) or {}
    if not isinstance(opts, dict):
        raise DataError(f"dataset_options must be a mapping; found {type(opts).__name__}")
    unknown = sorted(set(opts) - _KNOWN_OPTIONS)
    if unknown:
        raise DataError(
            f"unknown celltypegraph dataset_options {unknown}; valid: {sorted(_KNOWN_OPTIONS)}"
        )
    root = getattr(cfg, "data_path", None)
    if not root:
        raise DataError(
            "celltypegraph needs a data path (--data-path DIR); nothing is downloaded. "
            + WHERE_TO_GET
        )
    undirected = opts.get("undirected", True)
    if not isinstance(undirected, bool):
        raise DataError(f"dataset_options.undirected must be true or false; found {undirected!r}")
    train, test, info = load_fold(
        root,
        fold=opts.get("fold", 0),
        num_folds=opts.get("num_folds", 5),
        fold_seed=opts.get("fold_seed", 0),
        soft=opts.get("soft_targets", "smoothing"),
        undirected=undirected,
        stack_list=opts.get("stack_list"),
    )
    train_labels = torch.cat([d.y[d.train_mask] for d in train.graphs])
    return DataBundle(
        name="celltypegraph",
        kind="graph",
        train=train,
        val=test,
        test=None,
        num_classes=NUM_CLASSES,
        input_shape=(NUM_NODE_FEATURES,),
        train_labels=train_labels,
        unpack=unpack_graph_batch,
        loader_factory=graph_loader,
        class_names=list(CLASS_NAMES),
        extra={**info, "num_edge_features": NUM_EDGE_FEATURES, "val_row_ids": val_row_ids},
        default_model="gcn",
    )

