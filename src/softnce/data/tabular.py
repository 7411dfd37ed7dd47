r"""Vector data sets that need no download: ``digits``, ``mnist1d``, ``synthetic``, ``tabular``.

* ``digits``: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside
  scikit-learn), a fixed, seeded, stratified train / calibration / test split (60/20/20);
  ``wine`` and ``breast-cancer``: scikit-learn's other bundled classification sets, split alike.
* ``mnist1d``: MNIST-1D generated offline from its templates with the ``mnist1d`` package's own
  generator (``get_templates()`` + ``make_dataset(args)``; never its download URL).
* ``synthetic``: a Gaussian class-conditional model with a known ``p(y|x)``:
  ``y ~ pi``, ``x | y ~ N(mu_y, sigma^2 I)``, hence

  .. math:: p(y=c \mid x) = \mathrm{softmax}_c\big(\mu_c^\top x / \sigma^2
            - \lVert\mu_c\rVert^2 / (2\sigma^2) + \log \pi_c\big),

  stored for the validation split (``bundle.val_true_probs``) so calibration can be checked
  against the truth. ``sigma`` is the label-uncertainty knob; ``imbalance`` makes ``pi``
  non-uniform (``pi_c \propto imbalance^{-c/(C-1)}``).
* ``tabular``: a user's own data in ``--data-path DIR``: ``train.npz``/``val.npz`` (arrays ``x``
  (N, ...) float and ``y`` (N,) int) or ``train.csv``/``val.csv`` (numeric columns, the label in
  the column named ``label`` or ``y``, else the last column).

Inputs are standardised with the training split's per-feature mean and standard deviation.
Every bundle's ``val`` is the calibration split and ``test`` the held-out test split (see
:class:`~softnce.data.DataBundle`); ``dataset_options.label_noise`` corrupts training labels.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from softnce.data import DATASETS, DataBundle, DataError

__all__ = ["make_synthetic", "vector_bundle"]


def _options(name: str, cfg: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    from softnce.registry import merge_options

    return merge_options("dataset_options", f"dataset {name!r}", cfg.dataset_options, defaults,
                         DataError)


def _num(name: str, value: Any, lo: float, hi: float | None = None, integer: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        kind = "an integer" if integer else "a number"
        raise DataError(f"dataset_options {name} must be {kind} {rng}; found {value!r}")
    return int(value) if integer else float(value)


#: Most classes a label file may imply (labels are checked before anything is allocated).
MAX_LABEL_CLASSES = 1_000_000


def _check_num_classes(cfg: Any, name: str, c: int) -> None:
    if cfg.num_classes is not None and cfg.num_classes != c:
        raise DataError(f"dataset {name!r} has {c} classes; found num_classes={cfg.num_classes}")


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Sorted ``(keep, held_out)`` index arrays, stratified by ``y``: ``ceil(fraction * N)``
    rows held out, allotted to the classes in proportion to their size (largest remainders
    first, ties by class index), each class's rows drawn with ``numpy.random.default_rng(seed)``.
    Pure numpy (no scikit-learn import on the way to a run)."""
    y = np.asarray(y).astype(np.int64)
    n = len(y)
    n_out = min(n - 1, int(np.ceil(val_fraction * n))) if n > 1 else 0
    classes, counts = np.unique(y, return_counts=True)
    share = counts * (n_out / max(n, 1))
    take = np.floor(share).astype(np.int64)
    order = sorted(range(len(classes)), key=lambda i: (-(share[i] - take[i]), i))
    for i in order[: n_out - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(y == c))[:k] for c, k in zip(classes, take)]
    out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(n), out)
    return keep, out


