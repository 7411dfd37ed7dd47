"""The harness configuration: :class:`TrainConfig`, YAML presets and ``--set`` overrides.

Resolution order (later wins): dataclass defaults < YAML file (after its ``base:`` chain) <
``overrides`` (``KEY=VALUE`` strings, VALUE parsed as YAML, dotted keys reach into dict fields) <
explicit keyword fields. Every key and value is validated; an error is a :class:`ConfigError`
(a ``ValueError``) whose message names the key, the expected and the found value and, for
unknown keys or choices, lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softnce.harness.yamlio import (  # noqa: F401  (public names, kept here)
    CONFIG_DIR,
    REPO_CONFIG_DIR,
    YAML_MAX_BYTES,
    YAML_MAX_NODES,
    ConfigError,
    _merge,
    _yaml_load,
    find_preset,
    load_yaml,
)

__all__ = [
    "AUGMENT_DEFAULTS",
    "ConfigError",
    "TrainConfig",
    "config_keys",
    "find_preset",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "CONFIG_DIR",
    "REPO_CONFIG_DIR",
]


#: Image augmentation options (nested ``augment:`` dict) and their defaults.
AUGMENT_DEFAULTS: dict[str, Any] = {
    "aa": None,  # timm auto-augment policy string, e.g. "rand-m9-mstd0.5-inc1"
    "reprob": 0.0,  # random erasing probability
    "remode": "pixel",
    "recount": 1,
    "interpolation": "bicubic",
    "color_jitter": 0.0,
    "hflip": 0.5,
    "vflip": 0.0,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333333333333333],
    "crop_pct": None,
    "mean": None,
    "std": None,
}

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
NOISE_CHOICES = ("prior", "uniform")
NEGATIVES_CHOICES = ("batch", "queue", "sampled", "simplex")
MIX_MODE_CHOICES = ("batch", "pair", "elem")
HEAD_CHOICES = ("linear", "mlp", "embedding")
# Fields that may differ between a run and its resumption / a rerun in the same directory.
RUNTIME_ONLY_KEYS = frozenset(
    {"resume", "overwrite", "quiet", "output_dir", "workers", "device", "tensorboard",
     "eval_batch_size", "cpu_threads"}
)


#: Sanity bounds: values beyond them are typos or attacks (and would allocate absurd memory).
MAX_COUNT = 10_000_000
MAX_STEPS = 10**12
MAX_LR = 1e6
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024
MAX_NEGATIVES = 10_000_000
MAX_CLASSES = 1_000_000

@dataclass
class TrainConfig:
    """One training run. See ``docs/harness-api.md`` for every field."""

    # data
    dataset: str | None = None
    data_path: str | None = None
    num_classes: int | None = None
    input_size: int | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    augment: dict[str, Any] = field(default_factory=dict)
    # model
    model: str | None = None
    head: str = "linear"
    finetune: str | None = None
    drop_path: float = 0.0
    model_options: dict[str, Any] = field(default_factory=dict)
    # loss and soft targets
    loss: str = "soft-infonce"
    temperature: float = 1.0
    noise: str = "prior"
    negatives: str = "batch"
    queue_size: int = 4096
    num_negatives: int = 1024
    simplex_concentration: float = 1.0
    gather_distributed: bool = True
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    mix_mode: str = "batch"
    # knowledge distillation (softnce.harness.distill): a finished run dir as the teacher
    teacher: str | None = None
    kd_temperature: float = 1.0
    kd_alpha: float = 1.0  # weight of the teacher's targets (1 - kd_alpha: the own targets)
    kd_topk: int | None = None  # None: dense teacher targets
    kd_t2_scaling: bool = False  # Hinton's T^2 factor on the teacher term (soft-ce only)
    kd_cache: Any = "auto"  # "auto" | True | False: cache the teacher's train-split logits
    # optimisation
    epochs: int = 30
    max_steps: int | None = None
    batch_size: int = 64
    eval_batch_size: int | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float | None = None
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    clip_grad: float | None = None
    accum_steps: int = 1
    amp: str = "auto"
    ema: float | None = None
    # run
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    # torch.set_num_threads on CPU: "auto" = 1 for models under 1M parameters, else torch's
    # setting; an int sets it; null leaves torch's setting.
    cpu_threads: Any = "auto"
    output_dir: str | None = None
    resume: bool = False
    # start over in an output directory that already holds a run (deletes its run files)
    overwrite: bool = False
    quiet: bool = False
    eval_every: int = 1
    ckpt_every_steps: int = 0
    # epoch-end checkpoints at most every this many seconds (0: every epoch); the final epoch,
    # an interrupting signal and ckpt_every_steps always write one
    ckpt_every_seconds: float = 30.0
    save_val_logits: Any = "auto"  # "auto" | True | False
    tensorboard: bool = True

    # ----------------------------------------------------------------- helpers
    def to_dict(self) -> dict[str, Any]:
        """Plain-python copy (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        d = self.to_dict()
        d.update(changes)
        return TrainConfig.from_dict(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping with field names as keys (``-`` accepted for ``_``)."""
        cfg = cls()
        for key, value in d.items():
            name = _field_name(key, source)
            setattr(cfg, name, _coerce(name, value, source))
        return cfg.validate()

    def augment_options(self) -> dict[str, Any]:
        """``augment`` with every default filled in."""
        out = dict(AUGMENT_DEFAULTS)
        out.update(self.augment)
        return out

    @property
    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("runs") / f"{self.dataset}-{self.loss}-seed{self.seed}"

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size or max(256, self.batch_size)

    # -------------------------------------------------------------- validation
    def validate(self) -> TrainConfig:
        """Check every value and the combinations that do not depend on the data set.

        Raises :class:`ConfigError` naming the key, the expected and the found value.
        """
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), "config"))
        _check_ranges(self)
        _check_names(self)
        _check_combinations(self)
        return self


# --------------------------------------------------------------------------- types
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def config_keys() -> list[str]:
    """All valid config keys, sorted."""
    return sorted(_FIELDS)


def _field_name(key: object, source: str) -> str:
    if not isinstance(key, str):
        raise ConfigError(f"config keys must be strings; found {key!r} in {source}")
    name = key.replace("-", "_")
    if name not in _FIELDS:
        raise ConfigError(
            f"unknown config key {key!r} in {source}; valid keys: {', '.join(config_keys())}"
        )
    return name


def _type_of(name: str) -> tuple[str, bool]:
    """(base type, optional) from the field's annotation string."""
    ann = str(_FIELDS[name].type).replace(" ", "")
    optional = ann.endswith("|None")
    base = ann[: -len("|None")] if optional else ann
    if base.startswith("dict"):
        base = "dict"
    return base, optional


def _coerce(name: str, value: Any, source: str) -> Any:
    """Convert YAML/CLI values to the field type (``'1e-3'`` -> 1e-3, ``3.0`` -> 3)."""
    base, optional = _type_of(name)
    if value is None:
        if optional:
            return None
        if base == "dict":
            return {}
        raise ConfigError(f"{name} must not be null in {source}")
    if base == "Any":
        return value
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{name} must be true or false in {source}; found {value!r}")
    if base == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer in {source}; found {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise ConfigError(f"{name} must be an integer in {source}; found {value!r}")
    if base == "float":
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be a number in {source}; found {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name} must be a number in {source}; found {value!r}")
    if base == "str":
        if isinstance(value, (str, Path)):
            return str(value)
        raise ConfigError(f"{name} must be a string in {source}; found {value!r}")
    if base == "dict":
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping (YAML dict) in {source}; found {value!r}")
        return {str(k).replace("-", "_") if name == "augment" else str(k): v
                for k, v in value.items()}
    raise AssertionError(f"unhandled config type {base} for {name}")  # pragma: no cover


def _choice(name: str, value: Any, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; found {value!r}")


def _check_ranges(c: TrainConfig) -> None:
    def need(cond: bool, name: str, expected: str) -> None:
        if not cond:
            raise ConfigError(f"{name} must be {expected}; found {getattr(c, name)!r}")

    def finite(x: float) -> bool:
        return math.isfinite(x)

    need(c.epochs >= 1, "epochs", ">= 1")
    need(c.epochs <= MAX_COUNT, "epochs", f"<= {MAX_COUNT}")
    need(c.max_steps is None or 1 <= c.max_steps <= MAX_STEPS, "max_steps",
         f"in [1, {MAX_STEPS}] (or null)")
    need(c.batch_size >= 1, "batch_size", ">= 1")
    need(c.batch_size <= MAX_COUNT, "batch_size", f"<= {MAX_COUNT}")
    need(c.eval_batch_size is None or 1 <= c.eval_batch_size <= MAX_COUNT, "eval_batch_size",
         f"in [1, {MAX_COUNT}]")
    need(finite(c.lr) and c.lr >= 0, "lr", "a finite number >= 0")
    need(c.lr <= MAX_LR, "lr", f"<= {MAX_LR:g} (a learning rate beyond it is a typo)")
    need(finite(c.weight_decay) and 0 <= c.weight_decay <= MAX_LR, "weight_decay",
         f"in [0, {MAX_LR:g}]")
    need(c.layer_decay is None or 0 < c.layer_decay <= 1, "layer_decay", "in (0, 1] or null")
    need(finite(c.warmup_epochs) and 0 <= c.warmup_epochs <= MAX_COUNT, "warmup_epochs",
         f"in [0, {MAX_COUNT}]")
    need(finite(c.min_lr) and 0 <= c.min_lr <= MAX_LR, "min_lr", f"in [0, {MAX_LR:g}]")
    need(0 <= c.seed <= MAX_SEED, "seed", f"an integer in [0, 2**32 - 1 = {MAX_SEED}]")
    need(c.clip_grad is None or (finite(c.clip_grad) and c.clip_grad > 0), "clip_grad",
         "> 0 or null")
    need(1 <= c.accum_steps <= MAX_COUNT, "accum_steps", f"in [1, {MAX_COUNT}]")
    need(c.ema is None or 0 < c.ema < 1, "ema", "a decay in (0, 1) or null")
    need(0 <= c.drop_path < 1, "drop_path", "in [0, 1)")
    need(0 <= c.smoothing < 1, "smoothing", "in [0, 1)")
    need(finite(c.mixup) and c.mixup >= 0, "mixup", ">= 0 (0: off)")
    need(finite(c.cutmix) and c.cutmix >= 0, "cutmix", ">= 0 (0: off)")
    need(0 <= c.mix_prob <= 1, "mix_prob", "in [0, 1]")
    need(0 <= c.switch_prob <= 1, "switch_prob", "in [0, 1]")
    need(finite(c.temperature) and c.temperature > 0, "temperature", "a finite number > 0")
    need(1 <= c.queue_size <= MAX_NEGATIVES, "queue_size", f"in [1, {MAX_NEGATIVES}]")
    need(1 <= c.num_negatives <= MAX_NEGATIVES, "num_negatives", f"in [1, {MAX_NEGATIVES}]")
    need(finite(c.simplex_concentration) and 1e-3 <= c.simplex_concentration <= 1e3,
         "simplex_concentration", "a number in [1e-3, 1e3]")
    need(0 <= c.workers <= 256, "workers", "in [0, 256]")
    if isinstance(c.cpu_threads, str) and re.fullmatch(r"\d+", c.cpu_threads):
        c.cpu_threads = int(c.cpu_threads)
    if not (c.cpu_threads is None or c.cpu_threads == "auto" or (
            isinstance(c.cpu_threads, int) and not isinstance(c.cpu_threads, bool)
            and 1 <= c.cpu_threads <= MAX_THREADS)):
        raise ConfigError(f"cpu_threads must be auto, an integer in [1, {MAX_THREADS}] or null; found "
                          f"{c.cpu_threads!r}")
    need(1 <= c.eval_every <= MAX_COUNT, "eval_every", f"in [1, {MAX_COUNT}]")
    need(0 <= c.ckpt_every_steps <= MAX_STEPS, "ckpt_every_steps", ">= 0 (0: epoch ends only)")
    need(finite(c.ckpt_every_seconds) and 0 <= c.ckpt_every_seconds <= 1e7, "ckpt_every_seconds",
         ">= 0 seconds (0: every epoch end)")
    need(c.num_classes is None or 2 <= c.num_classes <= MAX_CLASSES, "num_classes",
         f"in [2, {MAX_CLASSES}] (or null)")
    need(c.input_size is None or 1 <= c.input_size <= 8192, "input_size",
         "in [1, 8192] (or null)")
    need(finite(c.kd_temperature) and c.kd_temperature > 0, "kd_temperature",
         "a finite number > 0")
    need(0 <= c.kd_alpha <= 1, "kd_alpha", "in [0, 1]")
    need(c.kd_topk is None or c.kd_topk >= 1, "kd_topk", ">= 1 (or null: dense)")
    if isinstance(c.kd_cache, str) and c.kd_cache.lower() in ("true", "false"):
        c.kd_cache = c.kd_cache.lower() == "true"
    if c.kd_cache not in ("auto", True, False):
        raise ConfigError(f"kd_cache must be auto, true or false; found {c.kd_cache!r}")
    _choice("amp", c.amp, AMP_CHOICES)
    _choice("noise", c.noise, NOISE_CHOICES)
    _choice("negatives", c.negatives, NEGATIVES_CHOICES)
    _choice("mix_mode", c.mix_mode, MIX_MODE_CHOICES)
    _choice("head", c.head, HEAD_CHOICES)
    if c.save_val_logits not in ("auto", True, False):
        raise ConfigError(f"save_val_logits must be auto, true or false; found "
                          f"{c.save_val_logits!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", c.device):
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps; found {c.device!r}")
    unknown = sorted(set(c.augment) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown augment option(s) {', '.join(map(repr, unknown))}; valid keys: "
            f"{', '.join(sorted(AUGMENT_DEFAULTS))}"
        )
    if c.data_path is not None and not Path(c.data_path).expanduser().exists():
        raise ConfigError(f"data_path {c.data_path!r} does not exist")
    if c.finetune is not None and not Path(c.finetune).expanduser().is_file():
        raise ConfigError(f"finetune checkpoint {c.finetune!r} does not exist or is not a file")


def _check_names(c: TrainConfig) -> None:
    from softnce.data import DATASETS
    from softnce.harness.losses import LOSSES
    from softnce.models import MODELS
    from softnce.models.basic import HEADS

    if c.dataset is None:
        raise ConfigError(
            f"missing dataset: pass --dataset NAME (or 'dataset:' in the config); valid "
            f"choices: {', '.join(DATASETS.names())}"
        )
    if c.dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {c.dataset!r}; valid choices: {', '.join(DATASETS.names())}"
        )
    if c.loss not in LOSSES:
        raise ConfigError(f"unknown loss {c.loss!r}; valid choices: {', '.join(LOSSES.names())}")
    if c.head not in HEADS:
        raise ConfigError(
            f"head {c.head!r} is not available (its module is not installed); available heads: "
            f"{', '.join(HEADS.names())}"
        )
    if c.model is not None and c.model not in MODELS:
        is_timm = False
        if "timm" in MODELS:
            import timm

            is_timm = timm.is_model(c.model)
        if not is_timm:
            extra = " or any timm model name" if "timm" in MODELS else ""
            raise ConfigError(
                f"unknown model {c.model!r}; valid choices: {', '.join(MODELS.names())}{extra}"
            )


def _check_combinations(c: TrainConfig) -> None:
    from softnce.harness.losses import LOSSES

    spec = LOSSES.get(c.loss)
    if spec.targets == "hard":
        for name in ("smoothing", "mixup", "cutmix"):
            if getattr(c, name) != 0:
                raise ConfigError(
                    f"loss {c.loss!r} trains on hard labels, so {name} must be 0; found "
                    f"{getattr(c, name)} (use a soft-target loss such as soft-ce or soft-infonce)"
                )
    if c.loss == "nll" and c.temperature != 1.0:
        raise ConfigError(
            f"loss 'nll' is the plain torch.nn.CrossEntropyLoss, so temperature must be 1; found "
            f"{c.temperature} (use soft-ce for a tempered cross-entropy)"
        )
    if c.teacher is not None and spec.targets == "hard":
        raise ConfigError(
            f"teacher needs a soft-target loss (soft-ce: classic knowledge distillation, "
            f"soft-infonce: contrastive distillation); found loss {c.loss!r}"
        )
    if c.kd_t2_scaling and c.loss != "soft-ce":
        raise ConfigError(f"kd_t2_scaling applies to soft-ce (Hinton's T^2 factor; the loss is "
                          f"linear in its target); found loss {c.loss!r}")
    if c.negatives != "batch" and not spec.uses_negatives:
        raise ConfigError(
            f"negatives={c.negatives!r} only applies to the InfoNCE losses; loss {c.loss!r} "
            f"needs negatives 'batch' (the default)"
        )


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["lr=1e-3", "dataset_options.sigma=2"]`` -> nested dict (values parsed as YAML)."""
    from softnce._optional import require

    yaml = require("yaml", "train", "parsing --set values")
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE; found {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = _yaml_load(raw, f"--set {key}") if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {e}") from None
        parts = key.split(".")
        top = _field_name(parts[0], "--set")
        if len(parts) > 1:
            if _type_of(top)[0] != "dict":
                raise ConfigError(f"--set {key}: {top} is not a dict field; dotted keys only "
                                  f"reach into dataset_options, model_options and augment")
            node = out.setdefault(top, {})
            for p in parts[1:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        else:
            out[top] = value
    return out


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    **fields: Any,
) -> TrainConfig:
    """Defaults < YAML ``path`` < ``overrides`` < ``fields`` (``None`` values are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        raw = load_yaml(path)
        for k in raw:
            _field_name(k, str(path))
        data = _merge(data, {k.replace("-", "_"): v for k, v in raw.items()})
    if overrides:
        ov = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
        data = _merge(data, ov)
    for k, v in fields.items():
        if v is not None:
            data[_field_name(k, "arguments")] = v
    return TrainConfig.from_dict(data)
