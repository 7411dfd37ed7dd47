"""CellTypeGraph: reader, features, folds, soft targets, generator, graph models, harness runs.

Everything runs on small synthetic files written by ``make_synthetic`` (the real benchmark files
are never downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from softnce.data import DataError
from softnce.data import celltypegraph as ctg
from softnce.experiments import celltypegraph_cv as ctg_cv

pytest.importorskip("torch_geometric")

SMALL = {"min_cells": 12, "max_cells": 20}


def _rewrite(path: Path, key: str, value: np.ndarray | None) -> None:
    """Replace (or delete, when ``value`` is None) one dataset of an HDF5 file."""
    with h5py.File(path, "a") as fh:
        del fh[key]
        if value is not None:
            fh.create_dataset(key, data=value)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ctg")
    ctg.make_synthetic(root, num_stacks=10, seed=1, **SMALL)
    return root


@pytest.fixture
def one_file(tmp_path: Path) -> Path:
    p = tmp_path / "ovule.h5"
    ctg.write_synthetic_ovule(p, np.random.default_rng(3), 16)
    return p


# ------------------------------------------------------------------------------ features
def test_feature_lists_sum_to_74_and_11() -> None:
    assert ctg.NUM_NODE_FEATURES == 74 and ctg.NUM_EDGE_FEATURES == 11
    node_names = [f.name for f in ctg.NODE_FEATURES]
    assert len(set(node_names)) == len(node_names) == 24
    assert sum(f.width for f in ctg.NODE_FEATURES if "orientation" in f.name) == 36
    assert sum(f.width for f in ctg.NODE_FEATURES if "_proj_" in f.name) == 18


def test_reader_shapes_and_feature_transforms(one_file: Path) -> None:
    g = ctg.read_ovule(one_file)
    with h5py.File(one_file) as fh:
        n, e_all = fh["cell_ids"].shape[0], fh["edges_ids"].shape[0]
        com = fh["cell_features/com_grs"][()].astype(np.float64)
        n_bg = int(((fh["edges_ids"][()] == 0).any(axis=1)).sum())
    assert g.x.shape == (n, 74) and g.x.dtype == np.float32
    assert g.edge_attr.shape == (e_all - n_bg, 11) and g.edge_index.shape == (2, e_all - n_bg)
    assert np.isfinite(g.x).all() and np.isfinite(g.edge_attr).all()
    cols, start = {}, 0
    for f in ctg.NODE_FEATURES:
        cols[f.name] = slice(start, start + f.width)
        start += f.width
    # com_grs: one mean / std over the whole (N, 3) block, as the benchmark's Zscore
    expect = (com - com.mean()) / com.std()
    np.testing.assert_allclose(g.x[:, cols["com_grs"]], expect, rtol=1e-5, atol=1e-5)
    # hops_to_bg: exactly one 1 per row over 5 channels
    hops = g.x[:, cols["hops_to_bg"]]
    assert set(np.unique(hops)) <= {0.0, 1.0} and (hops.sum(1) == 1).all()
    # orientations: each row divided by |row sum| (the benchmark's ToUnitVector)
    o = g.x[:, cols["lrs_orientation_axis1_grs"]]
    np.testing.assert_allclose(np.abs(o.sum(1)), 1.0, rtol=1e-5)
    assert (g.x[:, cols["pca_proj_axis2_grs"]] >= 0).all()  # abs


def test_transform_helpers() -> None:
    a = np.array([[1.0, 2.0], [3.0, 6.0]])
    z = ctg.zscore(a)
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_allclose(ctg.benchmark_unit_rows(np.array([[1.0, -3.0, 4.0]])),
                               [[0.5, -1.5, 2.0]])
    np.testing.assert_array_equal(ctg.onehot_hops(np.array([2, 3, 9]), 5)[:, :3],
                                  [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert ctg.onehot_hops(np.array([2, 3, 9]), 5)[2, 4] == 1
    v = np.array([[0.6, 0.0, 0.8]])
    np.testing.assert_allclose(ctg.vectors_to_orientation(v), [[0.36, 0, 0.64, 0, 0, 0.48]])


def test_edge_features_zscored_before_background_removal(one_file: Path) -> None:
    g = ctg.read_ovule(one_file)
    with h5py.File(one_file) as fh:
        raw = fh["edges_features/com_distance_um"][()].astype(np.float64)
        keep = (fh["edges_ids"][()] != 0).all(axis=1)
    expect = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(g.edge_attr[:, 1], expect[keep], rtol=1e-5, atol=1e-5)


def test_background_edges_dropped_and_ids_remapped(one_file: Path) -> None:
    g = ctg.read_ovule(one_file)
    with h5py.File(one_file) as fh:
        pairs = fh["edges_ids"][()]
    stored = {tuple(sorted(p)) for p in pairs.tolist() if 0 not in p}
    assert any(0 in p for p in pairs.tolist())  # the file does hold background contacts
    read = {tuple(sorted(p)) for p in g.cell_ids[g.edge_index].T.tolist()}
    assert read == stored
    assert g.edge_index.min() >= 0 and g.edge_index.max() < g.x.shape[0]
    one_way, both = ctg.to_data(g, undirected=False), ctg.to_data(g)
    e = one_way.edge_index.shape[1]
    assert both.edge_index.shape[1] == 2 * e
    assert torch.equal(both.edge_index[:, e:], one_way.edge_index.flip(0))
    assert torch.equal(both.edge_attr[e:], both.edge_attr[:e])


def test_label_mapping(one_file: Path) -> None:
    with h5py.File(one_file) as fh:
        n = fh["cell_ids"].shape[0]
    raw = np.array([1, 2, 3, 4, 14, 5, 6, 7, 8, 10, 0] + [1] * (n - 11), dtype=np.int32)
    _rewrite(one_file, "cell_labels", raw)
    g = ctg.read_ovule(one_file)
    np.testing.assert_array_equal(g.y[:11], [0, 1, 2, 3, 3, 4, 5, 6, 7, 8, -1])
    d = ctg.to_data(g)
    assert not bool(d.train_mask[10]) and int(d.y[10]) == 0 and bool(d.train_mask[:10].all())


# ------------------------------------------------------------------------------ errors
def test_missing_files_all_listed(tmp_path: Path) -> None:
    stacks = ctg.load_stack_list()
    assert len(stacks) == 84
    with pytest.raises(DataError) as e:
        ctg.check_files(tmp_path, stacks)
    msg = str(e.value)
    assert "84 of 84" in msg and "heibox.uni-heidelberg.de" in msg
    for stage, stack in stacks:
        assert str(ctg.stack_path(tmp_path, stage, stack)) in msg


def test_missing_files_reported_by_factory(tmp_path: Path) -> None:
    ctg.make_synthetic(tmp_path, num_stacks=10, seed=0, **SMALL)
    gone = [ctg.stack_path(tmp_path, *s) for s in ctg.stack_list_for_root(tmp_path)[2:4]]
    for p in gone:
        p.unlink()
    with pytest.raises(DataError) as e:
        ctg.load_fold(tmp_path)
    assert all(str(p) in str(e.value) for p in gone) and "2 of 10" in str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "expect"),
    [
        ("cell_labels", None, "missing ['cell_labels']"),
        ("cell_labels", np.full(3, 1, dtype=np.int32), "cell_labels must have shape"),
        ("cell_labels", "unknown", "label ids [9]"),
        ("cell_features/volume_um", np.zeros((2, 2), np.float32), "cell_features/volume_um"),
        ("edges_features/lrs_proj_grs", None, "lacks the feature datasets ['lrs_proj_grs']"),
        ("edges_ids", "dangling", "not in cell_ids"),
        ("cell_features/surface_um", "nan", "NaN or infinite"),
    ],
)
def test_malformed_file_errors_name_the_file(one_file: Path, key: str, value: object,
                                             expect: str) -> None:
    with h5py.File(one_file) as fh:
        n = fh["cell_ids"].shape[0]
        labels, edges = fh["cell_labels"][()], fh["edges_ids"][()]
    if isinstance(value, str) and value == "unknown":
        labels[0] = 9
        value = labels
    elif isinstance(value, str) and value == "dangling":
        row = int(np.nonzero((edges != 0).all(1))[0][0])  # a cell-cell pair
        edges[row, 1] = 10**6
        value = edges
    elif isinstance(value, str) and value == "nan":
        value = np.full(n, np.nan, np.float32)
    _rewrite(one_file, key, value)
    with pytest.raises(ValueError) as e:
        ctg.read_ovule(one_file)
    assert str(one_file) in str(e.value) and expect in str(e.value)


def test_not_hdf5_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.h5"
    p.write_text("not hdf5")
    with pytest.raises(ValueError, match="broken.h5: not a readable HDF5 file"):
        ctg.read_ovule(p)


def test_factory_rejects_bad_options(data_dir: Path) -> None:
    from types import SimpleNamespace

    for opts, match in [({"folds": 1}, "unknown celltypegraph dataset_options"),
                        ({"fold": 5}, "fold must be an int in"),
                        ({"soft_targets": "both"}, "soft_targets must be one of")]:
        with pytest.raises(DataError, match=match):
            ctg.build_celltypegraph(SimpleNamespace(data_path=str(data_dir),
                                                    dataset_options=opts))
    with pytest.raises(DataError, match="needs a data path"):
        ctg.build_celltypegraph(SimpleNamespace(data_path=None, dataset_options={}))


# ------------------------------------------------------------------------------ folds
def test_folds_reproduce_stratified_protocol() -> None:
    stacks = ctg.load_stack_list()
    folds = ctg.stratified_folds(stacks, num_folds=5, seed=0)
    sizes = [(len(f["train"]), len(f["test"])) for f in folds]
    assert sizes == [(66, 18), (66, 18), (67, 17), (67, 17), (70, 14)]
    tests = [s for f in folds for s in f["test"]]
    assert sorted(tests) == sorted(stacks)  # every stack tested exactly once
    for f in folds:
        assert not set(f["train"]) & set(f["test"])
    # the benchmark's own recipe with the legacy global RNG, stage by stage
    for stage in dict.fromkeys(s for s, _ in stacks):
        ids = [f"{stage}_{k[:-3]}" for s, k in stacks if s == stage]
        np.random.seed(0)
        np.random.shuffle(ids)
        parts = np.array_split(ids, 5)
        for i, f in enumerate(folds):
            got = [f"{s}_{k[:-3]}" for s, k in f["test"] if s == stage]
            assert got == parts[i].tolist()


def test_folds_validate_arguments() -> None:
    with pytest.raises(ValueError, match="num_folds must be an int >= 2"):
        ctg.stratified_folds(ctg.load_stack_list(), num_folds=1)


# ------------------------------------------------------------------------------ soft targets
def test_annotator_soft_targets_are_simplex_rows() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(-1, 9, size=200)
    b = rng.integers(-1, 9, size=200)
    st = ctg.soft_targets(a, b)
    assert st.shape == (200, 9) and (st >= 0).all()
    torch.testing.assert_close(st.sum(1), torch.ones(200))
    both = (a >= 0) & (b >= 0)
    for i in np.nonzero(both)[0][:20]:
        exp = torch.zeros(9)
        exp[a[i]] += 0.5
        exp[b[i]] += 0.5
        torch.testing.assert_close(st[i], exp)
    only_a = (a >= 0) & (b < 0)
    assert torch.equal(st[only_a].argmax(1), torch.from_numpy(a[only_a]))
    assert (st[only_a].max(1).values == 1).all()
    smoothed = ctg.soft_targets(a, b, smoothing=0.1)
    torch.testing.assert_close(smoothed, 0.9 * st + 0.1 / 9)


def test_annotator_soft_targets_from_file(data_dir: Path) -> None:
    train, _, info = ctg.load_fold(data_dir, soft="annotators")
    assert info["graphs_with_second_annotator"] == 10
    for d in train.graphs:
        assert d.soft_y.shape == (d.num_nodes, 9)
        torch.testing.assert_close(d.soft_y.sum(1), torch.ones(d.num_nodes))
        disagree = d.train_mask & (d.y_set2 >= 0) & (d.y_set2 != d.y)
        if bool(disagree.any()):
            assert torch.allclose(d.soft_y[disagree].max(1).values, torch.tensor(0.5))
    plain, _, _ = ctg.load_fold(data_dir, soft="smoothing")
    assert getattr(plain.graphs[0], "soft_y", None) is None


# ------------------------------------------------------------------------------ metrics
def test_graph_scores_follow_the_benchmark() -> None:
    target = torch.tensor([0, 0, 1, 7, 7, 2, 2, 2])
    pred = torch.tensor([0, 1, 1, 0, 0, 2, 2, 0])
    graph = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1])
    s = ctg.graph_scores(pred, target, graph)
    torch.testing.assert_close(s["top1"], torch.tensor([2 / 5, 2 / 3], dtype=torch.float64))
    # graph 0: class 0 -> 1/2, class 1 -> 1, class 7 excluded; graph 1: class 2 -> 2/3
    torch.testing.assert_close(s["class_avg"], torch.tensor([0.75, 2 / 3], dtype=torch.float64))
    only_es = ctg.graph_scores(torch.tensor([7]), torch.tensor([7]), torch.tensor([0]))
    assert torch.isnan(only_es["class_avg"]).all()


# ------------------------------------------------------------------------------ generator
def test_generator_cli_and_learnable_structure(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    from softnce.cli import main as softnce_main

    assert softnce_main(["celltypegraph", "make-synthetic", str(tmp_path), "--stacks", "12",
                         "--seed", "2"]) == 0
    stacks = ctg.stack_list_for_root(tmp_path)
    assert len(stacks) == 12 and len({s for s, _ in stacks}) == 2
    train, test, _ = ctg.load_fold(tmp_path, fold=1)
    assert len(train) + len(test) == 12 and len(test) >= 1

    def xy(ds: ctg.GraphListDataset) -> tuple[np.ndarray, np.ndarray]:
        return (torch.cat([d.x[d.train_mask] for d in ds.graphs]).numpy(),
                torch.cat([d.y[d.train_mask] for d in ds.graphs]).numpy())

    (xtr, ytr), (xte, yte) = xy(train), xy(test)
    assert 20 <= len(ytr) / len(train) <= 60  # tens of cells per ovule
    clf = LogisticRegression(max_iter=500).fit(xtr, ytr)
    acc = (clf.predict(xte) == yte).mean()
    majority = (yte == np.bincount(ytr).argmax()).mean()
    assert acc > majority + 0.15, (acc, majority)


# ------------------------------------------------------------------------------ models
def test_models_forward_and_validate() -> None:
    from torch_geometric.data import Batch, Data

    from softnce.models.graph import DeeperGCN, GCNNodeClassifier

    torch.manual_seed(0)
    gs = [Data(x=torch.randn(n, 74), edge_index=torch.randint(0, n, (2, 3 * n)),
               edge_attr=torch.randn(3 * n, 11)) for n in (5, 9)]
    b = Batch.from_data_list(gs)
    assert GCNNodeClassifier(74, 9, hidden=8)(b).shape == (14, 9)
    deep = DeeperGCN(74, 9, edge_features=11, hidden=8, num_layers=3)
    out = deep(b)
    assert out.shape == (14, 9)
    out.sum().backward()
    assert deep.node_encoder.weight.grad is not None
    with pytest.raises(ValueError, match=r"data.x must have shape \(N, 74\)"):
        GCNNodeClassifier(74, 9, hidden=8)(Data(x=torch.randn(3, 5), edge_index=gs[0].edge_index))
    with pytest.raises(ValueError, match="edge_attr must have shape"):
        deep(Data(x=torch.randn(5, 74), edge_index=gs[0].edge_index))
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        GCNNodeClassifier(74, 9, hidden=0)


# ------------------------------------------------------------------------------ harness
def _run(data_dir: Path, out: Path, **kw: object) -> dict:
    from softnce.harness.config import TrainConfig
    from softnce.harness.trainer import train

    base = {"dataset": "celltypegraph", "data_path": str(data_dir), "epochs": 1, "max_steps": 3,
            "batch_size": 1, "lr": 1e-2, "optimizer": "adam", "weight_decay": 1e-5,
            "warmup_epochs": 0.0, "cpu_threads": 1, "quiet": True, "tensorboard": False,
            "device": "cpu", "output_dir": str(out)}
    base.update(kw)
    return train(TrainConfig.from_dict(base, source="test"))


SMALL_MODELS = {"gcn": {"hidden": 16}, "deepergcn": {"hidden": 16, "num_layers": 3}}


@pytest.mark.parametrize("model", ["gcn", "deepergcn"])
@pytest.mark.parametrize("loss", ["nll", "infonce", "soft-ce", "soft-infonce"])
def test_each_loss_trains_through_the_harness(data_dir: Path, tmp_path: Path, loss: str,
                                              model: str) -> None:
    extra = {"smoothing": 0.1} if loss.startswith("soft") else {}
    s = _run(data_dir, tmp_path / "run", loss=loss, model=model,
             model_options=SMALL_MODELS[model], **extra)
    assert s["steps"] == 3 and s["model"] == model
    for k in ("top1", "nll", "ece", "brier", "train_loss"):
        assert np.isfinite(s["final"][k]), k
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert isinstance(ck, dict)


def test_annotator_targets_and_cv_summary(data_dir: Path, tmp_path: Path) -> None:
    runs = []
    for fold in (0, 1):
        out = tmp_path / f"fold{fold}"
        _run(data_dir, out, loss="soft-infonce", model="gcn", model_options={"hidden": 16},
             dataset_options={"fold": fold, "soft_targets": "annotators"})
        runs.append(out)
    res = ctg_cv.summarize_cv(runs)
    assert [f["fold"] for f in res["folds"]] == [0, 1]
    for f in res["folds"]:
        assert 0 <= f["graph_top1"] <= 1 and 0 <= f["graph_class_avg"] <= 1
    from scipy.stats import t as student_t

    over = res["over_folds"]["top1"]
    tops = [f["top1"] for f in res["folds"]]
    assert over["n"] == 2 and over["mean"] == pytest.approx(np.mean(tops))
    assert over["std"] == pytest.approx(np.std(tops, ddof=1))  # sample std, not ddof=0
    half = student_t.ppf(0.975, 1) * np.std(tops, ddof=1) / np.sqrt(2)
    assert over["ci_low"] == pytest.approx(np.mean(tops) - half)
    assert over["ci_high"] == pytest.approx(np.mean(tops) + half)
    # the stored labels are checked against the re-read fold: another data set is rejected
    cfg = json.loads((runs[0] / "config.json").read_text())
    cfg["dataset_options"]["fold"] = 1
    (runs[0] / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match the annotated nodes"):
        ctg_cv.summarize_cv(runs[:1])


def test_compare_preset_is_valid_for_graphs(data_dir: Path, tmp_path: Path) -> None:
    from softnce.experiments.compare import resolve_runs

    names = ["nll", "infonce", "soft-ce", "soft-infonce", "soft-ce-annotators",
             "soft-infonce-annotators"]
    runs = resolve_runs("celltypegraph", losses=names, seeds=(0,),
                        overrides={"data_path": str(data_dir)}, output_dir=tmp_path)
    for name, _, cfg in runs:
        cfg.validate()
        assert cfg.mixup == 0 and cfg.cutmix == 0 and cfg.model == "gcn", name
        assert cfg.batch_size == 1 and cfg.optimizer == "adam" and cfg.lr == 1e-2
    ann = {n: c for n, _, c in runs}["soft-infonce-annotators"]
    assert ann.dataset_options["soft_targets"] == "annotators" and ann.smoothing == 0.0


def test_repo_configs_load() -> None:
    from softnce.harness.config import REPO_CONFIG_DIR, load_config

    files = sorted((REPO_CONFIG_DIR / "celltypegraph").glob("*-*.yaml"))
    assert len(files) == 12
    seen = set()
    for f in files:
        c = load_config(str(f))
        c.validate()
        assert c.dataset == "celltypegraph" and c.batch_size == 1
        expect = {"gcn": (1e-2, 2, 128), "deepergcn": (1e-3, 16, 128)}[c.model]
        assert (c.lr, c.model_options["num_layers"], c.model_options["hidden"]) == expect
        assert c.weight_decay == 1e-5 and c.optimizer == "adam"
        seen.add((c.model, c.loss, c.dataset_options["soft_targets"]))
    for m in ("gcn", "deepergcn"):
        for loss in ("nll", "infonce", "soft-ce", "soft-infonce"):
            assert (m, loss, "smoothing") in seen


def test_softnce_celltypegraph_subcommand(tmp_path: Path) -> None:
    from softnce.cli import main as softnce_main

    assert softnce_main(["celltypegraph", "make-synthetic", str(tmp_path), "--stacks", "9"]) == 0
    assert len(ctg.stack_list_for_root(tmp_path)) == 9
    with pytest.raises(SystemExit) as exc:
        softnce_main(["celltypegraph", "no-such-command"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------ the cv command
CV_ARGS = ["--losses", "nll,soft-infonce", "--folds", "0,1", "--epochs", "1",
           "--set", "model_options.hidden=16", "--set", "max_steps=3"]


def _cv(data_dir: Path, out: Path, *extra: str) -> int:
    from softnce.cli import main as softnce_main

    return softnce_main(["celltypegraph", "cv", "--data-path", str(data_dir), *CV_ARGS,
                         "--output-dir", str(out), *extra])


def test_cv_command_end_to_end_and_resume(data_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    import softnce.harness.trainer

    out = tmp_path / "cv"
    assert _cv(data_dir, out) == 0
    printed = capsys.readouterr().out
    assert "class-avg excl. 7" in printed and "gcn-soft-infonce" in printed
    summary = json.loads((out / "cv_summary.json").read_text())
    assert list(summary["losses"]) == ["gcn-nll", "gcn-soft-infonce"]
    report = (out / "cv_report.md").read_text()
    for name, r in summary["losses"].items():
        dirs = [out / name / "fold0", out / name / "fold1"]
        cfg1 = json.loads((dirs[1] / "config.json").read_text())
        assert cfg1["dataset_options"]["fold"] == 1 and cfg1["model_options"]["hidden"] == 16
        assert cfg1["epochs"] == 1 and cfg1["loss"] == name.removeprefix("gcn-")
        ref = ctg_cv.summarize_cv(dirs)  # the written numbers are summarize_cv's, unchanged
        assert r["over_folds"] == json.loads(json.dumps(ref["over_folds"]))
        assert [f["fold"] for f in r["folds"]] == [0, 1]
        st = ref["over_folds"]["graph_class_avg"]
        m, s, lo, hi = st["mean"], st["std"], st["ci_low"], st["ci_high"]
        assert f"{100 * m:.2f} ± {100 * s:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]" in report
    assert "ddof=1" in summary["std"] and "95% Student-t" in summary["interval"]
    assert "sample standard deviation (ddof=1)" in report and "95% Student-t" in report
    # --resume: finished folds are skipped (train is never called) ...
    calls: list[str] = []
    real_train = softnce.harness.trainer.train

    def counting_train(cfg, log=None):  # type: ignore[no-untyped-def]
        calls.append(cfg.output_dir)
        return real_train(cfg, log=log)

    monkeypatch.setattr(softnce.harness.trainer, "train", counting_train)
    assert _cv(data_dir, out, "--resume") == 0
    assert calls == [] and capsys.readouterr().out.count("finished, skipped") == 4
    # ... and only the missing one is trained again, with the same numbers as before
    import shutil

    shutil.rmtree(out / "gcn-nll" / "fold1")
    assert _cv(data_dir, out, "--resume") == 0
    assert calls == [str(out / "gcn-nll" / "fold1")]
    again = json.loads((out / "cv_summary.json").read_text())
    assert again["losses"]["gcn-nll"]["over_folds"] == summary["losses"]["gcn-nll"]["over_folds"]


@pytest.mark.parametrize("args, message", [
    (["--data-path", "{missing}"], "is not a directory"),
    (["--losses", "nll,no-such-loss"], "unknown loss 'no-such-loss'"),
    (["--folds", "0,5"], "fold index 5 out of range"),
    (["--folds", "0,x"], "--folds must be"),
    (["--folds", "1,1"], "distinct"),
    (["--model", "gcn", "--config", "celltypegraph/gcn"], "either --config or --model"),
    (["--config", "celltypegraph/gcn-nll", "--losses", "nll"], "is a loss config"),
    (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--set", "dataset_options.bogus=1"], "unknown celltypegraph dataset_options"),
])
def test_cv_bad_input_exits_2(data_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str], args: list[str],
                              message: str) -> None:
    from softnce.cli import main as softnce_main

    argv = ["celltypegraph", "cv", "--data-path", str(data_dir), "--epochs", "1",
            "--set", "model_options.hidden=16", "--set", "max_steps=1",
            "--output-dir", str(tmp_path / "out")]
    argv += [a.replace("{missing}", str(tmp_path / "nowhere")) for a in args]
    assert softnce_main(argv) == 2
    err = capsys.readouterr().err
    assert "softnce celltypegraph cv: error:" in err and message in err, err
    assert "Traceback" not in err


def test_summarize_cv_maps_rows_by_row_ids_not_order(data_dir: Path, tmp_path: Path) -> None:
    """Multi-process evaluation concatenates masked rows by rank: with the saved row_ids the
    scores do not depend on the row order; without them a reordered file is refused."""
    run = tmp_path / "run"
    _run(data_dir, run, loss="nll", model="gcn", model_options={"hidden": 16})
    saved = torch.load(run / "val_logits.pt", weights_only=True)
    assert saved["row_ids"].shape == saved["labels"].shape
    ref = ctg_cv.summarize_cv([run])
    perm = torch.randperm(len(saved["labels"]), generator=torch.Generator().manual_seed(0))
    shuffled = {**saved, **{k: saved[k][perm] for k in ("logits", "labels", "row_ids")}}
    torch.save(shuffled, run / "val_logits.pt")
    res = ctg_cv.summarize_cv([run])
    assert res["folds"][0]["graph_top1"] == ref["folds"][0]["graph_top1"]
    assert res["folds"][0]["graph_class_avg"] == ref["folds"][0]["graph_class_avg"]
    torch.save({k: v for k, v in shuffled.items() if k != "row_ids"}, run / "val_logits.pt")
    with pytest.raises(ValueError, match="rows do not match the annotated nodes"):
        ctg_cv.summarize_cv([run])
    bad = dict(shuffled, row_ids=shuffled["row_ids"] + 1)
    torch.save(bad, run / "val_logits.pt")
    with pytest.raises(ValueError, match="row_ids do not match"):
        ctg_cv.summarize_cv([run])


DDP_CTG_SCRIPT = """
import sys
from softnce.harness.config import load_config
from softnce.harness.trainer import train
data, out = sys.argv[1], sys.argv[2]
train(load_config(dataset="celltypegraph", data_path=data, loss="nll", model="gcn",
                  model_options={"hidden": 16}, epochs=1, max_steps=2, batch_size=1,
                  cpu_threads=1, quiet=True, tensorboard=False, device="cpu",
                  output_dir=out))