def three_way_split(y: np.ndarray, calibration_fraction: float, test_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed, seeded, stratified ``(train, calibration, test)`` indices; fractions of the whole."""
    rest, test = _stratified_split(y, test_fraction, seed)
    tr, cal = _stratified_split(y[rest], calibration_fraction / (1.0 - test_fraction), seed + 1)
    return rest[tr], rest[cal], test


def apply_label_noise(y: np.ndarray, rate: float, num_classes: int, seed: int) -> np.ndarray:
    """Symmetric label noise: each label is replaced, with probability ``rate``, by one of the
    *other* ``C - 1`` classes drawn uniformly (seeded; used on training labels only)."""
    if rate <= 0:
        return y
    rng = np.random.default_rng(seed)
    flip = rng.random(len(y)) < rate
    shift = rng.integers(1, num_classes, size=len(y))
    out = y.copy()
    out[flip] = (y[flip] + shift[flip]) % num_classes
    return out


#: Split options every embedded vector data set accepts (``dataset_options``).
SPLIT_DEFAULTS: dict[str, Any] = {"calibration_fraction": 0.2, "test_fraction": 0.2,
                                  "split_seed": 0, "label_noise": 0.0, "label_noise_seed": 0}


def _split_options(o: dict[str, Any], carve: bool = False) -> tuple[float, float, int]:
    lo = 0.0 if carve else 0.05
    cal = _num("calibration_fraction", o["calibration_fraction"], lo, 0.9)
    test = _num("test_fraction", o["test_fraction"], 0.05, 0.9) if "test_fraction" in o else 0.0
    if cal + test > 0.9:
        raise DataError(f"dataset_options calibration_fraction + test_fraction must be <= 0.9; "
                        f"found {cal} + {test}")
    _num("label_noise", o["label_noise"], 0.0, 0.95)
    _num("label_noise_seed", o["label_noise_seed"], 0, integer=True)
    return cal, test, _num("split_seed", o["split_seed"], 0, integer=True)


def split_bundle(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, o: dict[str, Any],
                 true_probs: np.ndarray | None = None, **kw: Any) -> DataBundle:
    """Three-way split of one pool of data (train / calibration / test) into a bundle."""
    cal, test, seed = _split_options(o)
    tr, ca, te = three_way_split(y, cal, test, seed)
    tp = (lambda idx: None) if true_probs is None else (lambda idx: true_probs[idx])
    return vector_bundle(name, x[tr], y[tr], x[ca], y[ca], num_classes, x_test=x[te],
                         y_test=y[te], val_true_probs=tp(ca), test_true_probs=tp(te),
                         label_noise=(o["label_noise"], o["label_noise_seed"]),
                         split_info={"split": "stratified three-way", "split_seed": seed}, **kw)


def carve_bundle(name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 y_test: np.ndarray, num_classes: int, o: dict[str, Any],
                 **kw: Any) -> DataBundle:
    """A data set that comes as train + test: the calibration split is carved (seeded,
    stratified) from the training set; ``calibration_fraction: 0`` turns that off (the
    calibration split is then the test split, as in the papers' protocols)."""
    cal, _, seed = _split_options(o, carve=True)
    noise = (o["label_noise"], o["label_noise_seed"])
    if cal == 0:
        return vector_bundle(name, x_train, y_train, x_test, y_test, num_classes, x_test=x_test,
                             y_test=y_test, label_noise=noise,
                             split_info={"split": "given train/test; calibration = test"}, **kw)
    tr, ca = _stratified_split(y_train, cal, seed)
    return vector_bundle(name, x_train[tr], y_train[tr], x_train[ca], y_train[ca], num_classes,
                         x_test=x_test, y_test=y_test, label_noise=noise,
                         split_info={"split": "given train/test; calibration carved from train",
                                     "calibration_fraction": cal, "split_seed": seed}, **kw)


def vector_bundle(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    standardize: bool = True,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    label_noise: tuple[float, int] = (0.0, 0),
    split_info: dict[str, Any] | None = None,
    **kw: Any,
) -> DataBundle:
    """A :class:`DataBundle` of float32 tensors (standardised with the train statistics).

    ``val`` is the calibration split, ``x_test``/``y_test`` the held-out test split;
    ``label_noise = (rate, seed)`` corrupts the training labels only (:func:`apply_label_noise`).
    """
    if label_noise[0] > 0:
        y_train = apply_label_noise(np.asarray(y_train), float(label_noise[0]), num_classes,
                                    int(label_noise[1]))
    xt = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
    xv = torch.as_tensor(np.asarray(x_val), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yv = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    has_test = x_test is not None
    xs = torch.as_tensor(np.asarray(x_test), dtype=torch.float32) if has_test else None
    ys = torch.as_tensor(np.asarray(y_test), dtype=torch.long) if has_test else None
    for split, y in (("train", yt), ("val", yv), ("test", ys)):
        if y is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{name}: {split} labels must lie in [0, {num_classes - 1}]; found "
                            f"[{int(y.min())}, {int(y.max())}]")
    extra = dict(kw.pop("extra", {}) or {})
    if standardize:
        mean = xt.mean(dim=0, keepdim=True)
        std = xt.std(dim=0, keepdim=True).clamp_min(1e-6)
        xt, xv = (xt - mean) / std, (xv - mean) / std
        xs = (xs - mean) / std if xs is not None else None
        extra.update(mean=mean.squeeze(0), std=std.squeeze(0))
    for key in ("val_true_probs", "test_true_probs"):
        if kw.get(key) is not None:
            kw[key] = torch.as_tensor(np.asarray(kw[key]), dtype=torch.float32)
    splits = {"train": len(yt), "calibration": len(yv)}
    if ys is not None:
        splits["test"] = len(ys)
    splits.update(split_info or {})
    if label_noise[0] > 0:
        splits.update(label_noise=float(label_noise[0]), label_noise_seed=int(label_noise[1]))
    return DataBundle(
        name=name,
        kind="tabular",
        train=TensorDataset(xt, yt),
        val=TensorDataset(xv, yv),
        test=TensorDataset(xs, ys) if xs is not None else None,
        num_classes=num_classes,
        input_shape=tuple(xt.shape[1:]),
        train_labels=yt,
        extra=extra,
        splits=splits,
        **kw,
    )


# ---------------------------------------------------------------------------- digits
@DATASETS.register("digits", help="scikit-learn handwritten digits (8x8, 10 classes, embedded)")
def build_digits(cfg: Any) -> DataBundle:
    """Options (:data:`SPLIT_DEFAULTS`): ``calibration_fraction`` (0.2), ``test_fraction`` (0.2),
    ``split_seed`` (0; the split does not follow ``seed``), ``label_noise`` (0).
    Train / calibration / test = 1077 / 360 / 360."""
    o = _options("digits", cfg, SPLIT_DEFAULTS)
    _check_num_classes(cfg, "digits", 10)
    data = _digits_array()
    x, y = data[:, :-1].astype(np.float32) / 16.0, data[:, -1].astype(np.int64)
    return split_bundle("digits", x, y, 10, o, default_model="mlp",
                        class_names=[str(i) for i in range(10)],
                        extra={"image_shape": (1, 8, 8)})


@functools.lru_cache(maxsize=1)
def _digits_array() -> np.ndarray:
    """scikit-learn's ``digits.csv.gz`` (what ``load_digits`` reads), read without importing
    scikit-learn (which costs about 1.5 s at start-up)."""
    import gzip
    import importlib.util

    from softnce._optional import require

    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    if spec is None or spec.origin is None:
        require("sklearn", "train", "dataset 'digits'")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as fh:
        return np.loadtxt(fh, delimiter=",")


def _sklearn_bundle(name: str, loader: str, cfg: Any) -> DataBundle:
    import sklearn.datasets

    o = _options(name, cfg, SPLIT_DEFAULTS)
    d = getattr(sklearn.datasets, loader)()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    c = int(y.max()) + 1
    _check_num_classes(cfg, name, c)
    return split_bundle(name, x, y, c, o, default_model="mlp",
                        class_names=[str(n) for n in d.target_names])


@DATASETS.register("wine", help="scikit-learn wine recognition (178 x 13, 3 classes, embedded)")
def build_wine(cfg: Any) -> DataBundle:
    """scikit-learn's bundled wine data; options as ``digits``."""
    return _sklearn_bundle("wine", "load_wine", cfg)


@DATASETS.register("breast-cancer",
                   help="scikit-learn breast cancer Wisconsin (569 x 30, 2 classes, embedded)")
def build_breast_cancer(cfg: Any) -> DataBundle:
    """scikit-learn's bundled breast-cancer data; options as ``digits``."""
    return _sklearn_bundle("breast-cancer", "load_breast_cancer", cfg)


# --------------------------------------------------------------------------- mnist1d
_MNIST1D_DEFAULTS = {"num_samples": 5000, "train_split": 0.8, "seed": 42, "template_len": 12,
                     "padding": [36, 60], "scale_coeff": 0.4, "max_translation": 48,
                     "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2, "shear_scale": 0.75,
                     "shuffle_seq": False, "final_seq_length": 40}


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(items: tuple) -> tuple[np.ndarray, ...]:
    from softnce._optional import require

    require("mnist1d", "train", "dataset 'mnist1d'")
    from mnist1d.data import get_dataset_args, get_templates, make_dataset
    from mnist1d.utils import ObjectView

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # never used: make_dataset generates from the templates only
    args.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in items})
    # make_dataset reseeds python's and numpy's global RNGs: restore them afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(ObjectView(args), template=get_templates())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


