r"""Knowledge distillation: a finished run as the teacher of a new run (``--teacher RUN_DIR``).

Targets. With teacher logits :math:`z_t` and ``kd_temperature`` :math:`T` the teacher target is
:math:`p_t^T = \mathrm{softmax}(z_t / T)`; the training target is

.. math:: y = \alpha\, p_t^T + (1 - \alpha)\, y_{own},

``alpha = kd_alpha`` (1: teacher only) and :math:`y_{own}` the student's own targets of the batch
(one-hot / smoothed labels, or the MixUp/CutMix mix from
:class:`~softnce.harness.mixing.BatchTargetBuilder`). ``kd_topk = k`` keeps the teacher's ``k``
most likely classes exactly and spreads the remaining mass :math:`r = 1 - \sum_{top-k} p` evenly
over the other :math:`C - k` classes. That is a :class:`~softnce.targets.SoftTargets` with ``k``
components, weights :math:`p_c - r / (C - k)` (non-negative: a kept class is at least as likely
as the mean of the dropped ones) and uniform mass :math:`u = r C / (C - k)`, so the soft-target
InfoNCE stays :math:`O(N M k + N C)`; ``k >= C`` is the dense target exactly (``u = 0``).

Losses. ``soft-ce`` on teacher targets is classic knowledge distillation (Hinton et al., 2015):
:math:`\mathrm{KL}(p_t^T \,\|\, q_s) = \mathrm{CE}(p_t^T, q_s) - H(p_t^T)`, and the entropy of the
fixed teacher does not depend on the student, so CE and KL have the same gradient. Hinton et al.
use the *same* temperature for the student, :math:`q_s = \mathrm{softmax}(z_s / T)`; then
:math:`\partial \mathrm{CE} / \partial z_s = (q_s - p_t^T) / T`, which for logits small against
:math:`T` is :math:`\approx (z_s - z_t) / (C T^2)` (zero-mean logits): the soft term's gradients
shrink as :math:`1/T^2`, and multiplying it by :math:`T^2` (``kd_t2_scaling``) keeps their
magnitude comparable across :math:`T` and against the hard-label term. In this harness the
*student's* temperature is the loss temperature ``temperature`` (default 1, also the temperature
of every reported prediction, ``softmax(z / temperature)``), and ``kd_temperature`` only softens
the teacher. Hinton's exact recipe is ``temperature = kd_temperature = T`` with
``kd_t2_scaling: true``; then predictions are reported at ``T`` too (temperature scaling on the
calibration split, the ``*_ts`` metrics, undoes that choice). With ``kd_t2_scaling`` the soft
term is weighted :math:`\alpha T^2` against :math:`1 - \alpha` for the own targets, implemented
as one target :math:`(\alpha T^2 p_t^T + (1 - \alpha) y_{own}) / m` and the loss times
:math:`m = \alpha T^2 + 1 - \alpha` (CE is linear in its target), so only ``soft-ce`` allows it.
``soft-infonce`` on teacher targets is contrastive distillation: the teacher's distribution is the
positive target and every ``negatives`` mode works unchanged.

The teacher is :func:`softnce.harness.runs.load_run` of the run directory (its ``best.pt``,
weights-only, eval mode), frozen (no gradients, not in the optimiser, not wrapped in DDP) and run
on every training batch after the target builder, i.e. on the *mixed* inputs when MixUp/CutMix is
on, so teacher and student see the same input.

Cache (``kd_cache``: ``auto`` | ``true`` | ``false``). When the teacher's input for a training
sample is fixed - vector data (``kind == "tabular"``) with ``mixup = cutmix = 0`` (no tabular data
set augments its inputs) - the teacher's logits for the whole training split are computed once
and stored as ``teacher_logits.pt`` in the student's run directory with a key (sha256 of the
teacher's weight file and of the data set config); a key mismatch (retrained teacher, other data)
rebuilds it. ``auto`` uses it when it applies and ``N * C * 4`` bytes fit
:data:`CACHE_BUDGET_BYTES` (512 MiB); ``true`` requires it; the train split is then wrapped to
also yield each sample's index (batch order unchanged).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from softnce.harness.config import ConfigError
from softnce.targets import SoftTargets

__all__ = ["CACHE_BUDGET_BYTES", "CACHE_FILE", "Distiller", "IndexedDataset", "cache_reason",
           "mix_targets", "teacher_targets", "topk_targets"]

CACHE_FILE = "teacher_logits.pt"
TEACHER_FILE = "teacher.json"
#: ``N * C * 4`` bytes of float32 teacher logits up to which ``kd_cache: auto`` caches them.
CACHE_BUDGET_BYTES = 512 * 2**20
#: Data set config keys that must agree between teacher and student (and key the cache).
DATA_KEYS = ("dataset", "data_path", "dataset_options", "num_classes", "input_size")


# ------------------------------------------------------------------------------ target maths
def topk_targets(logits: torch.Tensor, temperature: float, k: int) -> SoftTargets:
    """Top-``k`` teacher targets: the ``k`` largest of ``softmax(logits / T)`` kept exactly, the
    remaining mass spread evenly over the other ``C - k`` classes (see the module docstring)."""
    c = logits.shape[1]
    p = F.softmax(logits.float() / temperature, dim=1)
    k = min(int(k), c)
    top, idx = p.topk(k, dim=1)
    if k == c:
        return SoftTargets(idx, top, torch.zeros(len(p), dtype=p.dtype, device=p.device), c,
                           validate_args=False)
    rest = (p.sum(1) - top.sum(1)).clamp_min(0)  # mass of the dropped classes
    per_class = rest / (c - k)
    weights = (top - per_class[:, None]).clamp_min(0)
    return SoftTargets(idx, weights, per_class * c, c, validate_args=False)


def teacher_targets(logits: torch.Tensor, temperature: float = 1.0,
                    topk: int | None = None) -> torch.Tensor | SoftTargets:
    """``softmax(logits / T)`` as a dense (N, C) tensor, or top-``k`` :class:`SoftTargets`."""
    if topk is None:
        return F.softmax(logits.float() / temperature, dim=1)
    return topk_targets(logits, temperature, topk)


def mix_targets(teacher: torch.Tensor | SoftTargets, own: Any, alpha: float
                ) -> torch.Tensor | SoftTargets:
    """``alpha * teacher + (1 - alpha) * own``; sparse when both are :class:`SoftTargets`
    (components concatenated, so ``k = k_teacher + k_own``), else dense."""
    if alpha >= 1.0:
        return teacher
    if isinstance(teacher, SoftTargets) and isinstance(own, SoftTargets):
        dt = teacher.weights.dtype
        return SoftTargets(torch.cat([teacher.indices, own.indices], 1),
                           torch.cat([alpha * teacher.weights,
                                      (1 - alpha) * own.weights.to(dt)], 1),
                           alpha * teacher.uniform + (1 - alpha) * own.uniform.to(dt),
                           teacher.num_classes, validate_args=False)
    t = teacher.to_dense() if isinstance(teacher, SoftTargets) else teacher
    o = own.to_dense(t.dtype) if isinstance(own, SoftTargets) else own.to(t.dtype)
    return alpha * t + (1 - alpha) * o


def t2_weights(alpha: float, temperature: float, enabled: bool) -> tuple[float, float]:
    """``(effective alpha, loss scale)`` of the T^2-weighted mix (identity when disabled)."""
    if not enabled:
        return alpha, 1.0
    m = alpha * temperature ** 2 + (1 - alpha)
    return alpha * temperature ** 2 / m, m


# ---------------------------------------------------------------------------------- cache
class IndexedDataset(Dataset):
    """``dataset[i] + (i,)``: the sample index rides along as the last batch element."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple:
        return (*self.dataset[i], torch.tensor(i, dtype=torch.long))