# skip interpreter teardown: under load a gloo thread occasionally aborts the exiting process
# ("terminate called without an active exception") after everything was written
import os
sys.stdout.flush(); sys.stderr.flush(); os._exit(0)
"""


def test_two_process_eval_keeps_per_graph_scores(tmp_path: Path) -> None:
    """A 2-process gloo run (the environment torchrun sets) writes rows grouped by rank; the
    saved row_ids let summarize_cv score exactly what one process evaluating the same
    weights scores."""
    import os
    import subprocess
    import sys

    from _helpers import free_port
    from softnce.harness.config import load_config
    from softnce.harness.trainer import Trainer

    data_dir = tmp_path / "data"  # 15 stacks, 3 stages: 3 test graphs, ranks hold 2 and 1
    ctg.make_synthetic(data_dir, num_stacks=15, seed=2, **SMALL)
    script = tmp_path / "job.py"
    script.write_text(DDP_CTG_SCRIPT)
    run = tmp_path / "ddp"
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(data_dir), str(run)],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ddp = torch.load(run / "val_logits.pt", weights_only=True)
    # one process, the same weights: logits in validation order
    t = Trainer(load_config(dataset="celltypegraph", data_path=str(data_dir), loss="nll",
                            model="gcn", model_options={"hidden": 16}, cpu_threads=1,
                            device="cpu", output_dir=str(tmp_path / "single")))
    t._setup_distributed()
    t._build()
    t.model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    t.model.eval()
    parts = []
    with torch.no_grad():
        for batch in ctg.graph_loader(t.bundle.val, batch_size=1):
            m = batch.train_mask
            parts.append((t.model(batch)[m], batch.y[m], ctg.val_row_ids(batch)[m]))
    logits, labels, ids = (torch.cat(z) for z in zip(*parts))
    assert not torch.equal(ddp["row_ids"], ids)  # the rank order differs from validation order
    assert sorted(ddp["row_ids"].tolist()) == sorted(ids.tolist())
    pos = {k: i for i, k in enumerate(ids.tolist())}
    order = torch.tensor([pos[k] for k in ddp["row_ids"].tolist()])
    assert torch.equal(labels[order], ddp["labels"])
    assert torch.allclose(logits[order], ddp["logits"], atol=1e-5)
    res = ctg_cv.summarize_cv([run])  # before this change: refused ("rows do not match")
    single = tmp_path / "single_copy"
    single.mkdir()
    for f in ("config.json", "summary.json"):
        (single / f).write_text((run / f).read_text())
    torch.save({"logits": logits, "labels": labels}, single / "val_logits.pt")  # no row_ids
    ref = ctg_cv.summarize_cv([single])
    for k in ("graph_top1", "graph_class_avg"):
        assert res["folds"][0][k] == pytest.approx(ref["folds"][0][k], abs=1e-12), k


def test_data_package_imports_no_upper_layer() -> None:
    """Layering: the data package (reader, features, generator, bundle) loads no module of
    softnce.harness, softnce.experiments or softnce.cli, not even through softnce.data."""
    import subprocess
    import sys

    code = ("import sys, softnce.data.celltypegraph as c; "
            "assert 'celltypegraph' in __import__('softnce.data', fromlist=['DATASETS']).DATASETS; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['softnce', 'harness'], ['softnce', 'experiments'], ['softnce', 'cli'])))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]", done.stdout