@DATASETS.register("mnist1d", help="MNIST-1D generated offline with the mnist1d package")
def build_mnist1d(cfg: Any) -> DataBundle:
    """Options: the ``mnist1d`` generator arguments (``num_samples`` 5000, ``seed`` 42, ...; its
    own train/test split, 4000 / 1000) and the split options (the calibration split, 20% by
    default, is carved from the generator's training set: 3200 / 800 / 1000)."""
    split = {k: v for k, v in SPLIT_DEFAULTS.items() if k != "test_fraction"}
    o = _options("mnist1d", cfg, {**_MNIST1D_DEFAULTS, **split})
    _check_num_classes(cfg, "mnist1d", 10)
    gen = {k: v for k, v in o.items() if k not in split}
    _num("num_samples", o["num_samples"], 20, integer=True)
    _num("train_split", o["train_split"], 0.05, 0.95)
    _num("num_samples", o["num_samples"], 20, 1_000_000, integer=True)
    _num("final_seq_length", o["final_seq_length"], 1, 10_000, integer=True)
    _num("template_len", o["template_len"], 1, 10_000, integer=True)
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in gen.items()))
    xt, yt, xs, ys = _mnist1d_arrays(items)
    return carve_bundle("mnist1d", xt, yt.astype(np.int64), xs, ys.astype(np.int64), 10, o,
                        default_model="cnn", class_names=[str(i) for i in range(10)])


