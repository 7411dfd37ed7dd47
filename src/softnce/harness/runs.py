"""Runs you can use: load a finished run directory for prediction, evaluation, calibration.

A run directory written by :class:`~softnce.harness.trainer.Trainer` describes itself:

* ``config.json`` - the resolved :class:`~softnce.harness.config.TrainConfig`;
* ``model.json`` - what prediction needs without the data set: the model name and the config
  keys its factory reads, the bundle facts (``kind``, ``num_classes``, ``input_shape``, small
  ``extra`` entries), the preprocessing (tabular: the training split's ``mean``/``std``; images:
  ``mean``/``std``/``input_size``/``crop_pct``/``interpolation``), the class names, the run's
  softmax temperature, whether EMA weights are used;
* ``best.pt`` - weights only (the EMA weights when EMA is on) of the best evaluation by
  :data:`BEST_METRIC`; ``checkpoint.pt`` - the last full training checkpoint;
* ``calibration.json`` (after ``softnce calibrate``) - a temperature fitted on the calibration
  split, per checkpoint.

:func:`load_run` reads them back with ``torch.load(..., weights_only=True)`` only: a file whose
pickle carries code is refused with a :class:`RunError` (a ``ValueError``) before anything runs.
Runs written before ``model.json`` existed are still loadable (the bundle facts are then read
from the rebuilt data set).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from softnce.harness.config import ConfigError, TrainConfig

__all__ = ["BEST_METRIC", "LoadedRun", "RunError", "load_run", "model_info", "write_model_info",
           "best_weights", "write_best_weights", "read_calibration", "write_calibration"]

MODEL_FILE = "model.json"
BEST_FILE = "best.pt"
LAST_FILE = "checkpoint.pt"
CALIBRATION_FILE = "calibration.json"
CHECKPOINTS = ("best", "last")
#: How ``best.pt`` is chosen (also written to ``summary.json`` as ``best_metric``).
BEST_METRIC = ("highest top-1 accuracy on the calibration split, ties broken by the lower NLL "
               "(evaluated every eval_every epochs; EMA weights when EMA is used)")
_EXTRA_MAX = 4096  # numbers per ``extra`` entry kept in model.json


class RunError(ValueError):
    """A run directory that cannot be used (not a finished run, unsafe or missing checkpoint,
    data that does not match the run). The CLI reports it as ``error: ...`` (exit 2)."""


# ------------------------------------------------------------------------------- writing
def _jsonable(v: Any) -> Any:
    """``v`` as JSON (tensors / arrays / tuples -> lists), or ``None`` when it is not small."""
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().tolist() if v.numel() <= _EXTRA_MAX else None
    if hasattr(v, "tolist") and hasattr(v, "size") and not isinstance(v, (str, bytes)):
        return v.tolist() if int(v.size) <= _EXTRA_MAX else None  # numpy
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        out = [_jsonable(x) for x in v]
        return out if len(out) <= _EXTRA_MAX and all(
            x is not None or y is None for x, y in zip(out, v)) else None
    return None


def _preprocessing(bundle: Any, cfg: TrainConfig) -> dict[str, Any]:
    extra = bundle.extra if isinstance(bundle.extra, dict) else {}
    if bundle.kind == "tabular" and extra.get("mean") is not None:
        return {"type": "standardize", "mean": _jsonable(extra["mean"]),
                "std": _jsonable(extra["std"]),
                "note": "x -> (x - mean) / std with the training split's statistics, x as the "
                        "data set's loader reads it (digits: pixel / 16)"}
    if bundle.kind == "image":
        aug = cfg.augment_options() if hasattr(cfg, "augment_options") else {}
        return {"type": "image", "mean": _jsonable(extra.get("mean")),
                "std": _jsonable(extra.get("std")),
                "input_size": extra.get("input_size", cfg.input_size),
                "crop_pct": aug.get("crop_pct"),
                "interpolation": aug.get("interpolation") or "bicubic"}
    return {"type": "none"}


def model_info(trainer: Any) -> dict[str, Any]:
    """The ``model.json`` of a trainer after ``_build`` (pure function of its state)."""
    cfg, b = trainer.cfg, trainer.bundle
    extra = {k: j for k, v in (b.extra or {}).items()
             if isinstance(k, str) and (j := _jsonable(v)) is not None}
    return {
        "format": 1,
        "model": trainer.model_name,
        "model_config": {k: getattr(cfg, k) for k in
                         ("model", "head", "model_options", "input_size", "drop_path",
                          "num_classes")},
        "num_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "dataset": {"name": b.name, "kind": b.kind, "num_classes": int(b.num_classes),
                    "input_shape": [int(s) for s in b.input_shape], "extra": extra,
                    "default_model": b.default_model},
        "class_names": list(b.class_names) if b.class_names is not None else None,
        "preprocessing": _preprocessing(b, cfg),
        "temperature": float(cfg.temperature),
        "ema": cfg.ema is not None,
        "best_checkpoint": BEST_FILE,
        "best_metric": BEST_METRIC,
        "last_checkpoint": LAST_FILE,
    }


def write_model_info(trainer: Any, fresh: bool) -> None:
    """Rank 0 at run start: write ``model.json``; a fresh run also drops a stale
    ``best.pt`` (and its checksum) / ``calibration.json`` left by an earlier attempt in the
    same directory."""
    from softnce.harness.state import _atomic_write_text

    out = Path(trainer.out)
    if fresh:
        for name in (BEST_FILE, BEST_FILE + ".sha256", CALIBRATION_FILE):
            (out / name).unlink(missing_ok=True)
    _atomic_write_text(out / MODEL_FILE, json.dumps(model_info(trainer), indent=2) + "\n")


def best_weights(trainer: Any, rec: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``best.pt`` for the evaluation ``rec``: a CPU copy of the evaluated
    weights (EMA when used) and the record that made them best. Taken at the evaluation (the
    weights change with the next step); written by :func:`write_best_weights`."""
    model = trainer.ema.module if getattr(trainer, "ema", None) is not None else trainer.model
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = {k: float(v) for k, v in rec.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"format": 1, "model": state, "ema": getattr(trainer, "ema", None) is not None,
            "record": meta, "best_metric": BEST_METRIC}


