"""The ``softnce train`` command line: config precedence and clean errors for bad input."""

from __future__ import annotations

import json

import pytest

from softnce.cli import main
from softnce.harness.config import (
    REPO_CONFIG_DIR,
    ConfigError,
    TrainConfig,
    config_keys,
    load_config,
    parse_overrides,
)

FAST = ["--quiet", "--set", "cpu_threads=1"]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_usage_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "softnce train: error:" in err, err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


# ----------------------------------------------------------------------- bad input
def test_missing_dataset(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--output-dir", str(tmp_path / "x"), *FAST], capsys)
    assert_usage_error(rc, err, "missing dataset", "digits", "synthetic")


def test_unknown_dataset_lists_choices(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--dataset", "digitz", *FAST], capsys)
    assert_usage_error(rc, err, "unknown dataset 'digitz'", "valid choices", "digits, ")


def test_data_path_that_does_not_exist(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--dataset", "tabular", "--data-path",
                          str(tmp_path / "nope"), *FAST], capsys)
    assert_usage_error(rc, err, "does not exist", "nope")


def test_tabular_without_files_is_a_clean_error(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--dataset", "tabular", "--data-path", str(tmp_path),
                          "--output-dir", str(tmp_path / "o"), *FAST], capsys)
    assert_usage_error(rc, err, "train.npz")


@pytest.mark.parametrize("train_csv,needle", [
    ("f1,f2,label\n", "has no data rows"),
    ("1,2,0\n3,4\n", "every row must have 3 columns; data row 2 has 2"),
])
def test_tabular_malformed_csv_is_a_clean_error(tmp_path, capsys, train_csv, needle):
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.csv").write_text(train_csv)
    (root / "val.csv").write_text("1,2,0\n")
    rc, _, err = run_cli(["train", "--dataset", "tabular", "--data-path", str(root),
                          "--output-dir", str(tmp_path / "o"), *FAST], capsys)
    assert_usage_error(rc, err, "train.csv", needle)


@pytest.mark.parametrize("flag,value,needle", [
    ("--batch-size", "0", "batch_size must be >= 1; found 0"),
    ("--lr", "-1", "lr must be a finite number >= 0; found -1.0"),
    ("--epochs", "0", "epochs must be >= 1"),
    ("--temperature", "0", "temperature must be a finite number > 0"),
])
def test_bad_numbers(tmp_path, capsys, flag, value, needle):
    rc, _, err = run_cli(["train", "--dataset", "digits", flag, value, *FAST], capsys)
    assert_usage_error(rc, err, needle)


def test_unknown_config_key_lists_valid_keys(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nlrr: 0.1\n")
    rc, _, err = run_cli(["train", "--config", str(cfg), *FAST], capsys)
    assert_usage_error(rc, err, "unknown config key 'lrr'", "valid keys:", "batch_size",
                       "weight_decay")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--set", "bogus=1", *FAST], capsys)
    assert_usage_error(rc, err, "unknown config key 'bogus'", "valid keys:")


def test_unknown_values_and_options_fail_at_once(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--dataset", "digits", "--loss", "hinge", *FAST], capsys)
    assert_usage_error(rc, err, "unknown loss 'hinge'", "soft-infonce")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--set", "amp=fp8", *FAST], capsys)
    assert_usage_error(rc, err, "amp must be one of auto, bf16, fp16, off")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--model", "no-such-net", *FAST],
                         capsys)
    assert_usage_error(rc, err, "unknown model 'no-such-net'", "mlp")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--set", "augment.bogus=1", *FAST],
                         capsys)
    assert_usage_error(rc, err, "unknown augment option", "reprob")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--output-dir", str(tmp_path / "o"),
                          "--set", "dataset_options.nope=1", *FAST], capsys)
    assert_usage_error(rc, err, "unknown dataset_options 'nope'", "calibration_fraction")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--output-dir", str(tmp_path / "m"),
                          "--set", "model_options.width=3", *FAST], capsys)
    assert_usage_error(rc, err, "unknown model_options 'width'", "hidden")


def test_unknown_optimizer_is_a_usage_error(tmp_path, capsys):
    rc, _, err = run_cli(["train", "--dataset", "digits", "--set", "optimizer=adamz",
                          "--output-dir", str(tmp_path / "o"), *FAST], capsys)
    assert_usage_error(rc, err, "optimizer 'adamz'")


def test_incompatible_combinations(capsys):
    rc, _, err = run_cli(["train", "--dataset", "digits", "--loss", "nll", "--set",
                          "mixup=0.2", *FAST], capsys)
    assert_usage_error(rc, err, "trains on hard labels", "mixup")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--loss", "soft-ce", "--negatives",
                          "queue", *FAST], capsys)
    assert_usage_error(rc, err, "only applies to the InfoNCE losses")