# ------------------------------------------------------------------------- synthetic
def make_synthetic(
    n_train: int = 4000,
    n_val: int = 2000,
    n_test: int = 0,
    dim: int = 16,
    num_classes: int = 10,
    sigma: float = 1.0,
    separation: float = 1.5,
    imbalance: float = 4.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    r"""Sample the Gaussian model; returns ``x``, ``y`` and the true ``p(y|x)`` of each split
    (``*_train``, ``*_val``, and ``*_test`` when ``n_test > 0``).

    Class means ``mu_c ~ N(0, separation^2 I / dim)`` (scaled so ``E||mu||^2 = separation^2``);
    ``p(y|x) = softmax(mu_c . x / sigma^2 - ||mu_c||^2 / (2 sigma^2) + log pi_c)``.
    Larger ``sigma`` = more label uncertainty (Bayes accuracy falls towards ``max pi``).
    """
    rng = np.random.default_rng(seed)
    c = num_classes
    mu = rng.normal(0.0, separation / np.sqrt(dim), size=(c, dim))
    pi = imbalance ** (-np.arange(c) / max(c - 1, 1))
    pi = pi / pi.sum()

    def sample(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = rng.choice(c, size=n, p=pi)
        x = mu[y] + sigma * rng.normal(size=(n, dim))
        logits = x @ mu.T / sigma**2 - (mu**2).sum(1) / (2 * sigma**2) + np.log(pi)
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return x, y, p / p.sum(1, keepdims=True)

    xt, yt, pt = sample(n_train)
    xv, yv, pv = sample(n_val)
    out = {"x_train": xt, "y_train": yt, "p_train": pt, "x_val": xv, "y_val": yv, "p_val": pv,
           "pi": pi, "mu": mu}
    if n_test > 0:  # drawn after the others, so n_test does not change the train / val draws
        out["x_test"], out["y_test"], out["p_test"] = sample(n_test)
    return out


@DATASETS.register("synthetic", help="Gaussian classes with known p(y|x) (calibration truth)")
def build_synthetic(cfg: Any) -> DataBundle:
    """Options: ``n_train`` (4000), ``n_val`` (2000; the calibration split), ``n_test`` (2000),
    ``dim`` (16), ``sigma`` (1.0; label uncertainty), ``separation`` (1.5), ``imbalance`` (4.0;
    ``max pi / min pi``; 1 = balanced), ``seed`` (0; the data do not follow the training seed),
    ``label_noise`` (0; training labels only). ``--num-classes`` sets C (default 10)."""
    o = _options("synthetic", cfg, {"n_train": 4000, "n_val": 2000, "n_test": 2000, "dim": 16,
                                    "sigma": 1.0, "separation": 1.5, "imbalance": 4.0, "seed": 0,
                                    "label_noise": 0.0, "label_noise_seed": 0})
    c = cfg.num_classes or 10
    if not 2 <= c <= 10_000:
        raise DataError(f"dataset 'synthetic': num_classes must be in [2, 10000]; found {c}")
    _num("label_noise", o["label_noise"], 0.0, 0.95)
    n_all = sum(_num(k, o[k], 1, 10_000_000, integer=True) for k in ("n_train", "n_val", "n_test"))
    dim = _num("dim", o["dim"], 1, 100_000, integer=True)
    if n_all * max(c, dim) > 200_000_000:
        raise DataError(f"dataset 'synthetic': {n_all} samples x max(num_classes={c}, dim={dim}) "
                        f"is too large (limit 2e8 values)")
    d = make_synthetic(
        n_train=_num("n_train", o["n_train"], 2, integer=True),
        n_val=_num("n_val", o["n_val"], 1, integer=True),
        n_test=_num("n_test", o["n_test"], 1, integer=True),
        dim=_num("dim", o["dim"], 1, integer=True),
        num_classes=c,
        sigma=_num("sigma", o["sigma"], 1e-3, 1e6),
        separation=_num("separation", o["separation"], 0.0, 1e6),
        imbalance=_num("imbalance", o["imbalance"], 1.0, 1e6),
        seed=_num("seed", o["seed"], 0, integer=True),
    )
    # No standardisation: the true p(y|x) is a function of the raw x (the MLP does not care).
    return vector_bundle("synthetic", d["x_train"], d["y_train"], d["x_val"], d["y_val"], c,
                         standardize=False, default_model="mlp", x_test=d["x_test"],
                         y_test=d["y_test"], val_true_probs=d["p_val"], test_true_probs=d["p_test"],
                         label_noise=(o["label_noise"], _num("label_noise_seed",
                                                             o["label_noise_seed"], 0, integer=True)),
                         split_info={"split": "independent draws from the generative model"},
                         extra={"class_prior": torch.as_tensor(d["pi"], dtype=torch.float32)})


# --------------------------------------------------------------------------- tabular
def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    npz, csv = root / f"{split}.npz", root / f"{split}.csv"
    if npz.is_file():
        import zipfile
        import zlib

        try:
            with np.load(npz, allow_pickle=False) as f:
                if not hasattr(f, "files"):
                    raise DataError(f"{npz} is a single array, not an .npz archive with arrays "
                                    f"'x' and 'y'")
                if "x" not in f or "y" not in f:
                    raise DataError(f"{npz} must hold arrays 'x' and 'y'; found {sorted(f.files)}")
                x, y = f["x"], f["y"]
                if x.dtype.kind not in "biuf" or y.dtype.kind not in "biuf":
                    raise DataError(f"{npz}: x and y must be numeric arrays; found dtypes "
                                    f"{x.dtype}, {y.dtype}")
                return np.asarray(x, dtype=np.float32), np.asarray(y)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, KeyError) as e:
            raise DataError(f"cannot read {npz} as an .npz archive (empty, truncated or not "
                            f"numpy data: {type(e).__name__}: {e})") from None
    if csv.is_file():
        import csv as csvmod

        with open(csv, newline="") as fh:
            rows = list(csvmod.reader(fh))
        if not rows:
            raise DataError(f"{csv} is empty")
        header = rows[0]
        try:
            [float(v) for v in header]
            body = rows
            label_col = len(header) - 1
        except ValueError:
            body = rows[1:]
            names = [h.strip().lower() for h in header]
            label_col = next((names.index(n) for n in ("label", "y") if n in names),
                             len(header) - 1)
        body = [r for r in body if r]
        if not body:
            raise DataError(f"{csv} has no data rows")
        bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
        if bad is not None:
            raise DataError(f"{csv}: every row must have {len(header)} columns; data row "
                            f"{bad + 1} has {len(body[bad])}")
        try:
            arr = np.asarray([[float(v) for v in r] for r in body], dtype=np.float64)
        except ValueError as e:
            raise DataError(f"{csv}: all columns must be numeric ({e})") from e
        y = arr[:, label_col]
        x = np.delete(arr, label_col, axis=1).astype(np.float32)
        return x, y
    raise DataError(f"tabular data: found neither {npz.name} nor {csv.name} in {root}")


@DATASETS.register("tabular", help="your own data: DIR/{train,val}.npz (x, y) or .csv")
def build_tabular(cfg: Any) -> DataBundle:
    """Options: ``standardize`` (true), ``default_model`` (``mlp``), the split options.

    Files ``train`` + ``val`` + ``test``: used as given (val = calibration). ``train`` + ``val``
    only: ``val`` is the held-out test split and the calibration split is carved (seeded,
    stratified, ``calibration_fraction`` 0.2) from ``train``; ``calibration_fraction: 0`` keeps
    the old two-split behaviour (calibration = test = ``val``)."""
    split = {k: v for k, v in SPLIT_DEFAULTS.items() if k != "test_fraction"}
    o = _options("tabular", cfg, {"standardize": True, "default_model": "mlp", **split})
    if cfg.data_path is None:
        raise DataError("dataset 'tabular' needs --data-path DIR with train.npz/val.npz "
                        "(arrays x, y) or train.csv/val.csv")
    root = Path(cfg.data_path).expanduser()
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a directory")
    has_test = (root / "test.npz").is_file() or (root / "test.csv").is_file()
    parts = {s: _read_split(root, s) for s in ("train", "val", "test") if s != "test" or has_test}
    for split, (x, y) in parts.items():
        if x.ndim < 2:
            raise DataError(f"tabular {split} inputs x must be 2-D or more (rows, features...); "
                            f"found shape {x.shape}")
        if y.ndim != 1:
            raise DataError(f"tabular {split} labels y must be 1-D; found shape {y.shape}")
        if len(x) != len(y):
            raise DataError(f"tabular {split}: x has {len(x)} rows but y has {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"tabular {split} split is empty")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=tuple(range(1, x.ndim))).sum())
            raise DataError(f"tabular {split} inputs hold NaN or infinite values ({bad} rows)")
        if not np.isfinite(y).all():
            raise DataError(f"tabular {split} labels hold NaN or infinite values")
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"tabular {split} labels must be integers")
        if x.shape[1:] != parts["train"][0].shape[1:]:
            raise DataError(f"train inputs have shape {parts['train'][0].shape[1:]} but {split} "
                            f"inputs {x.shape[1:]}")
    n_rows = sum(len(y) for _, y in parts.values())
    top = max(float(y.max()) for _, y in parts.values())
    limit = min(MAX_LABEL_CLASSES, max(100, 10 * n_rows))
    if top >= limit:
        raise DataError(f"tabular labels go up to {top:.0f}, but {n_rows} rows cannot hold more "
                        f"than {limit} classes (labels must be 0..C-1)")
    parts = {s: (x, y.astype(np.int64)) for s, (x, y) in parts.items()}
    if len(parts["train"][1]) < 2:
        raise DataError(f"tabular train split has {len(parts['train'][1])} row; need at least 2")
    if len(np.unique(parts["train"][1])) < 2:
        raise DataError("tabular train labels hold a single class; a classifier needs at "
                        "least 2")
    c = int(max(y.max() for _, y in parts.values())) + 1
    if cfg.num_classes is not None:
        if cfg.num_classes < c:
            raise DataError(f"labels go up to {c - 1} but num_classes={cfg.num_classes}")
        c = cfg.num_classes
    kw = {"standardize": bool(o["standardize"]), "default_model": str(o["default_model"])}
    (xt, yt), (xv, yv) = parts["train"], parts["val"]
    if has_test:
        _split_options(o, carve=True)
        xs, ys = parts["test"]
        return vector_bundle("tabular", xt, yt, xv, yv, c, x_test=xs, y_test=ys,
                             label_noise=(o["label_noise"], o["label_noise_seed"]),
                             split_info={"split": "given train/val/test files"}, **kw)
    return carve_bundle("tabular", xt, yt, xv, yv, c, o, **kw)
