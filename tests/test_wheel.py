"""The package as ``pip install softnce`` gets it: build the wheel, install it (no network: no
dependencies, they come from this environment) into a scratch folder, and run the presets from a
folder outside the repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("softnce-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for preset in ("softnce/configs/digits-soft-infonce.yaml",
                   "softnce/configs/celltypegraph/gcn.yaml",
                   "softnce/configs/paper/imagenet-soft-infonce.yaml",
                   "softnce/configs/compare/digits.yaml",
                   "softnce/resources/celltypegraph_stacks.csv"):
        assert preset in names, preset
    target = tmp_path_factory.mktemp("site")
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr
    return target


def _softnce(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "softnce", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_wheel_runs_presets_outside_the_repository(installed: Path, tmp_path: Path) -> None:
    where = subprocess.run([sys.executable, "-c", "import softnce; print(softnce.__file__)"],
                           cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(installed)),
                           capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(installed)), where.stdout  # the wheel, not src/
    r = _softnce(installed, tmp_path, "train", "--config", "digits-soft-infonce", "--epochs", "1",
                 "--output-dir", "run", "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["complete"] and summary["loss"] == "soft-infonce"

    data = tmp_path / "ctg"
    r = _softnce(installed, tmp_path, "celltypegraph", "make-synthetic", str(data),
                 "--stacks", "9")
    assert r.returncode == 0, r.stderr
    r = _softnce(installed, tmp_path, "celltypegraph", "cv", "--data-path", str(data),
                 "--losses", "nll,soft-infonce", "--folds", "0", "--epochs", "1",
                 "--set", "model_options.hidden=16", "--set", "max_steps=2",
                 "--output-dir", "cv")
    assert r.returncode == 0, r.stderr
    assert any((tmp_path / "cv").rglob("summary.json"))
