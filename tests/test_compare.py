"""``softnce compare``: a short run writes a report whose files exist and parse."""

from __future__ import annotations

import copy
import json

import pytest

from softnce.cli import main
from softnce.experiments.compare import (
    COMPARE_PRESETS,
    PAPER_LOSSES,
    register_compare_preset,
    resolve_runs,
)
from softnce.harness.config import REPO_CONFIG_DIR, ConfigError


def test_compare_quick_writes_report_files(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--epochs", "1", "--seeds", "2", "--output-dir", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    for name in PAPER_LOSSES:
        assert name in stdout
    assert "top-1" in stdout and "ECE" in stdout and "±" in stdout

    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["seeds"] == [0, 1]
    assert summary["split"] == "test" and summary["reference"] == "soft-ce"
    assert {(p["config"], p["metric"]) for p in summary["paired"]} >= {
        ("soft-infonce", "ece"), ("soft-infonce", "ece_ts"), ("nll", "top1")}
    assert all(p["verdict"] in ("holds", "does not hold", "inconclusive")
               for p in summary["paired"])
    assert list(summary["losses"]) == list(PAPER_LOSSES)
    for name, s in summary["losses"].items():
        for m in ("top1", "ece", "nll", "brier"):
            assert m in s["mean"] and m in s["std"]
        assert len(s["runs"]) == 2 and s["n_seeds"] == 2
        tops = [r["test"]["top1"] for r in s["runs"]]  # the held-out test split
        assert s["mean"]["top1"] == pytest.approx(sum(tops) / 2)
        assert "ece_ts" in s["mean"] and "temperature_ts" in s["mean"] and len(s["ci"]["ece"]) == 2
        assert s["mean"]["top1"] > 0.5, name  # one epoch already far above chance (0.1)
    report = (out / "report.md").read_text()
    assert report.startswith("# softnce compare: digits")
    assert "| soft-infonce |" in report and "reliability.png" in report
    assert "softnce compare --epochs 1 --seeds 2" in report
    from matplotlib.image import imread

    for png in ("reliability.png", "curves.png"):
        img = imread(out / png)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 400

    # the run settings follow the paper's four configurations
    cfg = json.loads((out / "runs" / "soft-infonce" / "seed1" / "config.json").read_text())
    assert (cfg["loss"], cfg["smoothing"], cfg["mixup"], cfg["noise"], cfg["seed"]) == \
        ("soft-infonce", 0.1, 0.2, "prior", 1)
    nll = json.loads((out / "runs" / "nll" / "seed0" / "config.json").read_text())
    assert (nll["smoothing"], nll["mixup"]) == (0.0, 0.0)

    # rerunning into the same directory works; a foreign non-empty directory is refused
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        main(["compare", "--quick", "--output-dir", str(foreign)])
    assert e.value.code == 2 and "holds no compare run" in capsys.readouterr().err


def test_compare_output_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    with pytest.raises(SystemExit) as e:
        main(["compare", "--quick", "--output-dir", str(blocker)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "is a file" in err and "Traceback" not in err


@pytest.mark.parametrize("seeds", [",", "0,0"])
def test_compare_seed_list_must_be_distinct_and_non_empty(tmp_path, capsys, seeds):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--quick", "--seeds", seeds, "--output-dir", str(tmp_path / "c")])
    assert e.value.code == 2 and "distinct seeds" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_compare_resume_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--quick", "--losses", "nll", "--output-dir", str(out), "--quiet",
            "--max-steps", "3"]
    assert main(args) == 0
    ck = out / "runs" / "nll" / "seed0" / "checkpoint.pt"
    mtime = ck.stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    assert ck.stat().st_mtime_ns == mtime  # finished run not retrained


def test_resolve_runs_precedence_and_presets(tmp_path):
    f = tmp_path / "cmp.yaml"
    f.write_text("base: {epochs: 4, lr: 0.01}\nlosses:\n  soft-ce: {mixup: 0.5}\n"
                 "  soft-ce-t2: {loss: soft-ce, temperature: 2.0, smoothing: 0.1}\n")
    runs = resolve_runs("digits", ["soft-ce", "soft-ce-t2"], [0, 1], str(f), {"lr": 0.02},
                        tmp_path / "o")
    assert len(runs) == 4
    by = {(n, s): c for n, s, c in runs}
    assert by[("soft-ce", 0)].epochs == 4 and by[("soft-ce", 0)].lr == 0.02
    assert by[("soft-ce", 1)].mixup == 0.5 and by[("soft-ce", 1)].smoothing == 0.1
    assert by[("soft-ce-t2", 0)].temperature == 2.0
    assert by[("soft-ce", 1)].output_dir.endswith("runs/soft-ce/seed1")
    with pytest.raises(ConfigError, match="unknown compare loss"):
        resolve_runs("digits", ["hinge"])
    # a registered preset is used for its data set
    saved = copy.deepcopy(COMPARE_PRESETS["synthetic"])
    register_compare_preset("synthetic", {"epochs": 3, "batch_size": 32})
    try:
        (_, _, c), *_ = resolve_runs("synthetic", ["nll"], [0])
        assert (c.epochs, c.batch_size, c.dataset) == (3, 32, "synthetic")
    finally:
        COMPARE_PRESETS["synthetic"] = saved


def test_builtin_compare_presets_are_the_package_yaml_files(tmp_path):
    """One home per recipe: every compare preset is a YAML file shipped in the package, and the
    paper / CellTypeGraph presets point at the train presets instead of copying them."""
    from softnce.harness.config import load_yaml

    files = sorted((REPO_CONFIG_DIR / "compare").glob("*.yaml"))
    assert {f.stem for f in files} >= {"default", "digits", "mnist1d", "synthetic", "imagenet",
                                       "tiny-imagenet", "cifar100", "celltypegraph"}
    digits = resolve_runs("digits", None, [0], None, None, tmp_path)
    from_file = resolve_runs(None, None, [0], str(REPO_CONFIG_DIR / "compare" / "digits.yaml"),
                             None, tmp_path)
    assert [c.to_dict() for *_, c in from_file] == [c.to_dict() for *_, c in digits]
    for ds in ("imagenet", "tiny-imagenet", "cifar100"):
        runs = {n: c for n, _, c in resolve_runs(ds, None, [0], None, None, tmp_path)}
        for loss, cfg in runs.items():
            recipe = load_yaml(f"paper/{ds}-{loss}")
            assert cfg.loss == recipe["loss"] and cfg.lr == recipe["lr"], (ds, loss)
            assert cfg.mixup == recipe.get("mixup", 0.0) and cfg.dataset == ds
    # a data set without a preset of its own gets compare/default.yaml
    other = resolve_runs("cifar10", ["nll"], [0], None, None, tmp_path)
    assert other[0][2].epochs == load_yaml("compare/default")["base"]["epochs"]
