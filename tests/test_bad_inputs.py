"""Every bad input to ``softnce train`` ends with ``softnce train: error: ...`` and exit 2 (no
traceback): one table, one row per input. Rows build their files under ``tmp_path``; nothing is
trained beyond a step or two (the error comes while reading the config or the data)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from softnce.cli import main

FAST = ["--quiet", "--set", "cpu_threads=1", "--max-steps", "1"]


def _npz(root: Path, split: str, **arrays: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{split}.npz", **arrays)


def _tab(root: Path, xt=None, yt=None, xv=None, yv=None) -> list[str]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    _npz(root, "train", x=x if xt is None else xt, y=y if yt is None else yt)
    _npz(root, "val", x=x[:10] if xv is None else xv, y=y[:10] if yv is None else yv)
    return ["--dataset", "tabular", "--data-path", str(root)]


def _nan_train(t: Path) -> list[str]:
    x = np.ones((40, 3), np.float32)
    x[3, 1] = np.nan
    return _tab(t / "d", xt=x)


def _inf_val(t: Path) -> list[str]:
    x = np.ones((10, 3), np.float32)
    x[0, 0] = np.inf
    return _tab(t / "d", xv=x)


def _empty_npz(t: Path) -> list[str]:
    a = _tab(t / "d")
    (t / "d" / "train.npz").write_bytes(b"")
    return a


def _truncated_npz(t: Path) -> list[str]:
    a = _tab(t / "d")
    p = t / "d" / "train.npz"
    p.write_bytes(p.read_bytes()[:100])
    return a


def _cifar(t: Path, data: object, labels: object) -> list[str]:
    root = t / "cifar-10-batches-py"
    root.mkdir(parents=True)
    (root / "data_batch_1").write_bytes(pickle.dumps({"data": data, "labels": labels},
                                                     protocol=2))
    return ["--dataset", "cifar10", "--data-path", str(root)]


class _HugeArray:
    """Pickles as numpy's ``_reconstruct`` of a 1 TiB uint8 array (a file of ~170 bytes)."""

    def __reduce__(self):
        return (np._core.multiarray._reconstruct if hasattr(np, "_core")
                else np.core.multiarray._reconstruct, (np.ndarray, (2**40,), np.dtype("u1")))


def _ctg(t: Path, mutate: Callable) -> list[str]:
    pytest.importorskip("torch_geometric")
    import h5py

    from softnce.data import celltypegraph as ctg

    root = t / "ctg"
    ctg.make_synthetic(root, num_stacks=10, seed=1, min_cells=12, max_cells=16)
    first = sorted(root.rglob("*.h5"))[0]
    with h5py.File(first, "a") as fh:
        mutate(fh, h5py)
    return ["--dataset", "celltypegraph", "--data-path", str(root)]


def _link_loop(fh, h5py) -> None:
    del fh["cell_ids"]
    fh["loop_a"] = h5py.SoftLink("/loop_b")
    fh["loop_b"] = h5py.SoftLink("/loop_a")
    fh["cell_ids"] = h5py.SoftLink("/loop_a")


def _huge_dataset(fh, h5py) -> None:
    del fh["cell_labels"]
    fh.create_dataset("cell_labels", shape=(10**11,), dtype="i8", chunks=(4096,))


def _finetune(t: Path, obj: object | None = None, text: bool = False) -> list[str]:
    p = t / "w.pt"
    if text:
        p.write_text("these are not weights\n")
    else:
        torch.save(obj, p)
    return ["--dataset", "digits", "--loss", "nll", "--finetune", str(p)]


def _int_weights(t: Path) -> list[str]:
    # an MLP state dict for digits, but with integer tensors
    from softnce.harness.config import load_config
    from softnce.harness.trainer import Trainer

    tr = Trainer(load_config(dataset="digits", loss="nll", cpu_threads=1,
                             output_dir=str(t / "src")))
    tr._build()
    sd = {k: v.to(torch.int64) for k, v in tr.model.state_dict().items()}
    return _finetune(t, sd)


def _yaml(t: Path, text: str | bytes) -> list[str]:
    p = t / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return ["--config", str(p)]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
) + "dataset: digits\n"


def _mps(t: Path) -> list[str]:
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("MPS is available here")
    return ["--dataset", "digits", "--device", "mps"]


def _digits(*extra: str) -> Callable[[Path], list[str]]:
    return lambda t: ["--dataset", "digits", *extra]


CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    # tabular data
    ("tabular-nan-train", _nan_train, "train inputs hold NaN or infinite"),
    ("tabular-inf-val", _inf_val, "val inputs hold NaN or infinite"),
    ("tabular-length-mismatch",
     lambda t: _tab(t / "d", yt=np.arange(39) % 2), "x has 40 rows but y has 39"),
    ("tabular-empty-npz", _empty_npz, "train.npz as an .npz archive"),
    ("tabular-truncated-npz", _truncated_npz, "train.npz as an .npz archive"),
    ("tabular-1d-x", lambda t: _tab(t / "d", xt=np.ones(40, np.float32)), "must be 2-D"),
    ("tabular-one-row",
     lambda t: _tab(t / "d", xt=np.ones((1, 3), np.float32), yt=np.array([0])), "need at least 2"),
    ("tabular-one-class", lambda t: _tab(t / "d", yt=np.zeros(40, int)), "a single class"),
    ("tabular-label-1e9",
     lambda t: _tab(t / "d", yt=np.r_[np.arange(39) % 2, 10**9]), "cannot hold more than"),
    # CellTypeGraph HDF5
    ("ctg-softlink-loop", lambda t: _ctg(t, _link_loop), "cell_ids"),
    ("ctg-1e11-elements", lambda t: _ctg(t, _huge_dataset), "refusing to read more than"),
    # CIFAR pickles
    ("cifar-1tib-array", lambda t: _cifar(t, _HugeArray(), [0]), "cannot come from a file of"),
    ("cifar-float-labels",
     lambda t: _cifar(t, np.zeros((2, 3072), np.uint8), [0.5, 1.0]), "integer labels"),
    # --finetune weights
    ("finetune-int64-weights", _int_weights, "refusing to cast integer"),
    ("finetune-text-file", lambda t: _finetune(t, text=True), "is not a PyTorch checkpoint"),
    # YAML / config files
    ("yaml-alias-bomb", lambda t: _yaml(t, BOMB), "alias bomb"),
    ("yaml-not-utf8", lambda t: _yaml(t, b"dataset: digits\nlr: \xff\xfe\n"), "not UTF-8"),
    # values out of range
    ("lr-1e308", _digits("--lr", "1e308"), "lr must be <= 1e+06"),
    ("warmup-1e308", _digits("--set", "warmup_epochs=1e308"), "warmup_epochs must be in"),
    ("seed-2**70", _digits("--seed", str(2**70)), "seed must be an integer in"),
    ("cpu-threads-100000", _digits("--set", "cpu_threads=100000"), "cpu_threads must be"),
    ("simplex-1e-300", _digits("--negatives", "simplex", "--set", "simplex_concentration=1e-300"),
     "simplex_concentration must be"),
    ("simplex-1e308", _digits("--negatives", "simplex", "--set", "simplex_concentration=1e308"),
     "simplex_concentration must be"),
    ("queue-1e12", _digits("--negatives", "queue", "--set", "queue_size=1000000000000"),
     "queue_size must be in"),
    ("negatives-1e12", _digits("--negatives", "sampled", "--set",
                               "num_negatives=1000000000000"), "num_negatives must be in"),
    ("hidden-1e8", _digits("--set", "model_options.hidden=[100000000]"), "hidden"),
    ("device-mps", _mps, "MPS"),
    ("mnist1d-seq-0", lambda t: ["--dataset", "mnist1d", "--set",
                                 "dataset_options.final_seq_length=0"], "final_seq_length"),
    ("synthetic-classes-1e8", lambda t: ["--dataset", "synthetic", "--num-classes",
                                         "100000000"], "num_classes must be in"),
    ("synthetic-imbalance-inf", lambda t: ["--dataset", "synthetic", "--set",
                                           "dataset_options.imbalance=.inf"], "imbalance"),
    ("batch-size-1-infonce", _digits("--loss", "infonce", "--batch-size", "1"),
     "a batch of one candidate gives loss 0"),
    ("batch-size-1-soft-infonce", _digits("--loss", "soft-infonce", "--batch-size", "1"),
     "batch_size must be >= 2"),
]


@pytest.mark.parametrize("name,build,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_usage_error(tmp_path, capsys, name, build, needle):
    argv = ["train", *FAST, *build(tmp_path), "--output-dir", str(tmp_path / "out")]
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "softnce train: error:" in err, err
    assert "Traceback" not in err, err
    assert needle in err, (needle, err)


def test_exponent_float_in_set_is_accepted():
    """YAML 1.1 reads ``5e-1`` as a string; softnce's loader reads it as the float it is."""
    from softnce.harness.config import load_config, parse_overrides

    assert parse_overrides(["dataset_options.sigma=5e-1"]) == {"dataset_options": {"sigma": 0.5}}
    cfg = load_config(dataset="synthetic", overrides=["dataset_options.sigma=5e-1", "lr=1e-2"])
    assert cfg.dataset_options["sigma"] == 0.5 and cfg.lr == 0.01
    from softnce.data import DATASETS

    b = DATASETS.get("synthetic")(cfg.replace(dataset_options={"sigma": 0.5, "n_train": 50,
                                                                "n_val": 20, "n_test": 20}))
    assert len(b.train) == 50


def test_lr_1e3_diverges_with_the_documented_message_for_every_loss(tmp_path, capsys):
    from softnce.harness.losses import LOSSES

    for loss in [n for n in LOSSES.names() if not n.startswith("test-")]:
        extra = ["--set", "smoothing=0.1"] if LOSSES.get(loss).targets != "hard" else []
        argv = ["train", "--dataset", "digits", "--loss", loss, "--lr", "1e3", "--epochs", "1",
                "--set", "warmup_epochs=0", "--set", "cpu_threads=1", "--quiet", *extra,
                "--output-dir", str(tmp_path / loss)]
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 1, (loss, err)
        assert "non-finite training loss" in err and "at optimiser step" in err, (loss, err)
        assert "Traceback" not in err
