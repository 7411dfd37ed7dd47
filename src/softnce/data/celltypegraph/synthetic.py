"""Synthetic CellTypeGraph data in exactly the benchmark's HDF5 format (``softnce celltypegraph
make-synthetic DIR --stacks N``): tens of cells per ovule in a cylinder, the class a function of
the position along the axis and the depth below the surface, so models beat chance."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from softnce.data.celltypegraph.features import vectors_to_orientation
from softnce.data.celltypegraph.reader import (
    STACK_LIST_NAME,
    STAGES,
    UNANNOTATED,
    load_stack_list,
    stack_path,
)

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


def _geometry(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Cell centres in a cylinder, classes and raw labels, the contact graph and the stored
    (shuffled, arbitrarily ordered) ``edges_ids`` with background contacts."""
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
    return {"t": t, "th": th, "com": com, "depth": depth, "cls": cls, "raw": raw, "ids": ids,
            "cell_pairs": cell_pairs, "boundary": boundary, "edges_idx": edges_idx,
            "is_bg": is_bg, "edges_ids": edges_ids}


def _cell_features(rng: np.random.Generator, g: dict[str, np.ndarray]
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The stored ``cell_features`` group and the per-cell frames the edges and samples use."""
    n, t, th, com, cls = len(g["t"]), g["t"], g["th"], g["com"], g["cls"]
    cell_pairs, boundary = g["cell_pairs"], g["boundary"]
    hops = _hops(n, cell_pairs, boundary)
    degree = np.bincount(cell_pairs.ravel(), minlength=n).astype(np.float64)
    volume = np.array(_BASE_VOLUME)[cls] * rng.lognormal(0.0, 0.25, n)
    surface = 4.84 * volume ** (2.0 / 3.0) * rng.lognormal(0.0, 0.05, n)
    radial = np.stack([np.zeros(n), np.cos(th), np.sin(th)], axis=1)
    lrs = _frames(radial, rng, 0.3)
    pca = _frames(np.where((cls >= 4)[:, None], np.array([[1.0, 0, 0]]), radial), rng, 0.4)
    var = np.sort(rng.dirichlet(np.full(3, 2.0), size=n), axis=1)[:, ::-1]
    lengths = volume[:, None] ** (1 / 3) * np.sqrt(var) * 2.0
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
    return cell_feats, {"lrs": lrs, "radial": radial, "lengths": lengths}


def _edge_features(rng: np.random.Generator, g: dict[str, np.ndarray],
                   frames: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The stored ``edges_features`` group and ``edges_labels`` (background rows included)."""
    com, cls, edges_idx, is_bg = g["com"], g["cls"], g["edges_idx"], g["is_bg"]
    lrs, radial = frames["lrs"], frames["radial"]
    e = edges_idx.shape[0]
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
    return edge_feats, edge_labels


def write_synthetic_ovule(
    path: str | Path, rng: np.random.Generator, num_cells: int, with_set2: bool = True
) -> None:
    """Write one synthetic ovule with ``num_cells`` cells in the benchmark's HDF5 format."""
    import h5py

    n = int(num_cells)
    if n < 4:
        raise ValueError(f"num_cells must be >= 4; found {num_cells}")
    g = _geometry(rng, n)
    cell_feats, frames = _cell_features(rng, g)
    edge_feats, edge_labels = _edge_features(rng, g, frames)
    com, cls, raw, ids, edges_ids = g["com"], g["cls"], g["raw"], g["ids"], g["edges_ids"]
    lengths, f32 = frames["lengths"], np.float32
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

