"""CellTypeGraph (Cerrone et al., CVPR 2022, arXiv 2205.08166): node classification on 84 ovules.

Each Arabidopsis ovule segmentation is one graph: cells are nodes, touching cells are joined by an
edge, and every cell carries one of 9 cell-type labels. This module reads the benchmark's HDF5 files
itself (the benchmark's own package, ``ctg-benchmark``, is conda-only and breaks with current
PyTorch), builds the node and edge features the way the benchmark's loader does, reproduces its
stage-stratified 5-fold cross-validation, and writes synthetic data sets in the same format.
Nothing is ever downloaded: data are read from ``--data-path``.

Data layout
-----------
``{root}/ovules-celltype-dataset/raw/label_grs_surface/{stage}/{stack}.h5``: 84 files over the 9
stages ``2-III`` .. ``3-VI``. The (stage, stack) list ships with the package
(``softnce/resources/celltypegraph_stacks.csv``, the benchmark's ``list_data.csv``). A file named
``celltypegraph_stacks.csv`` (columns ``stage,stack``) at ``root`` replaces the packaged list; the
synthetic generator writes one, so a synthetic directory with any number of stacks just works.
Every listed file must exist: all missing ones are reported together, with where to get the data.

HDF5 keys read per ovule: ``cell_ids`` (N,), ``cell_labels`` (N,), ``edges_ids`` (E, 2) (each
undirected pair once, id ``0`` is the background), ``edges_labels`` (E,), one dataset per feature
in the groups ``cell_features`` and ``edges_features``, and optionally ``cell_labels_set2`` (a
second expert's annotation). ``cell_samples`` (point samples on each cell surface) exists in the
files but no default feature uses it, so it is not read.

Labels
------
Raw ids are mapped as the benchmark does, ``{1->0, 2->1, 3->2, 4->3, 14->3, 5->4, 6->5, 7->6,
8->7, 10->8}`` (14, "L5", is merged into L4). Raw ``0`` means "not annotated": the benchmark maps it
to class 0 and prints "Masked nodes are not implemented"; we instead exclude such nodes from the
loss and from every metric (``train_mask``/``eval_mask`` are False, ``y`` is set to 0 only so the
tensor is a valid class index). Any other raw value is an error naming the file.

Node features: 74 columns (benchmark ``loader_base_config.yaml``, ``label_grs_surface``)
---------------------------------------------------------------------------------------------------
================================  =====  ===================================
feature (HDF5 name)               width  transform (per graph)
================================  =====  ===================================
com_grs                           3      zscore
lrs_orientation_axis1_grs         6      benchmark unit vector
lrs_orientation_axis2_grs         6      benchmark unit vector
lrs_orientation_axis3_grs         6      benchmark unit vector
pca_orientation_axis1_grs         6      benchmark unit vector
pca_orientation_axis2_grs         6      benchmark unit vector
pca_orientation_axis3_grs         6      benchmark unit vector
degree_centrality                 1      zscore
rw_centrality                     1      zscore
hops_to_bg                        5      one-hot (5 channels)
volume_um                         1      zscore
surface_um                        1      zscore
length_axis1_grs                  1      zscore
length_axis2_grs                  1      zscore
length_axis3_grs                  1      zscore
lrs_axis12_dot_grs                1      abs
lrs_axis2_angle_grs               1      abs
lrs_proj_axis1_grs                3      abs
lrs_proj_axis2_grs                3      abs
lrs_proj_axis3_grs                3      abs
pca_proj_axis1_grs                3      abs
pca_proj_axis2_grs                3      abs
pca_proj_axis3_grs                3      abs
pca_explained_variance_grs        3      zscore
================================  =====  ===================================

3 (centre) + 36 (6 orientations x 6) + 2 (centralities) + 5 (hops) + 2 (volume, surface)
+ 3 (lengths) + 2 (axis dot, angle) + 18 (6 projections x 3) + 3 (PCA variance) = 74.

Edge features: 11 columns
-------------------------
``surface_um`` (1, zscore), ``com_distance_um`` (1, zscore), ``com_grs`` (3, zscore),
``lrs_dot_axis1_grs``, ``lrs_dot_axis2_grs``, ``lrs_dot_axis3_grs`` (1 each, abs then zscore),
``lrs_proj_grs`` (3, abs then zscore): 1 + 1 + 3 + 3 + 3 = 11.

How the list was verified, and the transforms
---------------------------------------------
The names, order and transforms are those of the benchmark's ``ctg_benchmark/resources/
loader_base_config.yaml``. The widths are not written in that file; they follow from the code that
computed the features (``plant-celltype``): an "orientation" is the sign-free 6-vector
``(x^2, y^2, z^2, xy, yz, zx)`` of a unit axis ``(x, y, z)`` (``vectors_to_orientation``), a
"projection" is an axis dotted with the 3 global axes (width 3), ``pca_explained_variance`` has
one entry per principal axis, ``lrs_proj_grs`` on edges is the unit centre-to-centre vector in the
3 global axes. With these widths the config sums to exactly 74 node and 11 edge columns, the
``in_channels=74`` of the benchmark's own GCN example; we could not open a real file to check.
The transforms reproduce the benchmark's functions, including two quirks that we keep on purpose
so the features match the published ones:

* **zscore** ``(a - mean(a)) / (std(a) + 1e-16)`` with *one* mean and std over the whole block
  (all rows and all columns of a multi-column feature such as ``com_grs``), per graph;
* **benchmark unit vector** ``v / (|sum_k v_k| + 1e-16)`` per row: the benchmark's
  ``ToUnitVector`` computes ``sqrt(sum(v, axis=1) ** 2)``, i.e. the absolute row *sum*, not the L2
  norm. For an orientation of a unit axis the row sum is ``1 + xy + yz + zx``, which lies in
  ``[1/2, 2]``, so the division is always well conditioned;
* **one-hot** ``h - min(h)`` clipped to ``[0, 4]``, then 5 channels with values 0 / 1;
* **abs** elementwise ``|a|``.

Edge features are transformed on all E stored rows (background pairs included) and the background
rows are dropped afterwards, in the benchmark's order. The benchmark then uses each pair once
(a directed ``edge_index``); we add the reverse direction of every pair (same edge features) so
messages flow both ways (``dataset_options: {undirected: false}`` restores the benchmark's
one-direction graph).

Protocol
--------
5-fold cross-validation stratified by stage (:func:`stratified_folds`): per stage, in the order
of the stack list, the stack names ``f"{stage}_{stack without .h5}"`` are shuffled with
``numpy.random.seed(0); numpy.random.shuffle`` and cut with ``numpy.array_split`` into 5 parts;
fold ``i`` tests on part ``i`` of every stage and trains on the rest (train/test sizes 66/18,
66/18, 67/17, 67/17, 70/14 for the 84 stacks). Scores: top-1 accuracy and class-average accuracy
over the classes present, excluding class 7 (embryo sac), see :func:`graph_scores`.

Soft targets (``dataset_options: {soft_targets: ...}``)
------------------------------------------------------
``smoothing`` (default): the data set provides hard labels only and the harness builds
``(1 - s) onehot(a) + s / C`` with ``s`` = the config's ``smoothing``. ``annotators``: every node
carries ``soft_y = (onehot(a) + onehot(b)) / 2``, the average of the two experts' one-hot labels
(``b`` from ``cell_labels_set2``); where ``b`` is missing (no ``cell_labels_set2`` in the file, or
raw 0 for that cell) the row is ``onehot(a)``. The harness applies the config's ``smoothing`` on
top: ``(1 - s) soft_y + s / C``. Hard labels ``y`` (used by ``nll``/``infonce`` and by every
metric) are always the first expert's.

Synthetic data
--------------
:func:`make_synthetic` (also ``python -m softnce.data.celltypegraph make-synthetic DIR --stacks
N``) writes files in exactly this format: tens of cells per ovule placed in a cylinder, with the
class a function of the position along the axis and the depth below the surface, so models beat
chance. The features are plausible stand-ins (real geometry for centres, distances, hops,
orientations; noisy class-dependent volumes), not a re-implementation of the benchmark's image
processing.
"""

