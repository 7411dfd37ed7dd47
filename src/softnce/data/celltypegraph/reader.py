"""CellTypeGraph files: the (stage, stack) list, paths and the missing-file check, the label map
and reading one benchmark HDF5 file into an :class:`OvuleGraph` (see
:mod:`softnce.data.celltypegraph` for the layout)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from softnce.data import DataError
from softnce.data.celltypegraph.features import (
    _TRANSFORMS,
    EDGE_FEATURES,
    NODE_FEATURES,
    FeatureSpec,
)

#: raw annotation id -> class index.
LABEL_MAP: dict[int, int] = {1: 0, 2: 1, 3: 2, 4: 3, 14: 3, 5: 4, 6: 5, 7: 6, 8: 7, 10: 8}
#: raw id of a cell nobody annotated.
UNANNOTATED = 0
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
    "section CellTypeGraph); or write a synthetic set with: softnce celltypegraph "
    "make-synthetic ROOT --stacks 84"
)


# --------------------------------------------------------------------------------------------
# stack list, paths
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


#: Most elements one HDF5 dataset may declare (checked before reading: a file of a few bytes can
#: declare a chunked dataset of 1e11 elements, which h5py would allocate in full).
MAX_DATASET_ELEMENTS = 200_000_000


def _read_ds(node: Any, key: str, path: str, where: str = "") -> np.ndarray:
    """``node[key][()]`` after checking ``key`` is a dataset of a sane declared size."""
    import h5py

    name = f"{where}/{key}" if where else key
    try:
        ds = node.get(key)
    except (RuntimeError, KeyError, OSError) as e:  # soft-link loops, dangling external links
        raise ValueError(f"{path}: cannot open {name} ({e})") from None
    if not isinstance(ds, h5py.Dataset):
        raise ValueError(f"{path}: {name} is not a dataset")
    if ds.size > MAX_DATASET_ELEMENTS or ds.size * ds.dtype.itemsize > 8 * MAX_DATASET_ELEMENTS:
        raise ValueError(f"{path}: {name} declares shape {ds.shape} ({ds.size} elements); "
                         f"refusing to read more than {MAX_DATASET_ELEMENTS}")
    try:
        return np.asarray(ds[()])
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot read {name} ({e})") from None


def _safe_get(fh: Any, key: str) -> Any:
    try:
        return fh.get(key)
    except (RuntimeError, KeyError, OSError):  # soft-link loops and the like: treated as missing
        return None


def _read_features(
    group: Any, specs: Sequence[FeatureSpec], rows: int, path: str, group_name: str
) -> np.ndarray:
    missing = [s.name for s in specs if _safe_get(group, s.name) is None]
    if missing:
        raise ValueError(f"{path}: group {group_name!r} lacks the feature datasets {missing}")
    blocks = []
    for spec in specs:
        a = _read_ds(group, spec.name, path, group_name)
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


def _edge_index(edges: np.ndarray, ea: np.ndarray, edge_labels: np.ndarray,
                cell_ids: np.ndarray, path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop background pairs (id 0) and map cell ids to node rows: ``(edge_index (2, E),
    edge_attr, edge_labels)``; self-loops, unknown ids and repeated pairs raise ``ValueError``."""
    n = cell_ids.shape[0]
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
    return edge_index, ea, edge_labels


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
        missing = [k for k in required if not isinstance(_safe_get(fh, k), h5py.Dataset)]
        missing += [k for k in groups if not isinstance(_safe_get(fh, k), h5py.Group)]
        if missing:
            raise ValueError(
                f"{path}: missing {missing} (a CellTypeGraph file needs datasets {list(required)} "
                f"and groups {list(groups)})"
            )
        cell_ids = _read_ds(fh, "cell_ids", path)
        labels_raw = _read_ds(fh, "cell_labels", path)
        edges = _read_ds(fh, "edges_ids", path)
        edge_labels = _read_ds(fh, "edges_labels", path)
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
        if _safe_get(fh, "cell_labels_set2") is not None:
            raw2 = _read_ds(fh, "cell_labels_set2", path)
            if raw2.shape != (n,):
                raise ValueError(
                    f"{path}: cell_labels_set2 must have shape ({n},); found {raw2.shape}"
                )
            y2 = _map_labels(raw2, path, "cell_labels_set2")
        x = _read_features(_safe_get(fh, "cell_features"), NODE_FEATURES, n, path,
                           "cell_features")
        # edge transforms see every stored row (background pairs included), as in the benchmark
        ea = _read_features(_safe_get(fh, "edges_features"), EDGE_FEATURES, e_all, path,
                            "edges_features")

    edge_index, ea, edge_labels = _edge_index(edges, ea, edge_labels, cell_ids, path)
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

