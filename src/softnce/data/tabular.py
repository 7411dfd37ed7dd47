r"""Vector data sets that need no download: ``digits``, ``mnist1d``, ``synthetic``, ``tabular``.

* ``digits``: scikit-learn's handwritten digits (1,797 8x8 images, 10 classes, shipped inside
  scikit-learn), a stratified train/val split.
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
"""

from __future__ import annotations

import functools
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
    if ok and integer:
        ok = float(value).is_integer()
    if ok:
        ok = value >= lo and (hi is None or value <= hi)
    if not ok:
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        kind = "an integer" if integer else "a number"
        raise DataError(f"dataset_options {name} must be {kind} {rng}; found {value!r}")
    return int(value) if integer else float(value)


def _check_num_classes(cfg: Any, name: str, c: int) -> None:
    if cfg.num_classes is not None and cfg.num_classes != c:
        raise DataError(f"dataset {name!r} has {c} classes; found num_classes={cfg.num_classes}")


def _stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=y)
    return np.sort(tr), np.sort(va)


def vector_bundle(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    num_classes: int,
    standardize: bool = True,
    **kw: Any,
) -> DataBundle:
    """A :class:`DataBundle` of float32 tensors (standardised with the train statistics)."""
    xt = torch.as_tensor(np.asarray(x_train), dtype=torch.float32)
    xv = torch.as_tensor(np.asarray(x_val), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y_train), dtype=torch.long)
    yv = torch.as_tensor(np.asarray(y_val), dtype=torch.long)
    for split, y in (("train", yt), ("val", yv)):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise DataError(f"{name}: {split} labels must lie in [0, {num_classes - 1}]; found "
                            f"[{int(y.min())}, {int(y.max())}]")
    extra = dict(kw.pop("extra", {}) or {})
    if standardize:
        mean = xt.mean(dim=0, keepdim=True)
        std = xt.std(dim=0, keepdim=True).clamp_min(1e-6)
        xt, xv = (xt - mean) / std, (xv - mean) / std
        extra.update(mean=mean.squeeze(0), std=std.squeeze(0))
    return DataBundle(
        name=name,
        kind="tabular",
        train=TensorDataset(xt, yt),
        val=TensorDataset(xv, yv),
        num_classes=num_classes,
        input_shape=tuple(xt.shape[1:]),
        train_labels=yt,
        extra=extra,
        **kw,
    )


# ---------------------------------------------------------------------------- digits
@DATASETS.register("digits", help="scikit-learn handwritten digits (8x8, 10 classes, embedded)")
def build_digits(cfg: Any) -> DataBundle:
    """Options: ``val_fraction`` (0.2), ``split_seed`` (0; the split does not follow ``seed``)."""
    from sklearn.datasets import load_digits

    o = _options("digits", cfg, {"val_fraction": 0.2, "split_seed": 0})
    _check_num_classes(cfg, "digits", 10)
    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)
    tr, va = _stratified_split(y, _num("val_fraction", o["val_fraction"], 0.05, 0.9),
                               _num("split_seed", o["split_seed"], 0, integer=True))
    return vector_bundle("digits", x[tr], y[tr], x[va], y[va], 10, default_model="mlp",
                         class_names=[str(i) for i in range(10)],
                         extra={"image_shape": (1, 8, 8)})


# --------------------------------------------------------------------------- mnist1d
_MNIST1D_DEFAULTS = {"num_samples": 5000, "train_split": 0.8, "seed": 42, "template_len": 12,
                     "padding": [36, 60], "scale_coeff": 0.4, "max_translation": 48,
                     "corr_noise_scale": 0.25, "iid_noise_scale": 2e-2, "shear_scale": 0.75,
                     "shuffle_seq": False, "final_seq_length": 40}


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(items: tuple) -> tuple[np.ndarray, ...]:
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
    """Options: the ``mnist1d`` generator arguments (``num_samples`` 5000, ``seed`` 42, ...)."""
    o = _options("mnist1d", cfg, _MNIST1D_DEFAULTS)
    _check_num_classes(cfg, "mnist1d", 10)
    _num("num_samples", o["num_samples"], 20, integer=True)
    _num("train_split", o["train_split"], 0.05, 0.95)
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in o.items()))
    xt, yt, xv, yv = _mnist1d_arrays(items)
    return vector_bundle("mnist1d", xt, yt, xv, yv, 10, default_model="cnn",
                         class_names=[str(i) for i in range(10)])


