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
:func:`make_synthetic` (also ``softnce celltypegraph make-synthetic DIR --stacks N``) writes
files in exactly this format: tens of cells per ovule placed in a cylinder, with the
class a function of the position along the axis and the depth below the surface, so models beat
chance. The features are plausible stand-ins (real geometry for centres, distances, hops,
orientations; noisy class-dependent volumes), not a re-implementation of the benchmark's image
processing.

Modules
-------
:mod:`~softnce.data.celltypegraph.features` (feature lists, transforms, soft targets,
``torch_geometric`` graphs, per-graph scores), :mod:`~softnce.data.celltypegraph.reader` (stack
list, paths, label map, HDF5 reading), :mod:`~softnce.data.celltypegraph.synthetic` (the
generator), :mod:`~softnce.data.celltypegraph.bundle` (folds and the registered data set). The
cross-validation runner and summary live in :mod:`softnce.experiments.celltypegraph_cv`, the
command line in :mod:`softnce.cli.celltypegraph`; this package imports neither.
"""

from __future__ import annotations

from softnce.data import DATASETS
from softnce.data.celltypegraph.bundle import (
    ROW_ID_STRIDE,
    GraphListDataset,
    build_celltypegraph,
    graph_loader,
    load_fold,
    stratified_folds,
    unpack_graph_batch,
    val_row_ids,
)
from softnce.data.celltypegraph.features import (
    CLASS_NAMES,
    EDGE_FEATURES,
    EXCLUDED_CLASS,
    NODE_FEATURES,
    NUM_CLASSES,
    NUM_EDGE_FEATURES,
    NUM_NODE_FEATURES,
    SOFT_TARGET_SOURCES,
    FeatureSpec,
    benchmark_unit_rows,
    graph_scores,
    onehot_hops,
    soft_targets,
    to_data,
    vectors_to_orientation,
    zscore,
)
from softnce.data.celltypegraph.reader import (
    DATA_URL,
    GRS,
    LABEL_MAP,
    STACK_LIST_NAME,
    STAGES,
    SUBDIR,
    UNANNOTATED,
    WHERE_TO_GET,
    OvuleGraph,
    check_files,
    load_stack_list,
    read_ovule,
    stack_list_for_root,
    stack_path,
)
from softnce.data.celltypegraph.synthetic import make_synthetic, write_synthetic_ovule

DATASETS.register("celltypegraph", help="CellTypeGraph ovule cell types (graph, 9 classes)")(
    build_celltypegraph
)

__all__ = [
    "CLASS_NAMES", "DATA_URL", "EDGE_FEATURES", "EXCLUDED_CLASS", "GRS", "LABEL_MAP",
    "NODE_FEATURES", "NUM_CLASSES", "NUM_EDGE_FEATURES", "NUM_NODE_FEATURES", "ROW_ID_STRIDE",
    "SOFT_TARGET_SOURCES", "STACK_LIST_NAME", "STAGES", "SUBDIR", "UNANNOTATED", "WHERE_TO_GET",
    "FeatureSpec", "GraphListDataset", "OvuleGraph", "benchmark_unit_rows",
    "build_celltypegraph", "check_files", "graph_loader", "graph_scores", "load_fold",
    "load_stack_list", "make_synthetic", "onehot_hops", "read_ovule", "soft_targets",
    "stack_list_for_root", "stack_path", "stratified_folds", "to_data", "unpack_graph_batch",
    "val_row_ids", "vectors_to_orientation", "write_synthetic_ovule", "zscore",
]
