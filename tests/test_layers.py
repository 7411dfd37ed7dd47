"""The package's layers import only downward: each import runs in a fresh interpreter and
``sys.modules`` afterwards shows what it loaded (lazy imports included, because the checks also
exercise the code paths that import lazily)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("timm", "torchvision", "matplotlib", "sklearn", "torch_geometric", "h5py", "yaml",
         "rich", "scipy", "mnist1d")
UPPER = {
    "library": ("softnce.metrics", "softnce.data", "softnce.models", "softnce.harness",
                "softnce.experiments", "softnce.cli"),
    "metrics": ("softnce.data", "softnce.models", "softnce.harness", "softnce.experiments",
                "softnce.cli"),
    "data": ("softnce.harness", "softnce.experiments", "softnce.cli"),
    "harness": ("softnce.experiments", "softnce.cli"),
}


def _loaded(code: str) -> list[str]:
    probe = code + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _offenders(mods: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in mods if any(m == p or m.startswith(p + ".") for p in prefixes)]


@pytest.mark.parametrize("code, layer", [
    ("import softnce", "library"),
    ("import softnce.embedded", "library"),
    ("import torch, softnce\n"
     "softnce.soft_target_infonce(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))", "library"),
    ("import softnce.calibration", "metrics"),  # the old name re-exports softnce.metrics
])
def test_library_loads_no_heavy_dependency_and_no_upper_layer(code, layer):
    mods = _loaded(code)
    assert not _offenders(mods, HEAVY), _offenders(mods, HEAVY)
    assert not _offenders(mods, UPPER[layer]), _offenders(mods, UPPER[layer])


def test_metrics_loads_only_the_library():
    mods = _loaded("import torch, softnce.metrics as m\n"
                   "m.expected_calibration_error(torch.softmax(torch.randn(8, 3), 1),"
                   " torch.randint(0, 3, (8,)))\n"
                   "m.TemperatureScaler().fit(torch.randn(8, 3), torch.randint(0, 3, (8,)))\n"
                   "import softnce.metrics.stats as s; s.summarize([1.0, 2.0])")
    assert not _offenders(mods, HEAVY), _offenders(mods, HEAVY)
    assert not _offenders(mods, UPPER["metrics"])


def test_data_and_config_validation_load_no_runner_or_experiment():
    mods = _loaded("import softnce.data\n"
                   "from softnce.harness.config import TrainConfig\n"
                   "TrainConfig(dataset='digits').validate()")
    bad = _offenders(mods, UPPER["harness"]) + _offenders(mods, ("softnce.harness.trainer",))
    assert not bad, bad
    assert not _offenders(mods, ("timm", "torchvision", "torch_geometric", "h5py", "matplotlib"))


def test_data_layer_imports_nothing_above_it():
    mods = _loaded("import softnce.data, softnce.models\n"
                   "from softnce.data import DATASETS\n"
                   "print(DATASETS.names())")
    assert not _offenders(mods, UPPER["data"]), _offenders(mods, UPPER["data"])


def test_cli_help_loads_no_heavy_package():
    mods = _loaded("from softnce.cli import build_parser\nbuild_parser()")
    assert not _offenders(mods, ("timm", "torchvision", "torch_geometric", "h5py",
                                 "matplotlib", "sklearn")), mods


def test_no_module_over_the_size_limit():
    from pathlib import Path

    import softnce

    root = Path(softnce.__file__).parent
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines())
             for p in root.rglob("*.py")}
    assert {k: v for k, v in sizes.items() if v > 600} == {}


def test_missing_optional_dependency_names_the_extra(tmp_path):
    """A missing extra is a usage error naming what to install, not an ImportError traceback."""
    code = ("import sys; sys.modules['yaml'] = None\n"
            "from softnce.cli import main\n"
            f"sys.exit(main(['train', '--config', 'digits-soft-infonce', '--output-dir', "
            f"{str(tmp_path / 'r')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert "pip install 'softnce[train]'" in out.stderr and "Traceback" not in out.stderr
    from softnce._optional import MissingDependencyError, require

    with pytest.raises(MissingDependencyError, match=r"softnce\[graph\]"):
        require("no_such_module_for_softnce", "graph", "the test")



@pytest.mark.parametrize("module,blocked,extra", [
    ("softnce.metrics.torchmetric", "torchmetrics", "loops"),
    ("softnce.data.mixup", "timm", "images"),
])
def test_optional_adapters_name_their_extra(module, blocked, extra):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from softnce._optional import MissingDependencyError\n"
            "try:\n"
            f"    import {module}\n"
            "except MissingDependencyError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"pip install 'softnce[{extra}]'" in out.stdout

def test_main_job_needs_only_the_train_extra(tmp_path):
    """`pip install -e '.[train]' && softnce compare` (the README's main job): the packages of
    the other extras are made unimportable and the compare still runs."""
    code = ("import sys\n"
            "for m in ('timm', 'torchvision', 'torch_geometric', 'h5py', 'torchmetrics'):\n"
            "    sys.modules[m] = None\n"
            "from softnce.cli import main\n"
            f"sys.exit(main(['compare', '--quick', '--quiet', '--output-dir', "
            f"{str(tmp_path / 'cmp')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "cmp" / "report.md").is_file()