def cache_reason(cfg: Any, bundle: Any) -> str | None:
    """Why the teacher logits cannot be cached (``None``: they can)."""
    if bundle.kind != "tabular":
        return f"data kind {bundle.kind!r} (only vector data, kind 'tabular', has fixed inputs)"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "MixUp/CutMix make the teacher's inputs batch-dependent"
    if bundle.loader_factory is not None:
        return "the data set brings its own loader"
    n, c = len(bundle.train), bundle.num_classes
    if n * c * 4 > CACHE_BUDGET_BYTES:
        return (f"{n} x {c} float32 logits ({n * c * 4 / 2**20:.0f} MiB) exceed the "
                f"{CACHE_BUDGET_BYTES // 2**20} MiB budget")
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------ distiller
class Distiller:
    """The trainer's teacher: loads and checks it, builds the batch targets, owns the cache.

    ``teacher_forwards`` counts teacher forward passes (the cache build counts as one per chunk).
    """

    def __init__(self, cfg: Any, bundle: Any, device: torch.device, out: Path, rank: int,
                 hard: bool) -> None:
        if hard:
            raise ConfigError(f"--teacher needs a soft-target loss (soft-ce: classic knowledge "
                              f"distillation, soft-infonce: contrastive); found loss {cfg.loss!r}")
        self.cfg, self.device, self.out, self.rank = cfg, device, Path(out), rank
        self.temperature, self.topk = float(cfg.kd_temperature), cfg.kd_topk
        self.alpha, self.loss_scale = t2_weights(float(cfg.kd_alpha), self.temperature,
                                                 bool(cfg.kd_t2_scaling))
        self.teacher_forwards = 0
        self._load_teacher(cfg, bundle)
        self.cache: torch.Tensor | None = None
        reason = cache_reason(cfg, bundle)
        if cfg.kd_cache is True and reason is not None:
            raise ConfigError(f"kd_cache=true but the teacher logits cannot be cached: {reason}")
        if cfg.kd_cache is not False and reason is None:
            self.cache = self._cached_logits(bundle)
        if rank == 0:
            info = {"teacher": str(cfg.teacher), "weights_file": self.weights_file,
                    "weights_sha256": self.weights_sha, "num_parameters": sum(
                        p.numel() for p in self.teacher.parameters()),
                    "cache": self.cache is not None, "cache_reason": reason,
                    "kd_temperature": self.temperature, "kd_alpha": float(cfg.kd_alpha),
                    "kd_topk": self.topk, "kd_t2_scaling": bool(cfg.kd_t2_scaling)}
            self._ensure_out()
            (self.out / TEACHER_FILE).write_text(json.dumps(info, indent=2) + "\n")

    # ---------------------------------------------------------------- teacher
    def _load_teacher(self, cfg: Any, bundle: Any) -> None:
        from softnce.harness.runs import load_run

        try:
            run = load_run(cfg.teacher, checkpoint="best", device=str(self.device))
        except ValueError as e:  # RunError: not a finished run, not weights-only, ...
            raise ConfigError(f"--teacher {cfg.teacher}: {e}") from e
        tcfg = run.config
        for key in DATA_KEYS:
            mine, theirs = getattr(cfg, key), getattr(tcfg, key)
            if key == "num_classes" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                raise ConfigError(f"--teacher {cfg.teacher} was trained with {key}={theirs!r}; "
                                  f"this run has {key}={mine!r} (teacher and student need the "
                                  f"same data set and split)")
        if run.num_classes != bundle.num_classes:
            raise ConfigError(f"--teacher {cfg.teacher} predicts {run.num_classes} classes; "
                              f"data set {cfg.dataset!r} has {bundle.num_classes}")
        if tuple(run.input_shape) != tuple(bundle.input_shape):
            raise ConfigError(f"--teacher {cfg.teacher} expects inputs of shape "
                              f"{tuple(run.input_shape)}; this data set's are "
                              f"{tuple(bundle.input_shape)}")
        self.teacher: nn.Module = run.model.eval().requires_grad_(False)
        self.weights_file = run.weights_file.split()[0]
        self.weights_sha = _sha256(Path(cfg.teacher) / self.weights_file)

    @torch.no_grad()
    def teacher_logits(self, x: Any) -> torch.Tensor:
        self.teacher.eval()
        self.teacher_forwards += 1
        return self.teacher(x).float()

    # ---------------------------------------------------------------- cache
    def _ensure_out(self) -> None:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create output directory {str(self.out)!r}: "
                              f"{e.strerror or e}") from e

    def cache_key(self, bundle: Any) -> str:
        data = {k: getattr(self.cfg, k) for k in DATA_KEYS}
        data["n_train"] = len(bundle.train)
        blob = json.dumps({"teacher_sha256": self.weights_sha, "data": data}, sort_keys=True,
                          default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cached_logits(self, bundle: Any) -> torch.Tensor:
        from softnce.harness.runs import safe_load
        from softnce.harness.state import atomic_save

        key, path = self.cache_key(bundle), self.out / CACHE_FILE
        if path.is_file():
            try:
                saved = safe_load(path)
            except ValueError:
                saved = None
            if (isinstance(saved, dict) and saved.get("key") == key
                    and tuple(saved["logits"].shape) == (len(bundle.train), bundle.num_classes)):
                return saved["logits"].to(self.device)
        x = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
        chunks = [self.teacher_logits(x[i:i + 1024].to(self.device))
                  for i in range(0, len(x), 1024)]
        logits = torch.cat(chunks)
        if self.rank == 0:
            self._ensure_out()
            atomic_save({"format": 1, "key": key, "logits": logits.cpu(),
                         "teacher": str(self.cfg.teacher),
                         "teacher_sha256": self.weights_sha}, path)
        return logits

    def wrap_train(self, dataset: Dataset) -> Dataset:
        """The train split, yielding sample indices as well when the cache is used."""
        return IndexedDataset(dataset) if self.cache is not None else dataset

    def split_batch(self, batch: Any) -> tuple[Any, torch.Tensor | None]:
        """``(batch without the index, indices or None)``."""
        if self.cache is None:
            return batch, None
        return batch[:-1], batch[-1]

    # ---------------------------------------------------------------- targets
    def targets(self, x: Any, own: Any, rows: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor | SoftTargets:
        """The batch's training targets from the (mixed) inputs ``x`` and the own targets."""
        if rows is not None and self.cache is not None:
            z = self.cache[rows.to(self.cache.device)]
        else:
            z = self.teacher_logits(x)
            if mask is not None:
                z = z[mask]
        return mix_targets(teacher_targets(z, self.temperature, self.topk), own, self.alpha)
