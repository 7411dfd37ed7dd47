"""Using a trained run: evaluate a split, calibrate a temperature, predict new inputs.

The logic behind ``softnce evaluate`` / ``calibrate`` / ``predict`` on top of
:func:`softnce.harness.runs.load_run`. Temperature scaling is only ever fitted on the
calibration split; the test split is only scored.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from softnce.harness.evaluation import metrics_from_logits
from softnce.harness.runs import LoadedRun, RunError, image_transform, split_logits

__all__ = ["TABLE_METRICS", "calibrate_run", "evaluate_run", "fit_temperature", "load_inputs",
           "metric_table", "write_predictions", "dump_json"]

TABLE_METRICS = ("top1", "top5", "nll", "ece", "mce", "ace", "brier")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def fit_temperature(run: LoadedRun, cal_logits: torch.Tensor, cal_labels: torch.Tensor) -> float:
    """The factor ``t`` of temperature scaling fitted on the calibration split (predictions
    ``softmax(z / (run_temperature * t))``)."""
    from softnce.metrics import TemperatureScaler

    scaler = TemperatureScaler().fit(cal_logits.double() / run.run_temperature, cal_labels)
    return float(scaler.temperature)


def _metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, float]:
    return {k: float(v) for k, v in metrics_from_logits(logits, labels, temperature).items()}


def evaluate_run(run: LoadedRun, bundle: Any, split: str, plot: str | Path | None = None
                 ) -> dict[str, Any]:
    """Metrics on ``split`` raw (the run's temperature) and, when the data set has a
    calibration split, after temperature scaling fitted on the calibration split only."""
    logits, labels = split_logits(run, bundle, split)
    t_run = run.run_temperature
    out: dict[str, Any] = {
        "run_dir": str(run.run_dir), "checkpoint": run.checkpoint,
        "weights_file": run.weights_file, "dataset": run.config.dataset, "split": split,
        "n": len(labels), "temperature": t_run, "raw": _metrics(logits, labels, t_run),
    }
    probs = {"raw": (F.softmax(logits.double() / t_run, 1), labels)}
    if bundle.val is not None and len(bundle.val) > 0:
        if split in ("calibration", "val"):
            cal_logits, cal_labels = logits, labels
        else:
            cal_logits, cal_labels = split_logits(run, bundle, "calibration")
        factor = fit_temperature(run, cal_logits, cal_labels)
        t_ts = t_run * factor
        out["temperature_ts"] = factor
        out["temperature_calibrated"] = t_ts
        out["ts"] = _metrics(logits, labels, t_ts)
        out["ts_protocol"] = ("temperature fitted on the calibration split only "
                              f"({len(cal_labels)} samples); predictions softmax(z / "
                              "(temperature * temperature_ts))"
                              + ("; in-sample: this IS the calibration split"
                                 if split in ("calibration", "val") else ""))
        probs["temperature-scaled"] = (F.softmax(logits.double() / t_ts, 1), labels)
    if plot is not None:
        from softnce.metrics import plot_reliability_diagram

        plot_reliability_diagram(probs, plot, title=f"{run.run_dir.name}: {split} "
                                                    f"({run.checkpoint})")
        out["reliability_diagram"] = str(plot)
    return out


def calibrate_run(run: LoadedRun, bundle: Any) -> dict[str, Any]:
    """Fit the temperature on the calibration split (never the test split); report NLL / ECE
    before and after on calibration and (scored only) test. Returns the calibration entry."""
    cal_logits, cal_labels = split_logits(run, bundle, "calibration")
    factor = fit_temperature(run, cal_logits, cal_labels)
    t_run = run.run_temperature
    t_cal = t_run * factor
    entry: dict[str, Any] = {
        "temperature": t_cal, "factor": factor, "run_temperature": t_run,
        "fitted_on": "calibration", "n_calibration": len(cal_labels),
        "checkpoint": run.checkpoint, "weights_file": run.weights_file,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "calibration": {"before": _metrics(cal_logits, cal_labels, t_run),
                        "after": _metrics(cal_logits, cal_labels, t_cal)},
    }
    if bundle.test is not None and len(bundle.test) > 0:
        test_logits, test_labels = split_logits(run, bundle, "test")
        entry["test"] = {"before": _metrics(test_logits, test_labels, t_run),
                         "after": _metrics(test_logits, test_labels, t_cal)}
    return entry


def metric_table(rows: dict[str, dict[str, float]]) -> str:
    """A plain-text table ``row name x TABLE_METRICS``."""
    keys = [k for k in TABLE_METRICS if any(k in r for r in rows.values())]
    width = max([len(n) for n in rows] + [6])
    lines = [" " * width + "".join(f"{k:>9}" for k in keys)]
    for name, r in rows.items():
        lines.append(f"{name:<{width}}" + "".join(
            f"{r[k]:>9.4f}" if k in r else f"{'':>9}" for k in keys))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- predict inputs
def _read_csv(path: Path) -> np.ndarray:
    with open(path, newline="") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows:
        raise RunError(f"{path} is empty")
    try:
        [float(v) for v in rows[0]]
    except ValueError:
        rows = rows[1:]  # a header
    if not rows:
        raise RunError(f"{path} has no data rows")
    n = len(rows[0])
    bad = next((i for i, r in enumerate(rows) if len(r) != n), None)
    if bad is not None:
        raise RunError(f"{path}: every row must have {n} columns; data row {bad + 1} has "
                       f"{len(rows[bad])}")
    try:
        return np.asarray([[float(v) for v in r] for r in rows], dtype=np.float32)
    except ValueError as e:
        raise RunError(f"{path}: all columns must be numeric ({e})") from e


def load_inputs(run: LoadedRun, spec: str, data_path: str | None = None
                ) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
    """``(logits, row ids, labels or None)`` for ``spec``: ``split:test`` /
    ``split:calibration`` of the run's data set, a tabular ``.npz`` (array ``x``) / ``.csv``
    (features only; a header line is skipped) of raw features, or a folder of images."""
    if spec.startswith("split:"):
        split = spec[len("split:"):]
        if split not in ("test", "calibration", "val"):
            raise RunError(f"INPUT split:{split}: expected split:test or split:calibration")
        bundle = run.build_data(data_path)
        logits, labels = split_logits(run, bundle, split)
        return logits, [f"{split}:{i}" for i in range(len(labels))], labels
    path = Path(spec)
    if not path.exists():
        raise RunError(f"INPUT {spec}: no such file or folder (or use split:test / "
                       "split:calibration)")
    if path.is_dir():
        return _image_folder(run, path)
    if path.suffix.lower() in (".npz", ".csv") and run.kind != "tabular":
        raise RunError(f"INPUT {spec}: feature files need a tabular run; this is a {run.kind} "
                       "run")
    if path.suffix.lower() == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if "x" not in f:
                    raise RunError(f"{path} must hold an array 'x'; found {sorted(f.files)}")
                x = np.asarray(f["x"], dtype=np.float32)
        except (OSError, ValueError) as e:
            if isinstance(e, RunError):
                raise
            raise RunError(f"cannot read {path} as .npz: {e}") from e
    elif path.suffix.lower() == ".csv":
        x = _read_csv(path)
    else:
        raise RunError(f"INPUT {spec}: expected a .npz / .csv file, a folder of images, or "
                       "split:test / split:calibration")
    if x.ndim != 2:
        raise RunError(f"{path}: expected a 2-d array of rows x features; found shape "
                       f"{tuple(x.shape)}")
    return run.logits(x), [str(i) for i in range(len(x))], None


def _image_folder(run: LoadedRun, folder: Path) -> tuple[torch.Tensor, list[str], None]:
    if run.kind != "image":
        raise RunError(f"INPUT {folder} is a folder (of images); this is a {run.kind} run "
                       "(give a .npz / .csv of features or split:test)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RunError(f"INPUT {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    from PIL import Image

    tf = image_transform(run)
    out = []
    for i in range(0, len(files), 64):
        batch = []
        for p in files[i:i + 64]:
            try:
                with Image.open(p) as im:
                    batch.append(tf(im.convert("RGB")))
            except OSError as e:
                raise RunError(f"cannot read image {p}: {e}") from e
        out.append(run.logits(torch.stack(batch), preprocessed=True))
    return torch.cat(out), [str(p.relative_to(folder)) for p in files], None


def write_predictions(path: Path, run: LoadedRun, logits: torch.Tensor, ids: list[str],
                      labels: torch.Tensor | None, topk: int) -> dict[str, Any]:
    """CSV with one row per input: id, (label), top-k class ids, names and probabilities
    ``softmax(z / run.temperature)`` (calibrated when ``calibration.json`` has this checkpoint)."""
    from softnce.harness.state import _atomic_write_text

    probs = F.softmax(logits.double() / run.temperature, 1)
    k = min(topk, probs.shape[1])
    p, idx = probs.topk(k, dim=1)
    names = run.class_names
    header = ["id"] + (["label", "label_name"] if labels is not None else [])
    for j in range(1, k + 1):
        header += [f"top{j}", f"top{j}_name", f"top{j}_prob"]
    lines = [header]
    for r in range(len(ids)):
        row = [ids[r]]
        if labels is not None:
            row += [str(int(labels[r])), names[int(labels[r])]]
        for j in range(k):
            c = int(idx[r, j])
            row += [str(c), names[c], f"{float(p[r, j]):.6f}"]
        lines.append(row)
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(lines)
    _atomic_write_text(path, buf.getvalue())
    info = {"n": len(ids), "topk": k, "temperature": run.temperature,
            "calibrated": run.calibration is not None}
    if labels is not None and len(labels):
        info["top1"] = float((idx[:, 0] == labels).double().mean())
    return info


def dump_json(path: Path, obj: Any) -> None:
    from softnce.harness.state import _atomic_write_text

    _atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