def write_best_weights(out: str | Path, payload: Mapping[str, Any]) -> None:
    """``best.pt`` (atomic, checksummed) from :func:`best_weights`."""
    from softnce.harness.state import atomic_save

    atomic_save(dict(payload), Path(out) / BEST_FILE)


# ------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"cannot read {path}: {e}") from e


def safe_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``; a pickle carrying code -> :class:`RunError`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        last = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise RunError(
            f"refusing to load {path}: it is not a weights-only checkpoint (its pickle "
            f"references Python objects beyond tensors and plain containers, which would run "
            f"code when unpickled). softnce only loads weights-only files; nothing from it was "
            f"executed. (torch said: {last})") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise RunError(f"cannot read {path} as a PyTorch checkpoint: {e}") from e


def _strip_module(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    sd = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_calibration(run_dir: str | Path) -> dict[str, Any]:
    """``calibration.json`` as ``{checkpoint: {...}}`` (``{}`` if the run is not calibrated)."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    data = _read_json(path)
    return dict(data.get("checkpoints", {})) if isinstance(data, dict) else {}


def write_calibration(run_dir: str | Path, checkpoint: str, entry: Mapping[str, Any]) -> Path:
    """Store (atomically) ``entry`` for ``checkpoint`` in ``calibration.json``."""
    from softnce.harness.state import _atomic_write_text

    path = Path(run_dir) / CALIBRATION_FILE
    cps = read_calibration(run_dir)
    cps[checkpoint] = dict(entry)
    _atomic_write_text(path, json.dumps({"format": 1, "checkpoints": cps}, indent=2) + "\n")
    return path


def _finished(run: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not run.is_dir():
        raise RunError(f"{run} is not a run directory (it does not exist or is not a folder)")
    missing = [n for n in ("config.json", "summary.json") if not (run / n).is_file()]
    if missing:
        raise RunError(f"{run} is not a finished run: no {' or '.join(missing)} (train it with "
                       f"'softnce train --output-dir {run}' first)")
    summary = _read_json(run / "summary.json")
    if not isinstance(summary, dict) or not summary.get("complete"):
        raise RunError(f"{run} is not a finished run: summary.json says the run is incomplete "
                       f"(continue it with 'softnce train --resume --output-dir {run} ...')")
    return _read_json(run / "config.json"), summary


def _weights(run: Path, checkpoint: str, summary: dict[str, Any], ema: bool
             ) -> tuple[dict[str, torch.Tensor], str]:
    best, last = run / BEST_FILE, run / LAST_FILE
    if checkpoint == "best" and best.is_file():
        obj = safe_load(best)
        if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
            raise RunError(f"{best}: expected a dict with the model's weights under 'model'")
        return _strip_module(obj["model"]), BEST_FILE
    if checkpoint == "best":
        # runs written before best.pt: the last weights are the best when the last evaluation
        # was the best one
        final, bst = summary.get("final") or {}, summary.get("best") or {}
        if not (final and bst and final.get("step") == bst.get("step")):
            raise RunError(f"{run} has no {BEST_FILE} (written by older softnce versions) and "
                           f"its best evaluation (step {bst.get('step')}) is not the last "
                           f"(step {final.get('step')}); use checkpoint='last' "
                           f"(--checkpoint last)")
    if not last.is_file():
        raise RunError(f"{run} is not a finished run: no {LAST_FILE}")
    ckpt = safe_load(last)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        raise RunError(f"{last}: expected a training checkpoint with 'model' weights")
    if ema and ckpt.get("ema"):
        return _strip_module(ckpt["ema"]), LAST_FILE + " (ema)"
    return _strip_module(ckpt["model"]), LAST_FILE


def _bundle_facts(run: Path, cfg: TrainConfig) -> dict[str, Any]:
    """``model.json``, or for older runs the same facts from the rebuilt data set."""
    path = run / MODEL_FILE
    if path.is_file():
        return _read_json(path)
    from softnce.data import DATASETS, DataError

    try:
        b = DATASETS.get(cfg.dataset)(cfg)
    except (DataError, ConfigError, ValueError, TypeError, FileNotFoundError) as e:
        raise RunError(f"{run} has no {MODEL_FILE} (older softnce) and its data set could not "
                       f"be rebuilt to describe the model: {e}") from e
    info = json.loads(json.dumps(model_info(SimpleNamespace(
        cfg=cfg, bundle=b, model_name=cfg.model or b.default_model or "mlp",
        model=nn.Linear(1, 1))), default=str))
    info.pop("num_parameters", None)
    return info


@dataclass
class LoadedRun:
    """A finished run ready for prediction (see :func:`load_run`)."""

    run_dir: Path
    model: nn.Module
    config: TrainConfig
    info: dict[str, Any]
    summary: dict[str, Any]
    checkpoint: str
    weights_file: str
    device: torch.device
    run_temperature: float
    calibration: dict[str, Any] | None = None
    _mean: torch.Tensor | None = field(default=None, repr=False)
    _std: torch.Tensor | None = field(default=None, repr=False)

    @property
    def class_names(self) -> list[str]:
        names = self.info.get("class_names")
        return list(names) if names else [str(i) for i in range(self.num_classes)]

    @property
    def num_classes(self) -> int:
        return int(self.info["dataset"]["num_classes"])

    @property
    def kind(self) -> str:
        return str(self.info["dataset"]["kind"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.info["dataset"]["input_shape"])

    @property
    def temperature(self) -> float:
        """The softmax temperature predictions use: the calibrated one (``calibration.json``
        for this checkpoint) if present, else the run's training temperature."""
        if self.calibration is not None:
            return float(self.calibration["temperature"])
        return self.run_temperature

    def preprocess(self, x: Any) -> torch.Tensor:
        """Raw inputs -> model inputs: tabular runs standardise with the training split's
        statistics (and check the number of features); other runs only convert to float."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if self.kind == "tabular":
            if x.dim() == 1:
                x = x[None]
            d = math.prod(self.input_shape)
            if x.dim() != 2 or x.shape[1] != d:
                raise RunError(f"input has {tuple(x.shape[1:]) if x.dim() > 1 else ()} features "
                               f"per row; the run's model expects {d}")
            if self._mean is not None:
                x = (x - self._mean) / self._std
        return x

    @torch.no_grad()
    def logits(self, x: Any, preprocessed: bool = False, batch_size: int = 1024) -> torch.Tensor:
        """Model logits (float32, CPU) for a batch of inputs."""
        x = torch.as_tensor(x, dtype=torch.float32) if preprocessed else self.preprocess(x)
        if preprocessed and self.kind == "tabular" and x.dim() == 1:
            x = x[None]
        out = [self.model(x[i:i + batch_size].to(self.device)).float().cpu()
               for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def predict_proba(self, x: Any, preprocessed: bool = False) -> torch.Tensor:
        """``softmax(logits / temperature)`` (``temperature``: calibrated if available)."""
        return F.softmax(self.logits(x, preprocessed).double() / self.temperature, 1).float()

    def build_data(self, data_path: str | None = None) -> Any:
        """The run's data set rebuilt from its config (``data_path`` overrides), checked to have
        the run's classes."""
        from softnce.data import DATASETS, DataError

        cfg = self.config if data_path is None else self.config.replace(data_path=data_path)
        try:
            b = DATASETS.get(cfg.dataset)(cfg)
        except (DataError, ConfigError) as e:
            raise RunError(f"data set {cfg.dataset!r}: {e}") from e
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise RunError(f"data set {cfg.dataset!r}: {e}") from e
        names = self.info.get("class_names")
        if int(b.num_classes) != self.num_classes or (
                names and b.class_names is not None and list(b.class_names) != list(names)):
            raise RunError(
                f"data set {cfg.dataset!r} at {cfg.data_path!r} has {b.num_classes} classes "
                f"{_short(b.class_names)}; the run was trained on {self.num_classes} classes "
                f"{_short(names)}")
        return b


def _short(names: Any) -> str:
    if not names:
        return ""
    names = list(names)
    return "(" + ", ".join(map(str, names[:5])) + (", ..." if len(names) > 5 else "") + ")"


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str = "cpu") -> LoadedRun:
    """Load a finished run for prediction.

    Args:
        run_dir: the run's output directory.
        checkpoint: ``"best"`` (``best.pt``, chosen by :data:`BEST_METRIC`) or ``"last"`` (the
            final weights in ``checkpoint.pt``; EMA weights when the run used EMA).
        device: where the model lives.

    Returns a :class:`LoadedRun` with ``.model`` (eval mode), ``.config``, ``.class_names``,
    ``.temperature``, ``.preprocess(x)``, ``.predict_proba(x, preprocessed=False)``.
    Raises :class:`RunError` (a ``ValueError``) for a directory that is not a finished run or
    a checkpoint that is not weights-only.
    """
    if checkpoint not in CHECKPOINTS:
        raise RunError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}; found {checkpoint!r}")
    run = Path(run_dir)
    cfg_dict, summary = _finished(run)
    try:
        cfg = TrainConfig.from_dict(cfg_dict, source=str(run / "config.json"))
    except ConfigError as e:
        raise RunError(f"{run}/config.json: {e}") from e
    info = _bundle_facts(run, cfg)
    ds = info["dataset"]
    extra = dict(ds.get("extra") or {})
    if "image_shape" in extra and extra["image_shape"] is not None:
        extra["image_shape"] = tuple(extra["image_shape"])
    stub = SimpleNamespace(name=ds["name"], kind=ds["kind"], num_classes=int(ds["num_classes"]),
                           input_shape=tuple(int(s) for s in ds["input_shape"]), extra=extra,
                           class_names=info.get("class_names"),
                           default_model=ds.get("default_model"))
    from softnce.models import build_model

    build_cfg = cfg.replace(finetune=None)  # weights come from the run, never from --finetune
    try:
        model = build_model(info["model"], stub, build_cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise RunError(f"{run}: cannot rebuild model {info['model']!r}: {e}") from e
    sd, wfile = _weights(run, checkpoint, summary, bool(info.get("ema", cfg.ema is not None)))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise RunError(f"{run}/{wfile.split()[0]} does not fit model {info['model']!r}: "
                       f"{str(e).splitlines()[0]}") from e
    dev = torch.device(device)
    model.to(dev).eval()
    pre = info.get("preprocessing") or {}
    mean = std = None
    if pre.get("type") == "standardize":
        mean = torch.as_tensor(pre["mean"], dtype=torch.float32)
        std = torch.as_tensor(pre["std"], dtype=torch.float32)
    cal = read_calibration(run).get(checkpoint)
    return LoadedRun(run_dir=run, model=model, config=cfg, info=info, summary=summary,
                     checkpoint=checkpoint, weights_file=wfile, device=dev,
                     run_temperature=float(info.get("temperature", cfg.temperature)),
                     calibration=cal, _mean=mean, _std=std)


# ------------------------------------------------------------------------------- data
SPLITS = {"calibration": "val", "val": "val", "test": "test"}


@torch.no_grad()
def split_logits(run: LoadedRun, bundle: Any, split: str, batch_size: int = 512
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits, labels)`` of the run's model on ``split`` (``calibration``/``val`` or
    ``test``) of ``bundle`` (from :meth:`LoadedRun.build_data`), in the split's order."""
    from softnce.harness.state import move_to

    if split not in SPLITS:
        raise RunError(f"split must be one of {', '.join(SPLITS)}; found {split!r}")
    data = bundle.val if SPLITS[split] == "val" else bundle.test
    if data is None or len(data) == 0:
        raise RunError(f"data set {bundle.name!r} has no {split} split")
    if getattr(run.model, "eval_stats", None) is not None:
        raise RunError(f"model {run.info['model']!r} scores through eval_stats (no logits); "
                       "evaluate it with the training harness")
    sampler = torch.utils.data.SequentialSampler(data)
    if bundle.loader_factory is not None:
        loader = bundle.loader_factory(data, batch_size=batch_size, shuffle=False,
                                       sampler=sampler, num_workers=0, drop_last=False,
                                       generator=torch.Generator().manual_seed(0))
    else:
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler,
                                             collate_fn=bundle.collate_fn, num_workers=0)
    all_logits, all_labels = [], []
    for batch in loader:
        batch = move_to(batch, run.device)
        x, labels, _soft, mask = bundle.unpack(batch)
        logits = run.model(x).float()
        if mask is not None:
            logits, labels = logits[mask], labels[mask]
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels).long()


def image_transform(run: LoadedRun) -> Any:
    """The run's evaluation transform (PIL image -> normalised tensor) for image runs."""
    pre = run.info.get("preprocessing") or {}
    if run.kind != "image" or pre.get("type") != "image":
        raise RunError(f"run {run.run_dir} is a {run.kind} run, not an image run")
    from softnce.data.image_factories import build_image_transforms

    _, eval_tf = build_image_transforms(int(pre["input_size"] or 224), pre["mean"], pre["std"],
                                        interpolation=str(pre.get("interpolation") or "bicubic"),
                                        eval_crop_pct=pre.get("crop_pct"))
    return eval_tf
