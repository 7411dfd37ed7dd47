r"""The training loop behind ``softnce train``: one run from a :class:`~softnce.harness.config.TrainConfig`.

``train(cfg) -> summary`` builds the data set (``softnce.data.DATASETS``), the model
(``softnce.models.build_model``), the loss (:func:`build_loss`) and the per-batch soft targets
(:class:`~softnce.harness.mixing.BatchTargetBuilder`), then runs AdamW (timm
``create_optimizer_v2``) with a per-step schedule

.. math:: \eta_s = \eta \frac{s + 1}{W} \ (s < W), \qquad
          \eta_s = \eta_{min} + \tfrac12 (\eta - \eta_{min})
          \big(1 + \cos(\pi \tfrac{s - W}{S - W})\big) \ (s \ge W),

(``W`` warm-up steps, ``S`` total steps), gradient clipping and accumulation, AMP on CUDA, an
optional EMA, and evaluates top-1/top-5, NLL, ECE (15 bins), Brier on the validation split from
``softmax(logits / T)`` every ``eval_every`` epochs.

Everything needed to continue a run bit-for-bit on CPU is in the checkpoint: model, optimiser,
GradScaler, EMA, loss state (queue buffers), the target builder's RNG, the epoch and step within
the epoch, and the python / numpy / torch / CUDA RNG states of every rank; the train sampler's
order is a function of ``(seed, epoch)`` and skips the samples already seen. Checkpoints hold only
tensors and plain python, so ``torch.load(path, weights_only=True)`` reads them.

Distributed (``torchrun``): DDP with a ``DistributedSampler``, metrics all-reduced by
``CalibrationMeter``, the loss gathers targets across ranks, only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from softnce.data import DATASETS, DataError
from softnce.harness.config import ConfigError, TrainConfig
from softnce.harness.evaluation import SAVE_LOGITS_LIMIT, EvaluationMixin  # noqa: F401
from softnce.harness.losses import LOSSES, LossSpec, build_loss, noise_probs, register_loss  # noqa: F401
from softnce.harness.mixing import (
    BatchTargetBuilder,
)
from softnce.harness.progress import ProgressMixin
from softnce.harness.rundir import (  # noqa: F401
    CHECKPOINT,
    RunDirMixin,
    RunInterrupted,
    read_metrics,
)
from softnce.harness.samplers import (  # noqa: F401
    ResumableDistributedSampler,
    ShardSampler,
    TensorBatchLoader,
)
from softnce.harness.state import (  # noqa: F401
    RunLock,
    RunLockedError,
    _atomic_write_text,
    _batch_len,
    _config_diff,
    atomic_save,
    git_commit,
    lr_at,
    move_to,
    package_versions,
    rng_state,
    seed_everything,
    set_rng_state,
    verify_checksum,
)
from softnce.harness.step import _cat_targets, _ForwardLoss, relax_checks, restore_checks

__all__ = [
    "LOSSES",
    "LossSpec",
    "NonFiniteLossError",
    "RunInterrupted",
    "Trainer",
    "build_loss",
    "noise_probs",
    "register_loss",
    "train",
]

METRIC_KEYS = ("top1", "top5", "ece", "mce", "ace", "nll", "brier")
#: Test hook: the process SIGKILLs itself right after this optimiser step (and its checkpoint).
KILL_ENV = "SOFTNCE_DEBUG_SIGKILL_AFTER_STEP"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (the last good checkpoint is kept)."""