from __future__ import annotations

import argparse
import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from softnce.data import DATASETS, DataBundle, DataError

NUM_CLASSES = 9
#: class excluded from the class-average accuracy (embryo sac), as in the benchmark.
EXCLUDED_CLASS = 7
#: raw annotation id -> class index.
LABEL_MAP: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3, 14: 3, 5: 4, 6: 5, 7: 6, 8: 7, 10: 8}
#: raw id of a cell nobody annotated.
UNANNOTATED = 0
#: the benchmark's own names of the 9 classes (``original_name_mapping`` of ctg-benchmark).
CLASS_NAMES = [
    "L1 (ab oi / oi2)",
    "L2 (ad oi / oi1)",
    "L3 (ab ii / ii2)",
    "L4 (ad ii / ii1; incl. L5)",
    "nu",
    "pc",
    "fu (funiculus)",
    "es (embryo sac)",
    "ac",
]
STAGES = ("2-III", "2-IV", "2-V", "3-I", "3-II", "3-III", "3-IV", "3-V", "3-VI")
GRS = "label_grs_surface"
SUBDIR = ("ovules-celltype-dataset", "raw", GRS)
STACK_LIST_NAME = "celltypegraph_stacks.csv"
#: ``label_grs_surface`` archive, as listed in the benchmark's ``ctg_benchmark/__init__.py``.
DATA_URL = "https://heibox.uni-heidelberg.de/f/23c79badbc9e46f59242/?dl=1"
WHERE_TO_GET = (
    f"Get the benchmark's label_grs_surface archive ({DATA_URL}, the URL used by the "
    "ctg-benchmark package), then: mkdir -p ROOT/ovules-celltype-dataset/raw && unzip "
    "label_grs_surface.zip -d ROOT/ovules-celltype-dataset/raw  (see the README, "
    "section CellTypeGraph); or write a synthetic set with: python -m softnce.data.celltypegraph "
    "make-synthetic ROOT --stacks 84"
)
SOFT_TARGET_SOURCES = ("smoothing", "annotators")
_EPS = 1e-16
_ONEHOT_CHANNELS = 5


@dataclass(frozen=True)
class FeatureSpec:
    """One named feature: HDF5 dataset name, output columns, transforms applied in order, and
    the stored width when it differs (``hops_to_bg`` is stored as (N,), one-hot to 5 columns)."""

    name: str
    width: int
    transforms: tuple[str, ...]
    stored_width: int | None = None

    @property
    def raw_width(self) -> int:
        return self.width if self.stored_width is None else self.stored_width


def _orient(name: str) -> FeatureSpec:
    return FeatureSpec(name, 6, ("unit",))


NODE_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("com_grs", 3, ("zscore",)),
    *(_orient(f"lrs_orientation_axis{i}_grs") for i in (1, 2, 3)),
    *(_orient(f"pca_orientation_axis{i}_grs") for i in (1, 2, 3)),
    FeatureSpec("degree_centrality", 1, ("zscore",)),
    FeatureSpec("rw_centrality", 1, ("zscore",)),
    FeatureSpec("hops_to_bg", _ONEHOT_CHANNELS, ("onehot",), stored_width=1),
    FeatureSpec("volume_um", 1, ("zscore",)),
    FeatureSpec("surface_um", 1, ("zscore",)),
    *(FeatureSpec(f"length_axis{i}_grs", 1, ("zscore",)) for i in (1, 2, 3)),
    FeatureSpec("lrs_axis12_dot_grs", 1, ("abs",)),
    FeatureSpec("lrs_axis2_angle_grs", 1, ("abs",)),
    *(FeatureSpec(f"lrs_proj_axis{i}_grs", 3, ("abs",)) for i in (1, 2, 3)),
    *(FeatureSpec(f"pca_proj_axis{i}_grs", 3, ("abs",)) for i in (1, 2, 3)),
    FeatureSpec("pca_explained_variance_grs", 3, ("zscore",)),
)
EDGE_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("surface_um", 1, ("zscore",)),
    FeatureSpec("com_distance_um", 1, ("zscore",)),
    FeatureSpec("com_grs", 3, ("zscore",)),
    *(FeatureSpec(f"lrs_dot_axis{i}_grs", 1, ("abs", "zscore")) for i in (1, 2, 3)),
    FeatureSpec("lrs_proj_grs", 3, ("abs", "zscore")),
)
NUM_NODE_FEATURES = sum(f.width for f in NODE_FEATURES)
NUM_EDGE_FEATURES = sum(f.width for f in EDGE_FEATURES)
assert NUM_NODE_FEATURES == 74 and NUM_EDGE_FEATURES == 11


# --------------------------------------------------------------------------------------------
# feature transforms (benchmark semantics, see the module docstring)
# --------------------------------------------------------------------------------------------
def zscore(a: np.ndarray) -> np.ndarray:
    """``(a - mean(a)) / (std(a) + 1e-16)`` with one scalar mean/std over the whole array."""
    a = np.asarray(a, dtype=np.float64)
    return (a - a.mean()) / (a.std() + _EPS)


def benchmark_unit_rows(a: np.ndarray) -> np.ndarray:
    """Row-normalise as the benchmark's ``ToUnitVector``: ``v / (|sum_k v_k| + 1e-16)``."""
    a = np.asarray(a, dtype=np.float64)
    return a / (np.abs(a.sum(axis=1, keepdims=True)) + _EPS)


def onehot_hops(h: np.ndarray, channels: int = _ONEHOT_CHANNELS) -> np.ndarray:
    """``h - min(h)`` clipped to ``[0, channels - 1]``, one-hot encoded with values 0/1."""
    h = np.asarray(h).reshape(-1)
    k = np.clip(np.rint(h - h.min()).astype(np.int64), 0, channels - 1)
    out = np.zeros((h.shape[0], channels), dtype=np.float64)
    out[np.arange(h.shape[0]), k] = 1.0
    return out


_TRANSFORMS = {"zscore": zscore, "unit": benchmark_unit_rows, "abs": np.abs, "onehot": onehot_hops}


def vectors_to_orientation(v: np.ndarray) -> np.ndarray:
    """Sign-free orientation of axes ``v`` (M, 3): ``(x^2, y^2, z^2, xy, yz, zx)`` (M, 6)."""
    v = np.asarray(v, dtype=np.float64)
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    return np.stack([x * x, y * y, z * z, x * y, y * z, z * x], axis=1)


# --------------------------------------------------------------------------------------------
# stack list, paths, folds
# --------------------------------------------------------------------------------------------
def _read_stack_csv(fh: Any, source: str) -> list[tuple[str, str]]:
    reader = csv.DictReader(fh)
    if reader.fieldnames is None or not {"stage", "stack"} <= set(reader.fieldnames):
        raise ValueError(
            f"stack list {source} must have a header with columns 'stage,stack'; found "
            f"{reader.fieldnames}"
        )
    rows = [(r["stage"].strip(), r["stack"].strip()) for r in reader]
    if not rows:
        raise ValueError(f"stack list {source} lists no stacks")
    bad = [r for r in rows if not r[0] or not r[1].endswith(".h5")]
    if bad:
        raise ValueError(f"stack list {source}: rows need a stage and a *.h5 stack; found {bad[:3]}")
    if len(set(rows)) != len(rows):
        raise ValueError(f"stack list {source} lists some (stage, stack) pairs more than once")
    return rows