def test_output_dir_with_a_different_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--dataset", "digits", "--max-steps", "2", "--output-dir", out, *FAST]
    assert run_cli(base, capsys)[0] == 0
    rc, _, err = run_cli([*base, "--lr", "0.5"], capsys)
    assert_usage_error(rc, err, "already holds a different run", "lr")
    rc, _, err = run_cli([*base, "--lr", "0.5", "--resume"], capsys)
    assert_usage_error(rc, err, "already holds a different run")
    # the same config again: refused without an explicit --resume or --overwrite
    rc, _, err = run_cli(base, capsys)
    assert_usage_error(rc, err, "already holds a finished run", "--resume", "--overwrite")
    assert run_cli([*base, "--resume"], capsys)[0] == 0
    assert run_cli([*base, "--overwrite"], capsys)[0] == 0
    rc, _, err = run_cli([*base, "--overwrite", "--resume"], capsys)
    assert_usage_error(rc, err, "contradict")


def test_output_dir_that_cannot_be_created(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    rc, _, err = run_cli(["train", "--dataset", "digits", "--max-steps", "1", "--output-dir",
                          str(blocker / "run"), *FAST], capsys)
    assert_usage_error(rc, err, "cannot create output directory", "a-file")


# ---------------------------------------------------------------- config precedence
def test_config_file_is_overridden_by_set_and_flags(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: digits\nepochs: 7\nlr: 1e-2\nbatch_size: 16\nseed: 3\n"
                   "dataset_options: {calibration_fraction: 0.25}\n")
    c = load_config(cfg, ["batch_size=32", "dataset_options.split_seed=1"], epochs=2)
    assert (c.epochs, c.lr, c.batch_size, c.seed) == (2, 0.01, 32, 3)
    assert c.dataset_options == {"calibration_fraction": 0.25, "split_seed": 1}
    # the same through the command line, checked in the saved config
    out = tmp_path / "run"
    rc, _, _ = run_cli(["train", "--config", str(cfg), "--epochs", "1", "--max-steps", "2",
                        "--set", "batch_size=32", "--output-dir", str(out), *FAST], capsys)
    assert rc == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["epochs"], saved["lr"], saved["batch_size"], saved["seed"]) == (1, 0.01, 32, 3)


def test_yaml_base_chain_and_repo_presets(tmp_path):
    (tmp_path / "a.yaml").write_text("dataset: digits\nepochs: 5\nmodel_options: {hidden: [8]}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nepochs: 6\nmodel_options: {dropout: 0.0}\n")
    c = load_config(tmp_path / "b.yaml")
    assert c.epochs == 6 and c.model_options == {"hidden": [8], "dropout": 0.0}
    presets = sorted(p for p in REPO_CONFIG_DIR.glob("*.yaml") if not p.name.startswith("compare"))
    assert presets, REPO_CONFIG_DIR
    for p in presets:
        assert isinstance(load_config(p), TrainConfig)
    assert load_config("digits-nll").loss == "nll"  # preset name lookup
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-preset")


def test_values_are_coerced_and_checked():
    c = load_config(dataset="digits", lr="1e-3", epochs=3.0)
    assert c.lr == 1e-3 and c.epochs == 3
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        load_config(dataset="digits", epochs=2.5)
    assert parse_overrides(["ema=null", "augment.aa=rand-m9"]) == {"ema": None,
                                                                    "augment": {"aa": "rand-m9"}}
    assert "dataset_options" in config_keys() and "layer_decay" in config_keys()
    with pytest.raises(ConfigError, match="not a dict field"):
        parse_overrides(["lr.x=1"])


def test_train_prints_summary_table(tmp_path, capsys):
    rc, out, _ = run_cli(["train", "--dataset", "digits", "--max-steps", "3", "--set",
                          "cpu_threads=1", "--output-dir", str(tmp_path / "r")], capsys)
    assert rc == 0 and "top-1" in out and "final" in out


def test_help_lists_registered_names(capsys):
    rc, out, _ = run_cli(["train", "--help"], capsys)
    assert rc == 0 and "soft-infonce" in out and "--max-steps" in out and "digits" in out



def test_plugin_subcommands_are_wired_into_softnce(capsys):
    """`softnce toy` and `softnce celltypegraph` come from cli_*.py plug-ins; a bad argument
    reaches their own parsers (exit 2), so the commands exist and parse."""
    from softnce.cli import build_parser

    _, commands = build_parser()
    assert {"train", "compare", "toy", "celltypegraph"} <= set(commands)
    for argv in (["toy", "--dgp", "no-such-dgp"], ["celltypegraph", "no-such-command"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