# ------------------------------------------------------------------------- synthetic
def make_synthetic(
    n_train: int = 4000,
    n_val: int = 2000,
    dim: int = 16,
    num_classes: int = 10,
    sigma: float = 1.0,
    separation: float = 1.5,
    imbalance: float = 4.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    r"""Sample the Gaussian model; returns ``x``, ``y`` and the true ``p(y|x)`` for both splits.

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
    return {"x_train": xt, "y_train": yt, "p_train": pt, "x_val": xv, "y_val": yv, "p_val": pv,
            "pi": pi, "mu": mu}


@DATASETS.register("synthetic", help="Gaussian classes with known p(y|x) (calibration truth)")
def build_synthetic(cfg: Any) -> DataBundle:
    """Options: ``n_train`` (4000), ``n_val`` (2000), ``dim`` (16), ``sigma`` (1.0; label
    uncertainty), ``separation`` (1.5), ``imbalance`` (4.0; ``max pi / min pi``), ``seed`` (0;
    the data do not follow the training seed). ``--num-classes`` sets C (default 10)."""
    o = _options("synthetic", cfg, {"n_train": 4000, "n_val": 2000, "dim": 16, "sigma": 1.0,
                                    "separation": 1.5, "imbalance": 4.0, "seed": 0})
    c = cfg.num_classes or 10
    d = make_synthetic(
        n_train=_num("n_train", o["n_train"], 2, integer=True),
        n_val=_num("n_val", o["n_val"], 1, integer=True),
        dim=_num("dim", o["dim"], 1, integer=True),
        num_classes=c,
        sigma=_num("sigma", o["sigma"], 1e-3),
        separation=_num("separation", o["separation"], 0.0),
        imbalance=_num("imbalance", o["imbalance"], 1.0),
        seed=_num("seed", o["seed"], 0, integer=True),
    )
    # No standardisation: the true p(y|x) is a function of the raw x (the MLP does not care).
    return vector_bundle("synthetic", d["x_train"], d["y_train"], d["x_val"], d["y_val"], c,
                         standardize=False, default_model="mlp",
                         val_true_probs=torch.as_tensor(d["p_val"], dtype=torch.float32),
                         extra={"class_prior": torch.as_tensor(d["pi"], dtype=torch.float32)})


# --------------------------------------------------------------------------- tabular
def _read_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    npz, csv = root / f"{split}.npz", root / f"{split}.csv"
    if npz.is_file():
        with np.load(npz, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{npz} must hold arrays 'x' and 'y'; found {sorted(f.files)}")
            return np.asarray(f["x"], dtype=np.float32), np.asarray(f["y"])
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
    """Options: ``standardize`` (true), ``default_model`` (``mlp``)."""
    o = _options("tabular", cfg, {"standardize": True, "default_model": "mlp"})
    if cfg.data_path is None:
        raise DataError("dataset 'tabular' needs --data-path DIR with train.npz/val.npz "
                        "(arrays x, y) or train.csv/val.csv")
    root = Path(cfg.data_path).expanduser()
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a directory")
    (xt, yt), (xv, yv) = _read_split(root, "train"), _read_split(root, "val")
    for split, y in (("train", yt), ("val", yv)):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"tabular {split} labels must be integers")
    yt, yv = yt.astype(np.int64), yv.astype(np.int64)
    if xt.shape[1:] != xv.shape[1:]:
        raise DataError(f"train inputs have shape {xt.shape[1:]} but val inputs {xv.shape[1:]}")
    c = int(max(yt.max(), yv.max())) + 1
    if cfg.num_classes is not None:
        if cfg.num_classes < c:
            raise DataError(f"labels go up to {c - 1} but num_classes={cfg.num_classes}")
        c = cfg.num_classes
    return vector_bundle("tabular", xt, yt, xv, yv, c, standardize=bool(o["standardize"]),
                         default_model=str(o["default_model"]))