class Trainer(RunDirMixin, EvaluationMixin, ProgressMixin):
    """One run; :meth:`run` returns the summary dict (also written to ``summary.json``)."""

    def __init__(self, cfg: TrainConfig, log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg.validate()
        self._external_log = log
        self.out = cfg.resolved_output_dir
        self.rank, self.world, self._owns_pg = 0, 1, False
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ setup
    def _log(self, msg: str) -> None:
        if self.rank != 0:
            return
        if self._external_log is not None:
            self._external_log(msg)
        else:
            print(msg, file=sys.stderr, flush=True)

    def _setup_distributed(self) -> None:
        cfg = self.cfg
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.device == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            dev = cfg.device
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device!r} requested but CUDA is not available")
        if dev == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                 and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' requested but MPS (Apple GPU) is not available")
        if world_env > 1 and not (dist.is_available() and dist.is_initialized()):
            backend = "nccl" if dev.startswith("cuda") else "gloo"
            if dev.startswith("cuda"):
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend)
            self._owns_pg = True
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if dev == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            dev = f"cuda:{local}"
        self.device = torch.device(dev)

    def _build(self) -> None:
        cfg = self.cfg
        try:
            self.bundle = DATASETS.get(cfg.dataset)(cfg)
        except (DataError, ConfigError):
            raise
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise DataError(f"dataset {cfg.dataset!r}: {e}") from e
        b = self.bundle
        if len(b.train) == 0 or len(b.val) == 0:
            raise DataError(f"dataset {cfg.dataset!r} has an empty train or val split")
        self.kind = b.kind
        name = cfg.model or b.default_model or "mlp"
        from softnce.models import build_model

        self.model_name = name
        # Bad options surface here as ValueError/TypeError from the factories: usage errors.
        try:
            self.model = build_model(name, b, cfg)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model {name!r}: {e}") from e
        if cfg.finetune and not getattr(self.model, "finetune_loaded", False):
            self._load_finetune(cfg.finetune)
        self.model.to(self.device)
        spec = LOSSES.get(cfg.loss)
        self.hard = spec.targets == "hard"
        # one sample per batch = one candidate (graphs batch many nodes per sample: fine)
        if (spec.uses_negatives and cfg.negatives == "batch" and cfg.batch_size < 2
                and b.kind != "graph"):
            raise ConfigError(
                f"batch_size must be >= 2 for loss {cfg.loss!r} with in-batch negatives; "
                f"found {cfg.batch_size} (a batch of one candidate gives loss 0 by "
                f"construction: nothing would be learnt)")
        try:
            self.criterion = build_loss(cfg, b).to(self.device)
            self.builder = BatchTargetBuilder(cfg, b.kind, b.num_classes, self.hard,
                                              seed=cfg.seed * 1000 + 17 + self.rank)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"loss {cfg.loss!r} on dataset {cfg.dataset!r}: {e}") from e
        self.distiller = None
        if cfg.teacher is not None:  # knowledge distillation (softnce.harness.distill)
            from softnce.harness.distill import Distiller

            self.distiller = Distiller(cfg, b, self.device, self.out, self.rank, self.hard)
            b.train = self.distiller.wrap_train(b.train)  # + sample indices when cached

    def _load_finetune(self, path: str) -> None:
        from softnce.models.checkpoints import load_state_dict_file

        try:
            sd = load_state_dict_file(path)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"--finetune {path}: {e}") from e
        own = self.model.state_dict()
        wrong = sorted(k for k, v in sd.items() if k in own and own[k].is_floating_point()
                       and not v.is_floating_point())
        if wrong:
            raise ConfigError(
                f"--finetune {path}: tensor(s) {', '.join(wrong[:5])} hold {sd[wrong[0]].dtype} "
                f"values but the model's are {own[wrong[0]].dtype}; refusing to cast integer "
                f"or boolean weights silently (not a weight file for this model?)")
        keep = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
        dropped = sorted(k for k in sd if k in own and own[k].shape != sd[k].shape)
        res = self.model.load_state_dict(keep, strict=False)
        self._log(f"finetune: loaded {len(keep)} tensors from {path}; shape mismatch dropped: "
                  f"{dropped[:5]}; missing: {list(res.missing_keys)[:5]}; unexpected: "
                  f"{[k for k in sd if k not in own][:5]}")

    def _loader(self, dataset: Any, batch_size: int, sampler: Sampler, drop_last: bool,
                generator: torch.Generator) -> Any:
        b = self.bundle
        if b.loader_factory is not None:
            return b.loader_factory(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                                    num_workers=self.cfg.workers, drop_last=drop_last,
                                    generator=generator)
        if (isinstance(dataset, torch.utils.data.TensorDataset) and b.collate_fn is None
                and self.cfg.workers == 0):
            return TensorBatchLoader(dataset.tensors, batch_size, sampler, drop_last)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=b.collate_fn,
            num_workers=self.cfg.workers, drop_last=drop_last, generator=generator,
            pin_memory=self.device.type == "cuda",
        )

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        self._setup_distributed()
        threads = torch.get_num_threads()
        self._lock: RunLock | None = None
        self._signal: int | None = None
        self.global_step = 0
        previous = self._install_signal_handlers()
        try:
            return self._run()
        except BaseException as e:
            self._on_run_error(e)
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._lock is not None:
                self._lock.release()
            torch.set_num_threads(threads)
            if self._owns_pg and dist.is_initialized():
                if sys.exc_info()[0] is None:  # all ranks here: leave together (gloo aborts
                    dist.barrier()             # when a peer tears down mid-exchange)
                dist.destroy_process_group()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.rank == 0:
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a file in the way, no permission, read-only file system
                raise ConfigError(f"cannot create output directory {str(self.out)!r}: "
                                  f"{e.strerror or e}") from e
            try:
                self._lock = RunLock(self.out).acquire()
            except RunLockedError as e:
                raise ConfigError(str(e)) from None
            except OSError as e:
                raise ConfigError(f"cannot lock output directory {str(self.out)!r}: "
                                  f"{e.strerror or e}") from e
            self._remove_stale_tmp()
        mode = self._check_output_dir()
        seed_everything(cfg.seed)
        self._build()
        self._set_threads()
        if self.world > 1:  # identical init (DDP broadcasts anyway), different streams per rank
            seed_everything(cfg.seed + 7919 * self.rank)
        b = self.bundle

        # data
        self.train_sampler = ResumableDistributedSampler(
            b.train, num_replicas=self.world, rank=self.rank, shuffle=True, seed=cfg.seed,
            drop_last=False)
        per_rank = self.train_sampler.num_samples
        drop_last = per_rank > cfg.batch_size or self.builder.needs_even_batch
        self.loader_gen = torch.Generator()
        self.loader_gen.manual_seed(cfg.seed * 1000 + 29 + self.rank)
        self.train_loader = self._loader(b.train, cfg.batch_size, self.train_sampler, drop_last,
                                         self.loader_gen)
        n_micro = len(self.train_loader)
        if n_micro == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the training split "
                              f"per process ({per_rank} samples) with an even batch needed")
        self.n_micro = n_micro
        # With full batches (drop_last) an optimiser step is accum_steps full micro-batches and
        # the leftover micro-batches are dropped too, so an epoch has as many steps with
        # --batch-size 64 as with --batch-size 16 --set accum_steps=4 (the same schedule).
        if drop_last and n_micro >= cfg.accum_steps:
            self.steps_per_epoch = n_micro // cfg.accum_steps
        else:
            self.steps_per_epoch = math.ceil(n_micro / cfg.accum_steps)

        # optimisation
        from softnce.harness.optim import build_optimizer

        try:
            self.optimizer = build_optimizer(self.model, cfg.optimizer, cfg.lr,
                                             cfg.weight_decay, cfg.layer_decay)
        except ValueError as e:  # timm: "Optimizer X not found in registry"
            raise ConfigError(f"optimizer {cfg.optimizer!r}: {e} (any timm optimizer name, "
                              f"e.g. adamw, sgd, lamb)") from e
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ema = None
        if cfg.ema is not None:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=cfg.ema)
        fwd = _ForwardLoss(self.model, self.criterion)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            fwd = DDP(fwd, device_ids=ids, find_unused_parameters=bool(
                getattr(self.model, "ddp_find_unused_parameters", False)))
        self.fwd = fwd

        # state
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.loss_sum, self.loss_count = 0.0, 0
        self.best: dict[str, Any] | None = None
        self._pending_best: dict[str, Any] | None = None  # best.pt not yet written
        self.complete = False
        self.records: list[dict[str, Any]] = []
        if mode == "resume":
            self._resume()
        else:
            self._start_fresh()
        if self.rank == 0:  # model.json: what prediction needs (softnce.harness.runs)
            from softnce.harness.runs import write_model_info

            write_model_info(self, fresh=mode != "resume")
        if self.complete:
            self._log(f"run in {self.out} is already complete; nothing to do")
            return self._summary()
        self._train_loop()
        return self._summary()

    def _set_threads(self) -> None:
        """Intra-op threads on CPU (restored when the run ends). Tiny models are fastest on
        one thread; on a loaded 2-core machine two threads made a 200k-parameter MLP step
        ~20x slower (measured 160 vs 7 ms)."""
        n = self.cfg.cpu_threads
        if self.device.type != "cpu" or n is None:
            return
        if n == "auto":
            if sum(p.numel() for p in self.model.parameters()) >= 1_000_000:
                return
            n = 1
        torch.set_num_threads(int(n))

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if self.device.type != "cuda" or amp == "off":
            if amp in ("bf16", "fp16") and self.device.type != "cuda":
                self._log(f"amp={amp} needs CUDA; training in float32 on {self.device}")
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _train_loop(self) -> None:
        cfg = self.cfg
        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        writer = self._tensorboard()
        progress = self._progress()
        t_run = time.perf_counter()
        self._reset_checkpoint_clock()
        self._checks_relaxed, self._relaxed = False, []
        stop = False
        with progress:
            task = progress.add_task("train", total=cfg.epochs * self.steps_per_epoch,
                                     completed=self.global_step, info="")
            while self.epoch < cfg.epochs and not stop:
                self.fwd.train()
                self.criterion.train()
                self.train_sampler.set_epoch(self.epoch)
                self.train_sampler.set_skip(self.step_in_epoch * cfg.accum_steps * cfg.batch_size)
                if self.step_in_epoch == 0:
                    self.loss_sum, self.loss_count = 0.0, 0
                self._restore_loss_checks()  # the first step of every epoch is fully checked
                epoch_start_gen = self.loader_gen.get_state()
                it = iter(self.train_loader)
                t0, samples = time.perf_counter(), 0
                while self.step_in_epoch < self.steps_per_epoch:
                    group = min(cfg.accum_steps,
                                self.n_micro - self.step_in_epoch * cfg.accum_steps)
                    samples += self._optimizer_step(it, group)
                    self.global_step += 1
                    self.step_in_epoch += 1
                    lr = self.optimizer.param_groups[0]["lr"]
                    sps = samples / max(time.perf_counter() - t0, 1e-9)
                    progress.update(task, advance=1, info=(
                        f"epoch {self.epoch + 1}/{cfg.epochs} loss "
                        f"{self.loss_sum / max(self.loss_count, 1):.4f} lr {lr:.2e} "
                        f"{sps:,.0f} samples/s"))
                    if writer is not None:
                        writer.add_scalar("train/loss", self._last_loss, self.global_step)
                        writer.add_scalar("train/lr", lr, self.global_step)
                    if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
                        stop = True
                        break
                    if (cfg.ckpt_every_steps and self.global_step % cfg.ckpt_every_steps == 0
                            and self.step_in_epoch < self.steps_per_epoch):
                        self._save_checkpoint(epoch_start_gen)
                    if (kill_after and self.global_step == kill_after
                            and self.step_in_epoch < self.steps_per_epoch):
                        os.kill(os.getpid(), signal.SIGKILL)
                    if self._signal is not None:
                        break
                epoch_done = self.step_in_epoch >= self.steps_per_epoch
                last = stop or (epoch_done and self.epoch + 1 >= cfg.epochs)
                train_loss = self._reduced_train_loss()
                sps = samples / max(time.perf_counter() - t0, 1e-9)
                if epoch_done:
                    self.epoch += 1
                    self.step_in_epoch = 0
                if last or (epoch_done and self.epoch % cfg.eval_every == 0):
                    rec = self._evaluate_and_record(train_loss, sps, time.perf_counter() - t_run,
                                                   final=last)
                    if writer is not None:
                        for k in METRIC_KEYS:
                            writer.add_scalar(f"val/{k}", rec[k], self.global_step)
                if last:
                    self.complete = True
                gen_state = self.loader_gen.get_state() if epoch_done else epoch_start_gen
                if self._checkpoint_due(force=last or self._signal is not None
                                        or not epoch_done):
                    self._save_checkpoint(gen_state)
                if kill_after and self.global_step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
                if self._signal is not None and not self.complete:
                    raise RunInterrupted(self._signal, self.global_step, self.out)
        if writer is not None:
            writer.close()

    def _reduced_train_loss(self) -> float:
        s = torch.tensor([self.loss_sum, float(self.loss_count)], dtype=torch.float64)
        if self.world > 1:
            s = s.to(self.device)
            dist.all_reduce(s)
            s = s.cpu()
        return float(s[0] / max(s[1], 1.0))

    def _optimizer_step(self, it: Iterator, group: int) -> int:
        cfg = self.cfg
        for g in self.optimizer.param_groups:
            g["lr"] = lr_at(self.global_step, cfg, self.steps_per_epoch) * g.get("lr_scale", 1.0)
        micro = []
        for _ in range(group):
            batch, rows = move_to(next(it), self.device), None
            if self.distiller is not None:
                batch, rows = self.distiller.split_batch(batch)
            x, labels, soft, mask = self.bundle.unpack(batch)
            if mask is not None:
                labels = labels[mask]
                soft = soft[mask] if soft is not None else None
            if group == 1:  # the common case: build the targets right before the forward
                micro.append((x, labels, soft, mask, rows))
                break
            x, targets = self.builder(x, labels, soft)
            if self.distiller is not None:  # teacher on the (mixed) inputs the student sees
                targets = self.distiller.targets(x, targets, rows, mask)
            micro.append((x, labels, targets, mask, rows))
        # Gradient accumulation with an InfoNCE loss: every micro-batch scores against the
        # targets of the whole optimiser step (targets carry no gradient, so they are known
        # before the first forward), so the objective does not depend on how the step is split.
        step_ctx = contextlib.nullcontext()
        weights = [1.0 / group] * group
        if group > 1 and self._step_candidates_apply():
            step_targets = _cat_targets([m[2] for m in micro])
            step_ctx = self.criterion.step_candidates(step_targets)
            sizes = [_batch_len(m[1]) for m in micro]
            weights = [s / sum(sizes) for s in sizes]
        if self.distiller is not None and self.distiller.loss_scale != 1.0:
            weights = [w * self.distiller.loss_scale for w in weights]  # kd_t2_scaling
        samples = 0
        with step_ctx:
            for i, (x, labels, targets, mask, rows) in enumerate(micro):
                if group == 1:
                    x, targets = self.builder(x, labels, targets)
                    if self.distiller is not None:
                        targets = self.distiller.targets(x, targets, rows, mask)
                samples += self._micro_step(x, labels, targets, mask, i, group, weights[i])
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        if not self._checks_relaxed:
            self._relax_loss_checks()
        return samples

    def _relax_loss_checks(self) -> None:
        """See :func:`softnce.harness.step.relax_checks` (the rest of the epoch unchecked)."""
        self._relaxed, self._checks_relaxed = relax_checks(self.criterion), True

    def _restore_loss_checks(self) -> None:
        restore_checks(getattr(self, "_relaxed", []))
        self._relaxed, self._checks_relaxed = [], False

    def _step_candidates_apply(self) -> bool:
        """Step candidates for an in-batch InfoNCE criterion on unmasked rows of a plain model.

        Only ``negatives: batch``, where the split step then equals the whole step as one batch.
        The separated modes (queue / sampled / simplex) score each micro-batch against their own
        negatives as without accumulation (documented in ``docs/harness-api.md``)."""
        return (hasattr(self.criterion, "step_candidates")
                and LOSSES.get(self.cfg.loss).uses_negatives and self.cfg.negatives == "batch"
                and getattr(self.model, "compute_loss", None) is None
                and not self.bundle.kind == "graph")

    def _micro_step(self, x: Any, labels: torch.Tensor, targets: Any, mask: Any, i: int,
                    group: int, weight: float) -> int:
        sync = i == group - 1 or self.world == 1
        ctx = contextlib.nullcontext() if sync or not hasattr(self.fwd, "no_sync") \
            else self.fwd.no_sync()
        with ctx:
            try:
                with self._autocast():
                    loss = (self.fwd(x, targets, mask) if mask is not None
                            else self.fwd(x, targets))
                value = float(loss.detach())
            except ValueError as e:  # the losses refuse non-finite logits
                if "finite" not in str(e):
                    raise
                value = float("nan")
            if not math.isfinite(value):
                raise NonFiniteLossError(
                    f"non-finite training loss {value} at optimiser step "
                    f"{self.global_step + 1} (epoch {self.epoch + 1}, micro-batch {i + 1}/"
                    f"{group}); the last good checkpoint in {self.out} was kept"
                ) from None
            scaled = loss * weight if weight != 1.0 else loss
            (self.scaler.scale(scaled) if self.scaler.is_enabled() else scaled).backward()
        self.loss_sum += value
        self.loss_count += 1
        self._last_loss = value
        return _batch_len(labels)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    # ------------------------------------------------------------------ output
    def _summary(self) -> dict[str, Any]:
        if not self.records:
            mpath = self.out / "metrics.jsonl"
            if mpath.is_file():
                self.records = read_metrics(mpath)
        final = self.records[-1] if self.records else {}
        best = self.best or (max(self.records, key=lambda r: (r["top1"], -r["nll"]))
                             if self.records else {})
        summary = {
            "final": final,
            "best": best,
            "best_epoch": best.get("epoch"),
            "epochs": self.cfg.epochs,
            "steps": self.global_step,
            "complete": self.complete,
            "loss": self.cfg.loss,
            "dataset": self.cfg.dataset,
            "model": self.model_name,
            "seed": self.cfg.seed,
            "temperature": self.cfg.temperature,
            "world_size": self.world,
            "output_dir": str(self.out),
            "splits": dict(self.bundle.splits),
        }
        from softnce.harness.runs import BEST_FILE, BEST_METRIC

        summary.update(best_metric=BEST_METRIC, best_checkpoint=BEST_FILE)
        if self.complete:
            test = self._test_evaluation()
            if test is not None:
                summary["test"] = test
                summary["test_protocol"] = (
                    "metrics on the held-out test split at the end of the run; *_ts after a "
                    "temperature T fitted on the calibration split only (predictions "
                    "softmax(z / (temperature * T)), T = temperature_ts)")
        if self.rank == 0:
            _atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run one training job; returns the summary (also in ``<output_dir>/summary.json``)."""
    return Trainer(cfg, log=log).run()
