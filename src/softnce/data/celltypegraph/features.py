"""CellTypeGraph features: the node / edge feature lists and their per-graph transforms (the
benchmark's semantics, see :mod:`softnce.data.celltypegraph`), per-node soft targets, the
conversion of one read ovule to a ``torch_geometric`` graph, and the benchmark's per-graph
scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from softnce.data.celltypegraph.reader import OvuleGraph

NUM_CLASSES = 9
#: class excluded from the class-average accuracy (embryo sac), as in the benchmark.
EXCLUDED_CLASS = 7
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
# soft targets and torch_geometric graphs
# --------------------------------------------------------------------------------------------
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