def load_stack_list(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The (stage, stack) pairs: the packaged 84 of the benchmark, or those of the CSV ``path``."""
    if path is None:
        ref = resources.files("softnce").joinpath("resources", STACK_LIST_NAME)
        with ref.open("r", encoding="utf-8", newline="") as fh:
            return _read_stack_csv(fh, f"softnce/resources/{STACK_LIST_NAME}")
    path = Path(path)
    with path.open("r", encoding="utf-8", newline="") as fh:
        return _read_stack_csv(fh, str(path))


def stack_list_for_root(root: str | Path) -> list[tuple[str, str]]:
    """``root/celltypegraph_stacks.csv`` if present (synthetic sets write one), else the 84."""
    local = Path(root) / STACK_LIST_NAME
    return load_stack_list(local if local.is_file() else None)


def stack_path(root: str | Path, stage: str, stack: str) -> Path:
    """``{root}/ovules-celltype-dataset/raw/label_grs_surface/{stage}/{stack}``."""
    return Path(root).joinpath(*SUBDIR, stage, stack)


def check_files(root: str | Path, stacks: Sequence[tuple[str, str]]) -> list[Path]:
    """Paths of all ``stacks`` under ``root``; raises :class:`~softnce.data.DataError` listing
    every missing file and where to get the data."""
    paths = [stack_path(root, st, sk) for st, sk in stacks]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        listing = "\n  ".join(str(p) for p in missing)
        raise DataError(
            f"CellTypeGraph: {len(missing)} of {len(paths)} stack files are missing under "
            f"data path {str(root)!r}:\n  {listing}\n{WHERE_TO_GET}"
        )
    return paths


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


# --------------------------------------------------------------------------------------------
# reading one ovule
# --------------------------------------------------------------------------------------------
@dataclass
class OvuleGraph:
    """One ovule as read from disk (numpy arrays; background edges already removed).

    Attributes:
        x: (N, 74) float32 node features. edge_index: (2, E) int64, each pair once, rows index
        nodes 0..N-1. edge_attr: (E, 11) float32. y: (N,) int64 classes, -1 = not annotated.
        y_set2: (N,) int64 second expert's classes (-1 = none) or ``None`` if the file has none.
        cell_ids: (N,) original ids. edge_labels: (E,) as stored.
    """

    x: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray
    y: np.ndarray
    y_set2: np.ndarray | None
    cell_ids: np.ndarray
    edge_labels: np.ndarray
    path: str


def _map_labels(raw: np.ndarray, path: str, key: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
            raise ValueError(f"{path}: {key} must hold integer label ids; found non-integers")
    raw = raw.astype(np.int64)
    known = set(LABEL_MAP) | {UNANNOTATED}
    unknown = sorted(set(np.unique(raw).tolist()) - known)
    if unknown:
        raise ValueError(
            f"{path}: {key} holds label ids {unknown} outside the benchmark's map "
            f"{sorted(known)} (0 = not annotated)"
        )
    lut = np.full(max(known) + 1, -1, dtype=np.int64)
    for k, v in LABEL_MAP.items():
        lut[k] = v
    return lut[raw]


def _read_features(
    group: Any, specs: Sequence[FeatureSpec], rows: int, path: str, group_name: str
) -> np.ndarray:
    missing = [s.name for s in specs if s.name not in group]
    if missing:
        raise ValueError(f"{path}: group {group_name!r} lacks the feature datasets {missing}")
    blocks = []
    for spec in specs:
        a = np.asarray(group[spec.name][()])
        if a.ndim == 1:
            a = a[:, None]
        w = spec.raw_width
        if a.ndim != 2 or a.shape != (rows, w):
            raise ValueError(
                f"{path}: {group_name}/{spec.name} must have shape ({rows}, {w})"
                f"{' or (' + str(rows) + ',)' if w == 1 else ''}; found {a.shape}"
            )
        if a.dtype.kind not in "biuf":
            raise ValueError(f"{path}: {group_name}/{spec.name} must be numeric; found {a.dtype}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{path}: {group_name}/{spec.name} holds NaN or infinite values")
        for t in spec.transforms:
            a = _TRANSFORMS[t](a)
        blocks.append(a.reshape(rows, spec.width))
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((rows, 0))


def read_ovule(path: str | Path) -> OvuleGraph:
    """Read one benchmark HDF5 file into an :class:`OvuleGraph` (features as the benchmark builds
    them, background edges dropped). Malformed files raise ``ValueError`` naming the file."""
    import h5py

    path = str(path)
    try:
        fh = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from e
    with fh:
        required = ("cell_ids", "cell_labels", "edges_ids", "edges_labels")
        groups = ("cell_features", "edges_features")
        missing = [k for k in required if not isinstance(fh.get(k), h5py.Dataset)]
        missing += [k for k in groups if not isinstance(fh.get(k), h5py.Group)]
        if missing:
            raise ValueError(
                f"{path}: missing {missing} (a CellTypeGraph file needs datasets {list(required)} "
                f"and groups {list(groups)})"
            )
        cell_ids = np.asarray(fh["cell_ids"][()])
        labels_raw = np.asarray(fh["cell_labels"][()])
        edges = np.asarray(fh["edges_ids"][()])
        edge_labels = np.asarray(fh["edges_labels"][()])
        if cell_ids.ndim != 1 or cell_ids.shape[0] == 0 or cell_ids.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: cell_ids must be a non-empty 1-D integer array; found shape "
                f"{cell_ids.shape}, dtype {cell_ids.dtype}"
            )
        n = cell_ids.shape[0]
        if len(np.unique(cell_ids)) != n or np.any(cell_ids == 0):
            raise ValueError(f"{path}: cell_ids must be unique and non-zero (0 is the background)")
        if labels_raw.shape != (n,):
            raise ValueError(f"{path}: cell_labels must have shape ({n},); found {labels_raw.shape}")
        if edges.ndim != 2 or edges.shape[1] != 2 or edges.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: edges_ids must be an (E, 2) integer array; found shape {edges.shape}, "
                f"dtype {edges.dtype}"
            )
        e_all = edges.shape[0]
        if edge_labels.shape != (e_all,):
            raise ValueError(
                f"{path}: edges_labels must have shape ({e_all},); found {edge_labels.shape}"
            )
        y = _map_labels(labels_raw, path, "cell_labels")
        y2 = None
        if "cell_labels_set2" in fh:
            raw2 = np.asarray(fh["cell_labels_set2"][()])
            if raw2.shape != (n,):
                raise ValueError(
                    f"{path}: cell_labels_set2 must have shape ({n},); found {raw2.shape}"
                )
            y2 = _map_labels(raw2, path, "cell_labels_set2")
        x = _read_features(fh["cell_features"], NODE_FEATURES, n, path, "cell_features")
        # edge transforms see every stored row (background pairs included), as in the benchmark
        ea = _read_features(fh["edges_features"], EDGE_FEATURES, e_all, path, "edges_features")

    edges = edges.astype(np.int64)
    keep = (edges[:, 0] != 0) & (edges[:, 1] != 0)
    edges, ea, edge_labels = edges[keep], ea[keep], edge_labels[keep]
    if np.any(edges[:, 0] == edges[:, 1]):
        raise ValueError(f"{path}: edges_ids holds self-loops (a cell paired with itself)")
    order = np.argsort(cell_ids, kind="stable")
    sorted_ids = cell_ids[order].astype(np.int64)
    pos = np.searchsorted(sorted_ids, edges)
    pos = np.clip(pos, 0, n - 1)
    found = sorted_ids[pos] == edges
    if not np.all(found):
        unknown = sorted(set(edges[~found].tolist()))[:10]
        raise ValueError(f"{path}: edges_ids refer to cell ids not in cell_ids, e.g. {unknown}")
    edge_index = order[pos].T.astype(np.int64)
    lo, hi = np.minimum(edge_index[0], edge_index[1]), np.maximum(edge_index[0], edge_index[1])
    if len(np.unique(lo * n + hi)) != lo.shape[0]:
        raise ValueError(f"{path}: edges_ids lists some cell pair more than once")
    return OvuleGraph(
        x=x.astype(np.float32),
        edge_index=edge_index,
        edge_attr=ea.astype(np.float32),
        y=y,
        y_set2=y2,
        cell_ids=cell_ids.astype(np.int64),
        edge_labels=np.asarray(edge_labels),
        path=path,
    )


def soft_targets(
    y: np.ndarray | torch.Tensor,
    y_set2: np.ndarray | torch.Tensor | None = None,
    smoothing: float = 0.0,
    num_classes: int = NUM_CLASSES,
) -> torch.Tensor:
    """Per-node soft targets (N, C), rows on the simplex.

    ``(1 - s) * (onehot(a) + onehot(b)) / 2 + s / C`` where the second label ``b >= 0`` exists,
    ``(1 - s) * onehot(a) + s / C`` elsewhere. Rows with ``a < 0`` (not annotated) are uniform;
    they are masked out of the loss anyway.
    """
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)):
        raise TypeError(f"smoothing must be a float in [0, 1); found {type(smoothing).__name__}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1); found {smoothing}")
    a = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    if a.dim() != 1:
        raise ValueError(f"y must have shape (N,); found {tuple(a.shape)}")
    n = a.shape[0]
    if int(a.max(initial=-1) if n == 0 else a.max()) >= num_classes:
        raise ValueError(f"y must hold classes < num_classes={num_classes}; found {int(a.max())}")
    out = torch.zeros(n, num_classes, dtype=torch.float32)
    ok = a >= 0
    rows = torch.nonzero(ok).flatten()
    if y_set2 is None:
        out[rows, a[rows]] = 1.0
    else:
        b = torch.as_tensor(np.asarray(y_set2), dtype=torch.int64)
        if b.shape != a.shape:
            raise ValueError(f"y_set2 must have shape {tuple(a.shape)}; found {tuple(b.shape)}")
        both = ok & (b >= 0)
        one = ok & ~both
        r1 = torch.nonzero(one).flatten()
        out[r1, a[r1]] = 1.0
        r2 = torch.nonzero(both).flatten()
        out[r2, a[r2]] += 0.5
        out[r2, b[r2]] += 0.5
    out[~ok] = 1.0 / num_classes
    return (1.0 - smoothing) * out + smoothing / num_classes


def to_data(
    g: OvuleGraph,
    *,
    soft: str = "smoothing",
    undirected: bool = True,
    stage: str = "",
    stack: str = "",
    graph_id: int = 0,
) -> Any:
    """Build a ``torch_geometric.data.Data`` from an :class:`OvuleGraph`.

    Fields: ``x``, ``edge_index`` (both directions when ``undirected``), ``edge_attr``, ``y``
    (not-annotated nodes set to 0), ``train_mask``/``eval_mask`` (annotated nodes), ``y_set2``
    (-1 where missing), ``soft_y`` (N, C) when ``soft == "annotators"``, ``graph_id`` (N,) and
    the strings ``stage``/``stack``.
    """
    from torch_geometric.data import Data

    if soft not in SOFT_TARGET_SOURCES:
        raise ValueError(f"soft_targets must be one of {SOFT_TARGET_SOURCES}; found {soft!r}")
    ei = torch.from_numpy(g.edge_index)
    ea = torch.from_numpy(g.edge_attr)
    if undirected and ei.shape[1]:
        ei = torch.cat([ei, ei.flip(0)], dim=1)
        ea = torch.cat([ea, ea], dim=0)
    y = torch.from_numpy(g.y)
    mask = y >= 0
    n = y.shape[0]
    y2 = torch.from_numpy(g.y_set2) if g.y_set2 is not None else torch.full((n,), -1)
    data = Data(
        x=torch.from_numpy(g.x),
        edge_index=ei,
        edge_attr=ea,
        y=torch.where(mask, y, torch.zeros_like(y)),
        y_set2=y2,
        train_mask=mask,
        eval_mask=mask.clone(),
        graph_id=torch.full((n,), graph_id, dtype=torch.int64),
        stage=stage,
        stack=stack,
    )
    if soft == "annotators":
        data.soft_y = soft_targets(g.y, g.y_set2, 0.0)
    return data


class GraphListDataset(Dataset):
    """A map-style data set over in-memory ``torch_geometric`` graphs."""

    def __init__(self, graphs: Sequence[Any]) -> None:
        self.graphs = list(graphs)

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, i: int) -> Any:
        return self.graphs[i]


# --------------------------------------------------------------------------------------------
# metrics (benchmark semantics)
# --------------------------------------------------------------------------------------------
def graph_scores(
    pred: torch.Tensor,
    target: torch.Tensor,
    graph_index: torch.Tensor,
    mask: torch.Tensor | None = None,
    num_classes: int = NUM_CLASSES,
    exclude_class: int | None = EXCLUDED_CLASS,
) -> dict[str, torch.Tensor]:
    """Per-graph benchmark scores.

    For graph ``g`` with annotated nodes ``V_g``: top-1 ``acc_g = |{v: pred_v = y_v}| / |V_g|``;
    class-average ``cacc_g = mean_{c in C_g} |{v: y_v = c, pred_v = c}| / |{v: y_v = c}|`` over
    the classes ``C_g`` present in the graph, without ``exclude_class`` (the benchmark's
    ``aggregate_class(..., index=7)``: absent classes give NaN there and are skipped). Returns
    ``{"graph": ids, "top1": (G,), "class_avg": (G,)}``; a graph whose only classes are excluded
    gets ``class_avg = nan``.
    """
    pred, target, graph_index = pred.reshape(-1), target.reshape(-1), graph_index.reshape(-1)
    if not (pred.shape == target.shape == graph_index.shape):
        raise ValueError(
            f"pred, target and graph_index must have the same length; found {tuple(pred.shape)}, "
            f"{tuple(target.shape)}, {tuple(graph_index.shape)}"
        )
    if mask is not None:
        mask = mask.reshape(-1).bool()
        pred, target, graph_index = pred[mask], target[mask], graph_index[mask]
    ids = torch.unique(graph_index)
    top1 = torch.empty(len(ids), dtype=torch.float64)
    cavg = torch.empty(len(ids), dtype=torch.float64)
    for k, g in enumerate(ids.tolist()):
        sel = graph_index == g
        p, t = pred[sel], target[sel]
        hit = (p == t).double()
        top1[k] = hit.mean()
        per_class = []
        for c in range(num_classes):
            if c == exclude_class:
                continue
            tc = t == c
            if bool(tc.any()):
                per_class.append(float(hit[tc].mean()))
        cavg[k] = float(np.mean(per_class)) if per_class else float("nan")
    return {"graph": ids, "top1": top1, "class_avg": cavg}


# --------------------------------------------------------------------------------------------
# the registered data set
# --------------------------------------------------------------------------------------------
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
    :func:`summarize_cv` maps rows to graphs by key, not by their order, which multi-process
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


# --------------------------------------------------------------------------------------------
# synthetic data in exactly the benchmark's format
# --------------------------------------------------------------------------------------------
_RAW_OF_CLASS = (1, 2, 3, 4, 5, 6, 7, 8, 10)
#: (class, class) pairs a second synthetic annotator may confuse
_CONFUSABLE = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 6, 6: 5, 7: 8, 8: 7}
_BASE_VOLUME = (35.0, 35.0, 45.0, 45.0, 60.0, 80.0, 70.0, 600.0, 120.0)


def _synthetic_stack_list(num_stacks: int) -> list[tuple[str, str]]:
    real = load_stack_list()
    if num_stacks == len(real):
        return real
    n_stages = max(1, min(len(STAGES), num_stacks // 5))
    by_stage: dict[str, list[str]] = {}
    for st, sk in real:
        by_stage.setdefault(st, []).append(sk)
    out: list[tuple[str, str]] = []
    counts = [0] * n_stages
    for i in range(num_stacks):
        s = i % n_stages
        stage = STAGES[s]
        names = by_stage[stage]
        j = counts[s]
        out.append((stage, names[j] if j < len(names) else f"syn_{j:03d}.h5"))
        counts[s] += 1
    return out


def _class_of(t: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Class from the position along the axis ``t`` and the relative depth below the surface."""
    c = np.empty(t.shape[0], dtype=np.int64)
    outer, mid, inner = depth < 0.25, (depth >= 0.25) & (depth < 0.5), (depth >= 0.5) & (depth < 0.75)
    core = depth >= 0.75
    c[outer] = np.where(t[outer] < 0.5, 0, 1)
    c[mid] = np.where(t[mid] < 0.5, 2, 3)
    c[inner] = np.where(t[inner] < 0.33, 4, np.where(t[inner] < 0.66, 5, 6))
    c[core] = np.where(t[core] < 0.5, 7, 8)
    return c


def _frames(primary: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Right-handed orthonormal frames (M, 3, 3) whose first axis is ``primary`` + noise."""
    a1 = primary + noise * rng.standard_normal(primary.shape)
    a1 /= np.linalg.norm(a1, axis=1, keepdims=True) + 1e-12
    helper = np.where(np.abs(a1[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    a2 = np.cross(a1, helper)
    a2 /= np.linalg.norm(a2, axis=1, keepdims=True)
    ang = rng.uniform(0, 2 * np.pi, size=(a1.shape[0], 1))
    a3 = np.cross(a1, a2)
    a2, a3 = np.cos(ang) * a2 + np.sin(ang) * a3, -np.sin(ang) * a2 + np.cos(ang) * a3
    return np.stack([a1, a2, a3], axis=1)


def _hops(n: int, pairs: np.ndarray, boundary: np.ndarray) -> np.ndarray:
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in pairs:
        adj[i].append(j)
        adj[j].append(i)
    hops = np.full(n, -1, dtype=np.int64)
    frontier = list(np.nonzero(boundary)[0])
    for i in frontier:
        hops[i] = 1
    while frontier:
        nxt = []
        for i in frontier:
            for j in adj[i]:
                if hops[j] < 0:
                    hops[j] = hops[i] + 1
                    nxt.append(j)
        frontier = nxt
    hops[hops < 0] = hops.max(initial=1) + 1
    return hops


def write_synthetic_ovule(
    path: str | Path, rng: np.random.Generator, num_cells: int, with_set2: bool = True
) -> None:
    """Write one synthetic ovule with ``num_cells`` cells in the benchmark's HDF5 format."""
    import h5py

    n = int(num_cells)
    if n < 4:
        raise ValueError(f"num_cells must be >= 4; found {num_cells}")
    length, radius = 40.0, 15.0
    t = rng.uniform(0, 1, n)
    r = np.sqrt(rng.uniform(0, 1, n))
    th = rng.uniform(0, 2 * np.pi, n)
    com = np.stack([length * t, radius * r * np.cos(th), radius * r * np.sin(th)], axis=1)
    com += 0.3 * rng.standard_normal(com.shape)
    depth = 1.0 - r
    cls = _class_of(t, depth)
    raw = np.array(_RAW_OF_CLASS)[cls]
    raw[(cls == 3) & (rng.uniform(size=n) < 0.25)] = 14  # L5, merged into L4 by the label map
    raw[rng.uniform(size=n) < 0.02] = UNANNOTATED

    # contact graph: symmetric 5-nearest neighbours, each pair once, plus background contacts
    d = np.linalg.norm(com[:, None] - com[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    k = min(5, n - 1)
    nn = np.argsort(d, axis=1)[:, :k]
    pairs = {(min(i, j), max(i, j)) for i in range(n) for j in nn[i].tolist()}
    cell_pairs = np.array(sorted(pairs), dtype=np.int64)
    boundary = depth < 0.2
    if not boundary.any():
        boundary[np.argmin(depth)] = True
    ids = np.sort(rng.choice(np.arange(1, 20 * n + 1), size=n, replace=False)).astype(np.int64)
    bg = np.nonzero(boundary)[0]
    edges_idx = np.concatenate([cell_pairs, np.stack([np.full(len(bg), -1), bg], 1)], axis=0)
    e = edges_idx.shape[0]
    perm = rng.permutation(e)
    edges_idx = edges_idx[perm]
    is_bg = edges_idx[:, 0] < 0
    edges_ids = np.where(edges_idx < 0, 0, ids[np.maximum(edges_idx, 0)])
    flip = rng.uniform(size=e) < 0.5  # stored pair order is arbitrary
    edges_ids[flip] = edges_ids[flip][:, ::-1]

    hops = _hops(n, cell_pairs, boundary)
    degree = np.bincount(cell_pairs.ravel(), minlength=n).astype(np.float64)
    volume = np.array(_BASE_VOLUME)[cls] * rng.lognormal(0.0, 0.25, n)
    surface = 4.84 * volume ** (2.0 / 3.0) * rng.lognormal(0.0, 0.05, n)
    radial = np.stack([np.zeros(n), np.cos(th), np.sin(th)], axis=1)
    lrs = _frames(radial, rng, 0.3)
    pca = _frames(np.where((cls >= 4)[:, None], np.array([[1.0, 0, 0]]), radial), rng, 0.4)
    var = np.sort(rng.dirichlet(np.full(3, 2.0), size=n), axis=1)[:, ::-1]
    lengths = volume[:, None] ** (1 / 3) * np.sqrt(var) * 2.0
    f32 = np.float32
    cell_feats = {
        "com_grs": com,
        "degree_centrality": degree / (n - 1),
        "rw_centrality": degree * (1.0 - np.abs(t - 0.5)) / n + 0.01 * rng.standard_normal(n),
        "hops_to_bg": hops.astype(np.int32),
        "volume_um": volume,
        "surface_um": surface,
        "lrs_axis12_dot_grs": 0.05 * rng.standard_normal(n),
        "lrs_axis2_angle_grs": np.arccos(np.clip(lrs[:, 1, 0], -1, 1)),
        "pca_explained_variance_grs": var,
    }
    for i in range(3):
        cell_feats[f"lrs_orientation_axis{i + 1}_grs"] = vectors_to_orientation(lrs[:, i])
        cell_feats[f"pca_orientation_axis{i + 1}_grs"] = vectors_to_orientation(pca[:, i])
        cell_feats[f"lrs_proj_axis{i + 1}_grs"] = lrs[:, i]  # global axes = identity
        cell_feats[f"pca_proj_axis{i + 1}_grs"] = pca[:, i]
        cell_feats[f"length_axis{i + 1}_grs"] = lengths[:, i]
        cell_feats[f"lr_axis{i + 1}_grs"] = lrs[:, i]  # extra raw features, as in real files

    a = np.where(is_bg, edges_idx[:, 1], edges_idx[:, 0])
    b = edges_idx[:, 1]
    other = np.where(is_bg[:, None], com[b] + radial[b] * 2.0, com[np.maximum(a, 0)])
    vec = com[b] - other
    dist = np.linalg.norm(vec, axis=1)
    unit = vec / (dist[:, None] + 1e-12)
    edge_feats: dict[str, np.ndarray] = {
        "surface_um": rng.lognormal(2.0, 0.4, e),
        "com_distance_um": dist,
        "com_grs": 0.5 * (com[b] + other),
        "lrs_proj_grs": unit,
    }
    for i in range(3):
        dots = np.einsum("ij,ij->i", lrs[np.maximum(a, 0), i], lrs[b, i])
        edge_feats[f"lrs_dot_axis{i + 1}_grs"] = np.where(is_bg, 0.0, dots)
    edge_labels = np.where(is_bg, 0, (cls[np.maximum(a, 0)] == cls[b]).astype(np.int64))

    samples = com[:, None, :] + rng.standard_normal((n, 8, 3)) * (lengths[:, None, :1] / 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("cell_ids", data=ids.astype(np.int32))
        fh.create_dataset("cell_labels", data=raw.astype(np.int32))
        fh.create_dataset("edges_ids", data=edges_ids.astype(np.int32))
        fh.create_dataset("edges_labels", data=edge_labels.astype(np.int32))
        if with_set2:
            raw2 = raw.copy()
            lab = raw2 != UNANNOTATED
            swap = lab & (rng.uniform(size=n) < 0.15)
            raw2[swap] = np.array(_RAW_OF_CLASS)[[_CONFUSABLE[int(c)] for c in cls[swap]]]
            raw2[rng.uniform(size=n) < 0.02] = UNANNOTATED
            fh.create_dataset("cell_labels_set2", data=raw2.astype(np.int32))
        g = fh.create_group("cell_features")
        for key, val in cell_feats.items():
            g.create_dataset(key, data=np.asarray(val).astype(f32) if key != "hops_to_bg" else val)
        g = fh.create_group("edges_features")
        for key, val in edge_feats.items():
            g.create_dataset(key, data=np.asarray(val).astype(f32))
        g = fh.create_group("cell_samples")
        g.create_dataset("random_samples", data=samples.astype(f32))
        fh.attrs["synthetic"] = True


def make_synthetic(
    root: str | Path,
    num_stacks: int = 84,
    seed: int = 0,
    min_cells: int = 30,
    max_cells: int = 60,
    second_annotator: bool = True,
) -> list[Path]:
    """Write a synthetic CellTypeGraph data set under ``root`` and return the file paths.

    With ``num_stacks == 84`` the benchmark's own (stage, stack) list is used; otherwise
    ``max(1, min(9, num_stacks // 5))`` stages get the stacks round-robin (so each stage has >= 5
    stacks and every cross-validation fold is non-empty once ``num_stacks >= 5``). The list is
    written to ``root/celltypegraph_stacks.csv``, which the reader then uses.
    """
    if isinstance(num_stacks, bool) or not isinstance(num_stacks, int) or num_stacks < 1:
        raise ValueError(f"num_stacks must be a positive int; found {num_stacks!r}")
    if not 4 <= min_cells <= max_cells:
        raise ValueError(
            f"need 4 <= min_cells <= max_cells; found min_cells={min_cells}, max_cells={max_cells}"
        )
    root = Path(root)
    stacks = _synthetic_stack_list(num_stacks)
    rng = np.random.default_rng(seed)
    paths = []
    for stage, stack in stacks:
        p = stack_path(root, stage, stack)
        write_synthetic_ovule(p, rng, int(rng.integers(min_cells, max_cells + 1)),
                              with_set2=second_annotator)
        paths.append(p)
    root.mkdir(parents=True, exist_ok=True)
    with (root / STACK_LIST_NAME).open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["stage", "stack"])
        w.writerows(stacks)
    return paths


# --------------------------------------------------------------------------------------------
# cross-validation summary of finished runs
# --------------------------------------------------------------------------------------------
def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std())


def summarize_cv(run_dirs: Sequence[str | Path]) -> dict[str, Any]:
    """Benchmark scores of finished ``softnce train`` runs on ``celltypegraph`` (one per fold).

    Each run directory must hold ``config.json``, ``summary.json`` and ``val_logits.pt`` (written
    by the harness). The fold's test graphs are re-read from the run's ``data_path`` to map rows
    to graphs: by the saved ``row_ids`` (``graph_id * 2**32 + node index``, see
    :func:`val_row_ids`) when present, so the row order (lost under multi-process evaluation)
    does not matter; files without ``row_ids`` (older runs) must hold the rows in validation
    order. The stored labels must equal the re-read ones, so a mismatched data path is
    detected. Returns
    ``{"folds": [...], "over_folds": {metric: (mean, std)}, "over_graphs": {...}}``: per fold the
    harness's node-pooled ``top1``/``ece``/``nll``/``brier`` (final evaluation) and the
    benchmark's per-graph ``graph_top1``/``graph_class_avg`` averaged over the fold's graphs;
    ``over_folds`` = mean and std over folds; ``over_graphs`` = mean and std over all test graphs
    of all folds (the aggregation of the benchmark's example scripts and leaderboard).
    """
    import json

    if not run_dirs:
        raise ValueError("run_dirs must name at least one run directory")
    folds, all_top1, all_cavg = [], [], []
    for rd in run_dirs:
        rd = Path(rd)
        files = {k: rd / k for k in ("config.json", "summary.json", "val_logits.pt")}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise ValueError(f"{rd}: not a finished run directory; missing {missing}")
        cfg = json.loads(files["config.json"].read_text())
        if cfg.get("dataset") != "celltypegraph":
            raise ValueError(f"{rd}: dataset is {cfg.get('dataset')!r}, not 'celltypegraph'")
        summary = json.loads(files["summary.json"].read_text())
        saved = torch.load(files["val_logits.pt"], weights_only=True)
        opts = dict(cfg.get("dataset_options") or {})
        root = Path(cfg["data_path"])
        stacks = (load_stack_list(opts["stack_list"]) if opts.get("stack_list")
                  else stack_list_for_root(root))
        split = stratified_folds(stacks, opts.get("num_folds", 5), opts.get("fold_seed", 0))
        test = split[opts.get("fold", 0)]["test"]
        list_pos = {s: i for i, s in enumerate(stacks)}
        ys, gids, keys = [], [], []
        for k, (stage, stack) in enumerate(test):
            g = read_ovule(stack_path(root, stage, stack))
            keep = g.y >= 0
            ys.append(torch.from_numpy(g.y[keep]))
            gids.append(torch.full((int(keep.sum()),), k, dtype=torch.int64))
            keys.append(list_pos[(stage, stack)] * ROW_ID_STRIDE
                        + torch.from_numpy(np.flatnonzero(keep)).long())
        y, gid, key = torch.cat(ys), torch.cat(gids), torch.cat(keys)
        logits, labels = saved["logits"], saved["labels"]
        if saved.get("row_ids") is not None:  # put the rows into the canonical order by key
            rid = saved["row_ids"].long()
            src, dst = torch.sort(rid), torch.sort(key)
            if rid.shape != key.shape or not torch.equal(src.values, dst.values):
                raise ValueError(
                    f"{rd}: val_logits.pt row_ids do not match the annotated nodes of fold "
                    f"{opts.get('fold', 0)} under {root} (did the data change?)"
                )
            perm = torch.empty_like(dst.indices)
            perm[dst.indices] = src.indices
            logits, labels = logits[perm], labels[perm]
        if labels.shape != y.shape or not torch.equal(labels.long(), y):
            raise ValueError(
                f"{rd}: val_logits.pt rows do not match the annotated nodes of fold "
                f"{opts.get('fold', 0)} under {root} (was the run multi-process, or the data "
                f"changed?)"
            )
        sc = graph_scores(logits.argmax(1), y, gid)
        all_top1 += sc["top1"].tolist()
        all_cavg += sc["class_avg"].tolist()
        final = summary.get("final", {})
        folds.append({
            "run": str(rd),
            "fold": opts.get("fold", 0),
            "loss": cfg.get("loss"),
            "model": summary.get("model") or cfg.get("model"),
            "graphs": len(test),
            **{m: final.get(m, float("nan")) for m in ("top1", "ece", "nll", "brier")},
            "graph_top1": _mean_std(sc["top1"].tolist())[0],
            "graph_class_avg": _mean_std(sc["class_avg"].tolist())[0],
        })
    metrics = ("top1", "ece", "nll", "brier", "graph_top1", "graph_class_avg")
    return {
        "folds": folds,
        "over_folds": {m: _mean_std([f[m] for f in folds]) for m in metrics},
        "over_graphs": {"graph_top1": _mean_std(all_top1),
                        "graph_class_avg": _mean_std(all_cavg)},
    }


def _print_cv(res: dict[str, Any]) -> None:
    cols = ("top1", "ece", "nll", "brier", "graph_top1", "graph_class_avg")
    print("fold  graphs  " + "  ".join(f"{c:>15}" for c in cols) + "  run")
    for f in res["folds"]:
        print(f"{f['fold']:>4}  {f['graphs']:>6}  "
              + "  ".join(f"{f[c]:>15.4f}" for c in cols) + f"  {f['run']}")
    print("mean ± std over folds: " + ", ".join(
        f"{c} {m:.3f} ± {s:.3f}" for c, (m, s) in res["over_folds"].items()))
    print("mean ± std over test graphs (benchmark aggregation): " + ", ".join(
        f"{c} {m:.3f} ± {s:.3f}" for c, (m, s) in res["over_graphs"].items()))


# --------------------------------------------------------------------------------------------
# the whole protocol: train every (loss config, fold) through the harness, then summarise
# --------------------------------------------------------------------------------------------
CV_MODELS = ("gcn", "deepergcn")
CV_DEFAULT_LOSSES = ("nll", "infonce", "soft-ce", "soft-infonce")
#: columns of the ``cv`` table: (key in ``summarize_cv(...)["over_folds"]``, title, percent)
CV_COLUMNS = (("graph_top1", "top-1 (%)", True),
              ("graph_class_avg", "class-avg excl. 7 (%)", True),
              ("ece", "ECE (15 bins)", False), ("nll", "NLL", False))


class CVError(ValueError):
    """Bad input to ``softnce celltypegraph cv`` (printed as ``error: ...``, exit code 2)."""


def cv_loss_configs(config: str | None = None, losses: Sequence[str] | None = None,
                    model: str | None = None) -> list[tuple[str, Path]]:
    """``[(name, config file)]`` of the ``cv`` command.

    ``config`` is a loss config (it sets ``loss:``; run as is, named by its file stem) or a base
    config such as ``celltypegraph/gcn`` (no ``loss:``), expanded to its siblings
    ``{stem}-{loss}.yaml`` for ``losses`` (default nll, infonce, soft-ce, soft-infonce). Without
    ``config`` the base is ``configs/celltypegraph/{model}.yaml`` (``model`` default gcn).
    """
    from softnce.harness.config import find_preset, load_yaml

    if config is not None and model is not None:
        raise CVError("give either --config or --model, not both")
    if model is not None and model not in CV_MODELS:
        raise CVError(f"--model must be one of {', '.join(CV_MODELS)}; found {model!r}")
    path = find_preset(config if config is not None else f"celltypegraph/{model or 'gcn'}")
    path = path.resolve()
    if "loss" in load_yaml(path):
        if losses:
            raise CVError(f"{path} is a loss config (it sets loss:); --losses needs a base "
                          f"config such as celltypegraph/gcn")
        return [(path.stem, path)]
    names = list(losses) if losses else list(CV_DEFAULT_LOSSES)
    if len(set(names)) != len(names):
        raise CVError(f"--losses lists a loss more than once: {names}")
    avail = sorted(q.stem[len(path.stem) + 1:] for q in path.parent.glob(f"{path.stem}-*.yaml"))
    out = []
    for name in names:
        cand = path.parent / f"{path.stem}-{name}.yaml"
        if not cand.is_file():
            raise CVError(f"unknown loss {name!r} for {path.name}: no {cand.name} next to it; "
                          f"available: {', '.join(avail) or 'none'}")
        out.append((f"{path.stem}-{name}", cand))
    return out


def _parse_folds(text: str) -> list[int]:
    try:
        folds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise CVError(f"--folds must be comma-separated fold indices such as 0,1,2,3,4; "
                      f"found {text!r}") from None
    if not folds or len(set(folds)) != len(folds):
        raise CVError(f"--folds must list distinct fold indices; found {text!r}")
    return folds


def _run_is_finished(cfg: Any) -> bool:
    """A complete run of exactly ``cfg`` (same config.json) with its val_logits.pt."""
    import json

    from softnce.harness.trainer import _config_diff

    out = Path(cfg.output_dir)
    try:
        summary = json.loads((out / "summary.json").read_text())
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (bool(summary.get("complete")) and (out / "val_logits.pt").is_file()
            and not _config_diff(saved, cfg.to_dict()))


def run_cv(
    data_path: str | Path,
    output_dir: str | Path,
    config: str | None = None,
    losses: Sequence[str] | None = None,
    model: str | None = None,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    epochs: int | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    resume: bool = False,
    log: Any = print,
    command: str | None = None,
) -> dict[str, Any]:
    """The benchmark's cross-validation protocol in one call.

    For every loss config (:func:`cv_loss_configs`) and fold, resolve the run's config with
    :func:`softnce.harness.config.load_config` (``overrides`` are ``--set KEY=VALUE`` items; the fold is
    set last as ``dataset_options.fold``), train it with :func:`softnce.harness.trainer.train` into
    ``output_dir/<model>-<loss>/fold<k>``, then :func:`summarize_cv` the fold runs of each loss. With
    ``resume`` a finished run of the same config is skipped and an interrupted one resumes from
    its checkpoint (the harness's ``--resume``). Writes ``cv_summary.json`` and ``cv_report.md``
    under ``output_dir`` and returns the summary dict. Raises :class:`CVError`,
    :class:`~softnce.harness.config.ConfigError` or :class:`~softnce.data.DataError` on bad input.
    """
    import json
    import time

    from softnce.harness.config import load_config
    from softnce.harness.trainer import train

    root = Path(data_path)
    if not root.is_dir():
        raise CVError(f"--data-path {str(root)!r} is not a directory. " + WHERE_TO_GET)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise CVError(f"--output-dir {str(out)!r} is a file")
    entries = cv_loss_configs(config, losses, model)
    fields = {"data_path": str(root), "epochs": epochs, "seed": seed, "resume": resume,
              "quiet": True}
    plan = []  # resolve every config before training anything: bad input fails at once
    for name, path in entries:
        base = load_config(str(path), list(overrides), **fields)
        if base.dataset != "celltypegraph":
            raise CVError(f"{path}: dataset is {base.dataset!r}, not 'celltypegraph'")
        num_folds = (base.dataset_options or {}).get("num_folds", 5)
        bad = [f for f in folds if not (isinstance(num_folds, int) and 0 <= f < num_folds)]
        if bad:
            raise CVError(f"fold index {bad[0]} out of range for {name} "
                          f"(num_folds {num_folds}: folds 0..{num_folds - 1})")
        for k in folds:
            cfg = load_config(str(path), [*overrides, f"dataset_options.fold={k}"],
                              output_dir=str(out / name / f"fold{k}"), **fields)
            cfg.validate()
            plan.append((name, path, k, cfg))
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    for i, (name, _path, k, cfg) in enumerate(plan, 1):
        if resume and _run_is_finished(cfg):
            log(f"[{i}/{len(plan)}] {name} fold {k}: finished, skipped ({cfg.output_dir})")
            continue
        t0 = time.perf_counter()
        s = train(cfg, log=lambda m: None)
        f = s.get("final", {})
        log(f"[{i}/{len(plan)}] {name} fold {k}: top-1 {f.get('top1', float('nan')):.4f}  "
            f"ECE {f.get('ece', float('nan')):.4f}  NLL {f.get('nll', float('nan')):.4f}  "
            f"({time.perf_counter() - t0:.1f} s)")
    results: dict[str, Any] = {}
    for name, path in entries:
        dirs = [str(out / name / f"fold{k}") for k in folds]
        res = summarize_cv(dirs)
        results[name] = {"config": str(path), "runs": dirs, **res}
    summary = {
        "command": command, "data_path": str(root), "folds": list(folds),
        "overrides": list(overrides), "epochs": epochs, "seed": seed,
        "std": "population std over folds (numpy ddof=0), as summarize_cv",
        "metrics": {k: t for k, t, _ in CV_COLUMNS},
        "losses": results,
        "wall_s": time.perf_counter() - t_start,
    }
    (out / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "cv_report.md").write_text(_cv_markdown(summary))
    return summary


def _fmt(m: float, s: float, pct: bool) -> str:
    if not np.isfinite(m):
        return "n/a"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if pct else f"{m:.4f} ± {s:.4f}"


def _cv_markdown(summary: dict[str, Any]) -> str:
    head = ["loss"] + [t for _, t, _ in CV_COLUMNS]
    lines = [
        "# CellTypeGraph cross-validation", "",
        f"data: `{summary['data_path']}`; folds {summary['folds']}; "
        + (f"command: `{summary['command']}`" if summary.get("command") else ""), "",
        "Mean ± std over folds (population std). top-1 and class-average accuracy (class 7, "
        "embryo sac, excluded) are the benchmark's per-graph scores averaged over each fold's "
        "test graphs; ECE and NLL are node-pooled per fold (final evaluation).", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
    ]
    for name, r in summary["losses"].items():
        cells = [_fmt(*r["over_folds"][k], pct) for k, _, pct in CV_COLUMNS]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines += ["", "## Per fold", "", "| loss | fold | graphs | " + " | ".join(
        t for _, t, _ in CV_COLUMNS) + " | run |", "|" + "---|" * (len(CV_COLUMNS) + 4)]
    for name, r in summary["losses"].items():
        for f in r["folds"]:
            cells = [_fmt(f[k], 0.0, pct).split(" ±")[0] for k, _, pct in CV_COLUMNS]
            lines.append(f"| {name} | {f['fold']} | {f['graphs']} | " + " | ".join(cells)
                         + f" | `{f['run']}` |")
    return "\n".join(lines) + "\n"


def _print_cv_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    table = Table(title=f"CellTypeGraph {len(summary['folds'])}-fold CV: mean ± std over folds")
    table.add_column("loss", style="bold")
    for _, title, _ in CV_COLUMNS:
        table.add_column(title, justify="right")
    for name, r in summary["losses"].items():
        table.add_row(name, *[_fmt(*r["over_folds"][k], pct) for k, _, pct in CV_COLUMNS])
    console.print(table)


def add_cli_arguments(ap: argparse.ArgumentParser) -> None:
    """Sub-commands ``make-synthetic`` and ``cv-summary`` (``softnce celltypegraph ...``)."""
    sub = ap.add_subparsers(dest="ctg_command", required=True,
                            metavar="{make-synthetic,cv-summary,cv}")
    mk = sub.add_parser("make-synthetic", help="write a synthetic data set in the benchmark format")
    mk.add_argument("dir", help="output data path (pass it as --data-path)")
    mk.add_argument("--stacks", type=int, default=84, help="number of ovules (default 84)")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--min-cells", type=int, default=30)
    mk.add_argument("--max-cells", type=int, default=60)
    mk.add_argument("--no-second-annotator", action="store_true",
                    help="omit cell_labels_set2")
    cv = sub.add_parser("cv-summary", help="benchmark scores of finished fold runs "
                        "(mean ± std over folds and over graphs)")
    cv.add_argument("runs", nargs="+", help="run directories (one per fold)")
    cv.add_argument("--json", help="also write the result to this JSON file")
    run = sub.add_parser(
        "cv", help="the whole 5-fold protocol: train every loss config on every fold through "
        "the harness, then print and write mean ± std over folds",
        description="Train each loss config on each fold (softnce.harness.trainer.train, runs in "
        "OUT/<model>-<loss>/fold<k>), then summarise (summarize_cv) into OUT/cv_summary.json and "
        "OUT/cv_report.md.")
    run.add_argument("--data-path", required=True, metavar="DIR", help="CellTypeGraph root")
    run.add_argument("--config", default=None, metavar="FILE.yaml",
                     help="a base config (e.g. celltypegraph/gcn: runs its {stem}-{loss}.yaml "
                          "siblings) or one loss config (e.g. celltypegraph/gcn-soft-infonce)")
    run.add_argument("--model", default=None, choices=CV_MODELS,
                     help="without --config: use configs/celltypegraph/<model>-<loss>.yaml "
                          "(default gcn)")
    run.add_argument("--losses", default=None, metavar="L1,L2",
                     help=f"losses of the base config (default {','.join(CV_DEFAULT_LOSSES)}; "
                          "also soft-ce-annotators, soft-infonce-annotators)")
    run.add_argument("--folds", default="0,1,2,3,4", metavar="0,1,...",
                     help="folds to run (default 0,1,2,3,4)")
    run.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    run.add_argument("--seed", type=int, default=None, help="override the configs' seed")
    run.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                     help="any config key, as in softnce train (repeatable)")
    run.add_argument("--output-dir", required=True, metavar="OUT")
    run.add_argument("--resume", action="store_true",
                     help="skip finished fold runs, resume interrupted ones")


def run_cli(args: argparse.Namespace) -> int:
    """Run a sub-command parsed by :func:`add_cli_arguments`."""
    if args.ctg_command == "cv":
        return _run_cv_cli(args)
    if args.ctg_command == "cv-summary":
        import json
        import sys

        try:
            res = summarize_cv(args.runs)
        except ValueError as e:
            print(f"softnce celltypegraph cv-summary: error: {e}", file=sys.stderr)
            return 2
        _print_cv(res)
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
        return 0
    paths = make_synthetic(args.dir, num_stacks=args.stacks, seed=args.seed,
                           min_cells=args.min_cells, max_cells=args.max_cells,
                           second_annotator=not args.no_second_annotator)
    print(f"wrote {len(paths)} synthetic ovules under {Path(args.dir).joinpath(*SUBDIR)}")
    return 0


def _run_cv_cli(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from softnce.harness.config import ConfigError
    from softnce.harness.trainer import NonFiniteLossError

    prog = "softnce celltypegraph cv"
    argv = getattr(args, "argv", None)
    try:
        losses = None
        if args.losses is not None:
            losses = [t.strip() for t in args.losses.split(",") if t.strip()]
            if not losses:
                raise CVError("--losses is empty")
        summary = run_cv(
            args.data_path, args.output_dir, config=args.config, losses=losses,
            model=args.model, folds=_parse_folds(args.folds), epochs=args.epochs,
            seed=args.seed, overrides=args.set, resume=args.resume,
            command=("softnce " + shlex.join(argv)) if argv else None,
        )
    except (CVError, ConfigError, DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    _print_cv_table(summary)
    print(f"wrote {Path(args.output_dir) / 'cv_summary.json'} and "
          f"{Path(args.output_dir) / 'cv_report.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m softnce.data.celltypegraph make-synthetic DIR --stacks N`` (same as
    ``softnce celltypegraph make-synthetic DIR --stacks N``)."""
    ap = argparse.ArgumentParser(prog="python -m softnce.data.celltypegraph",
                                 description="CellTypeGraph data utilities")
    add_cli_arguments(ap)
    return run_cli(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    # ``python -m`` runs a second copy of this file; the package import already registered the
    # data set, so only the command line runs here.
    raise SystemExit(main())
else:
    DATASETS.register("celltypegraph", help="CellTypeGraph ovule cell types (graph, 9 classes)")(
        build_celltypegraph
    )


__all__ = [
    "CLASS_NAMES", "EDGE_FEATURES", "EXCLUDED_CLASS", "LABEL_MAP", "NODE_FEATURES",
    "NUM_CLASSES", "NUM_EDGE_FEATURES", "NUM_NODE_FEATURES", "FeatureSpec", "GraphListDataset",
    "OvuleGraph", "benchmark_unit_rows", "build_celltypegraph", "check_files", "graph_scores",
    "load_fold", "load_stack_list", "make_synthetic", "onehot_hops", "read_ovule",
    "run_cv", "summarize_cv", "val_row_ids",
    "soft_targets", "stack_path", "stratified_folds", "to_data", "vectors_to_orientation",
    "zscore",
]
