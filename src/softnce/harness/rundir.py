"""The run directory of a training run: refusing to overwrite a run, the lock, fresh start,
checkpoints (atomic, checksummed) and exact resume, the metrics log (a half-written last line is
repaired), and a clean stop on SIGINT / SIGTERM. Mixed into :class:`softnce.harness.trainer.Trainer`."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from softnce.harness.config import ConfigError
from softnce.harness.state import (
    _atomic_write_text,
    _config_diff,
    atomic_save,
    git_commit,
    package_versions,
    remove_own_tmp_files,
    rng_state,
    set_rng_state,
    verify_checksum,
)


class RunInterrupted(RuntimeError):
    """SIGINT / SIGTERM stopped the run at a safe point (its checkpoint is the last step)."""

    def __init__(self, signum: int, step: int, out: Any) -> None:
        self.signum, self.step, self.out = signum, step, out
        super().__init__(f"interrupted at step {step}; continue with --resume")

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


#: Files of a run (in its output directory) whose presence means the directory holds a run.
CHECKPOINT = "checkpoint.pt"
RUN_FILES = (CHECKPOINT, "config.json", "metrics.jsonl", "summary.json")
#: Written by a fresh start (an --overwrite removes them first).
_FRESH_REMOVES = (CHECKPOINT, CHECKPOINT + ".sha256", "metrics.jsonl", "summary.json",
                  "val_logits.pt", "test_logits.pt")
_CKPT_KEYS = ("model", "optimizer", "scaler", "ema", "criterion", "epoch", "step_in_epoch",
              "global_step", "loss_sum", "loss_count", "best", "complete", "per_rank")


def _read_json_object(path: Any, what: str = "run file") -> dict[str, Any]:
    """A JSON object from ``path``; ConfigError naming the file for anything else."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path} is not UTF-8 text (corrupt?)") from None
    except ValueError as e:
        raise ConfigError(f"{what} {path} is corrupt (not valid JSON: {e})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} {path} is corrupt: expected a JSON object, found "
                          f"{type(obj).__name__}")
    return obj


def read_metrics(path: Any, repair: bool = False) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``. A last line without its newline that does not parse
    (a write cut short, e.g. by a full disk) is dropped (and with ``repair`` truncated from the
    file); any other bad line is a ConfigError naming the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    lines = raw.split(b"\n")
    partial = lines.pop() if lines else b""  # "" when the file ends with a newline
    recs: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ConfigError(f"{path} is corrupt: line {n} is not a JSON record") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise ConfigError(f"{path} is corrupt: line {n} is not a metrics record with a step")
        recs.append(rec)
    if partial.strip():
        try:
            rec = json.loads(partial.decode("utf-8"))
            ok = isinstance(rec, dict) and isinstance(rec.get("step"), int)
        except (UnicodeDecodeError, ValueError):
            ok = False
        if ok:
            recs.append(rec)
        elif repair:
            with open(path, "r+b") as fh:
                fh.truncate(len(raw) - len(partial))
                fh.flush()
                os.fsync(fh.fileno())
    return recs



# ---------------------------------------------------------------------------- samplers


def _now() -> float:
    """The checkpoint policy's clock (a function of its own, so tests can drive it)."""
    return time.monotonic()


class RunDirMixin:
    """Output directory, checkpoint and resume methods of the trainer."""

    def _check_output_dir(self) -> str:
        """'fresh' | 'resume'; raises ConfigError for a directory that already holds a run
        unless ``resume`` (same config; a larger ``epochs`` extends it) or ``overwrite``."""
        cfg, out = self.cfg, self.out
        self._extend_from: int | None = None
        if cfg.resume and cfg.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: --resume "
                              "continues the run in the output directory, --overwrite deletes it")
        present = [n for n in RUN_FILES if (out / n).is_file()]
        if not present:
            if cfg.resume:
                self._log(f"--resume: no run in {out}, starting a new run")
            return "fresh"
        if cfg.overwrite:
            self._log(f"--overwrite: starting over in {out}")
            return "fresh"
        saved_cfg = out / "config.json"
        if not cfg.resume:
            state = "finished run" if self._looks_complete() else "unfinished run"
            try:
                diff = _config_diff(_read_json_object(saved_cfg, "run config"), cfg.to_dict())
            except ConfigError:
                diff = []
            if diff:
                raise ConfigError(
                    f"output directory {str(out)!r} already holds a different run ({state}; "
                    f"differing: {', '.join(diff[:8])}); use another --output-dir, or "
                    f"--overwrite to delete it and start over")
            raise ConfigError(
                f"output directory {str(out)!r} already holds a {state}; pass --resume to "
                f"continue it, --overwrite to delete it and start over, or use another "
                f"--output-dir")
        if not saved_cfg.is_file():
            raise ConfigError(f"output directory {str(out)!r} holds run files "
                              f"({', '.join(present)}) but no config.json; --resume cannot "
                              f"check they belong to this run (use --overwrite to start over)")
        saved = _read_json_object(saved_cfg, "run config")
        diff = _config_diff(saved, cfg.to_dict())
        if "epochs" in diff:
            old = saved.get("epochs")
            if isinstance(old, int) and not isinstance(old, bool) and cfg.epochs > old:
                diff.remove("epochs")
                self._extend_from = old
        if diff:
            raise ConfigError(
                f"output directory {str(out)!r} already holds a different run (differing: "
                f"{', '.join(diff[:8])}); use another --output-dir, or --overwrite to start over"
                + ("; --resume may only raise epochs" if "epochs" in diff else ""))
        if (out / CHECKPOINT).is_file():
            return "resume"
        self._log(f"--resume: no checkpoint in {out} yet (killed before its first), starting "
                  f"the run over")
        return "fresh"

    def _remove_stale_tmp(self) -> None:
        """Temporary files (``<name>.<random>.tmp``) left by a killed writer: with the lock held,
        no live process owns them. Symlinks are unlinked, never followed."""
        import re

        pattern = re.compile(r"[\w.-]+\.(pt|json|jsonl|sha256)(\.\w{8})?\.tmp")
        for p in self.out.glob("*.tmp"):
            if not pattern.fullmatch(p.name):
                continue
            with contextlib.suppress(OSError):
                if p.is_symlink() or p.is_file():
                    p.unlink()

    def _looks_complete(self) -> bool:
        try:
            return bool(json.loads((self.out / "summary.json").read_text()).get("complete"))
        except (OSError, ValueError, AttributeError):
            return False

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT / SIGTERM set a flag; the loop stops at the next safe point (after the
        current optimiser step and any write in progress), saves a checkpoint of that step and
        raises :class:`RunInterrupted`. A second signal abandons at once (a write in progress
        is abandoned, its temporary file removed; the previous checkpoint stays)."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._signal is not None:
                raise RunInterrupted(signum, self.global_step, self.out)
            self._signal = signum

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, handler)
        return previous

    def _start_fresh(self) -> None:
        if self.rank != 0:
            return
        for name in _FRESH_REMOVES:
            (self.out / name).unlink(missing_ok=True)
        _atomic_write_text(self.out / "config.json",
                           json.dumps(self.cfg.to_dict(), indent=2, default=str) + "\n")
        info = {
            "seed": self.cfg.seed,
            "argv": sys.argv,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "world_size": self.world,
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "model": self.model_name,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "dataset": {"name": self.bundle.name, "kind": self.bundle.kind,
                        "num_classes": self.bundle.num_classes,
                        "n_train": len(self.bundle.train), "n_val": len(self.bundle.val),
                        "input_shape": list(self.bundle.input_shape)},
            "steps_per_epoch": self.steps_per_epoch,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hostname": platform.node(),
        }
        _atomic_write_text(self.out / "run_info.json", json.dumps(info, indent=2) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def _local_state(self, epoch_start_gen: torch.Tensor) -> dict[str, Any]:
        return {"rng": rng_state(), "builder": self.builder.state_dict(),
                "loader_generator": epoch_start_gen}

    def _checkpoint_due(self, force: bool = False) -> bool:
        """An epoch-end checkpoint is due when ``force`` (final epoch, a signal, a broken-off
        epoch) or ``ckpt_every_seconds`` have passed since the last one. Under DDP the flags
        are all-reduced (MAX), so every rank takes the same decision even when only one of them
        got a signal or its clock says so (the save is a collective)."""
        interval = float(self.cfg.ckpt_every_seconds)
        due = force or interval <= 0 or _now() - self._last_ckpt_time >= interval
        if self.world > 1:
            flag = torch.tensor([int(due)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            due = bool(flag.item())
        return due

    def _reset_checkpoint_clock(self) -> None:
        self._last_ckpt_time = _now()

    def _save_checkpoint(self, epoch_start_gen: torch.Tensor) -> None:
        self._last_ckpt_time = _now()
        local = self._local_state(epoch_start_gen)
        if self.world > 1:
            per_rank: list[Any] = [None] * self.world
            dist.all_gather_object(per_rank, local)
        else:
            per_rank = [local]
        if self.rank != 0:
            return
        self._flush_best()  # first: a checkpoint never names a best that is not on disk
        ckpt = {
            "format": 1,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "criterion": self.criterion.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "best": self.best or {},
            "complete": self.complete,
            "world_size": self.world,
            "per_rank": per_rank,
            "config": json.loads(json.dumps(self.cfg.to_dict(), default=str)),
        }
        atomic_save(ckpt, self.out / CHECKPOINT)

    def _flush_best(self) -> None:
        """Write ``best.pt`` if an evaluation since the last write made new best weights.

        ``best.pt`` is written with the checkpoints (at most every ``ckpt_every_seconds``, and
        always at the end, on a signal and when the run stops on an error), not at every
        improvement: a 30-epoch run improves a dozen times, and each write is a serialisation,
        a hash and three fsynced atomic writes. So on disk ``best.pt`` goes with the
        checkpoint beside it, with one exception: a run stopped by an error writes the best it
        evaluated after its last checkpoint (:meth:`_on_run_error`). A resume from that
        checkpoint re-finds that best where training is bit-exact (CPU, ``workers=0``) and says
        so when it starts (:meth:`_note_best_ahead`)."""
        payload = getattr(self, "_pending_best", None)
        if payload is not None:
            from softnce.harness.runs import write_best_weights

            write_best_weights(self.out, payload)
            self._pending_best = None

    def _on_run_error(self, error: BaseException) -> None:
        """On the way out of a run that raised: a signal's stop (:class:`RunInterrupted`, its
        checkpoint already written) removes this process's temporary files; any other error
        (a non-finite loss, a failing data set) still leaves the best weights the run
        evaluated. A failure to write them is reported and never hides the error that
        stopped the run."""
        if isinstance(error, RunInterrupted):
            remove_own_tmp_files()
            return
        if getattr(self, "_pending_best", None) is None or self.rank != 0:
            return
        try:
            self._flush_best()
        except Exception as e:  # noqa: BLE001 - the original error is what the user needs
            self._log(f"could not write the best weights to {self.out}: {e}")

    def _load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, verified against its sha256 sidecar; ConfigError naming the file
        for anything unreadable, corrupt or incomplete."""
        path = self.out / CHECKPOINT
        try:
            if verify_checksum(path) is None:
                self._log(f"{path}: no checksum file (written by an older softnce); not verified")
        except (ValueError, OSError) as e:
            raise ConfigError(f"cannot resume: {e}") from None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - zip, pickle, EOF, runtime: all mean corrupt
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"cannot resume: checkpoint {path} is corrupt or not a softnce "
                              f"checkpoint ({type(e).__name__}: {first})") from None
        if not isinstance(ckpt, dict):
            raise ConfigError(f"cannot resume: checkpoint {path} is corrupt: expected a dict, "
                              f"found {type(ckpt).__name__}")
        missing = [k for k in _CKPT_KEYS if k not in ckpt]
        if missing:
            raise ConfigError(f"cannot resume: checkpoint {path} is incomplete (missing "
                              f"{', '.join(missing)})")
        return ckpt

    def _resume(self) -> None:
        path = self.out / CHECKPOINT
        ckpt = self._load_checkpoint()
        if ckpt.get("world_size", 1) != self.world:
            raise ConfigError(f"checkpoint in {self.out} was written with world size "
                              f"{ckpt.get('world_size')}; now {self.world}")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt["scaler"] and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler"])
            if self.ema is not None and ckpt["ema"]:
                self.ema.load_state_dict(ckpt["ema"])
            self.criterion.load_state_dict(ckpt["criterion"])
            self.criterion.to(self.device)
            self.epoch = int(ckpt["epoch"])
            self.step_in_epoch = int(ckpt["step_in_epoch"])
            self.global_step = int(ckpt["global_step"])
            self.loss_sum, self.loss_count = float(ckpt["loss_sum"]), int(ckpt["loss_count"])
            self.best = dict(ckpt["best"]) if ckpt["best"] else None
            self.complete = bool(ckpt["complete"])
            local = ckpt["per_rank"][self.rank]
            set_rng_state(local["rng"])
            self.builder.load_state_dict(local["builder"])
            self.loader_gen.set_state(local["loader_generator"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"cannot resume: checkpoint {path} does not fit this run "
                              f"({type(e).__name__}: {first})") from None
        if not (0 <= self.step_in_epoch <= self.steps_per_epoch and self.global_step >= 0):
            raise ConfigError(f"cannot resume: checkpoint {path} is corrupt (step "
                              f"{self.step_in_epoch} of an epoch of {self.steps_per_epoch})")
        if self._extend_from is not None:
            if self.complete and self.epoch < self.cfg.epochs and (
                    self.cfg.max_steps is None or self.global_step < self.cfg.max_steps):
                self.complete = False
            self._log(f"--resume: extending the run from {self._extend_from} to "
                      f"{self.cfg.epochs} epochs; the cosine schedule is recomputed over the "
                      f"new total, so the learning rate jumps up at step {self.global_step}")
            if self.rank == 0:
                _atomic_write_text(self.out / "config.json", json.dumps(
                    self.cfg.to_dict(), indent=2, default=str) + "\n")
        # keep only the evaluations covered by the checkpoint (a cut-off last line is dropped)
        mpath = self.out / "metrics.jsonl"
        if mpath.is_file():
            recs = read_metrics(mpath, repair=self.rank == 0)
            self.records = [r for r in recs if r["step"] <= self.global_step]
            if self.rank == 0:
                _atomic_write_text(mpath, "".join(json.dumps(r) + "\n" for r in self.records))
        self._log(f"resumed {self.out} at epoch {self.epoch} step {self.global_step}")
        self._note_best_ahead()

    def _note_best_ahead(self) -> None:
        """Rank 0 on resume: say so when ``best.pt`` holds an evaluation after the checkpoint's
        step (written by a run stopped on an error); it is kept until this run writes its own
        best, which on a bit-exact resume is the same evaluation again."""
        from softnce.harness.runs import BEST_FILE

        path = self.out / BEST_FILE
        if self.rank != 0 or not path.is_file():
            return
        try:
            step = torch.load(path, map_location="cpu", weights_only=True, mmap=True)[
                "record"]["step"]
        except Exception:  # noqa: BLE001 - unreadable: load_run reports it when asked
            return
        if step > self.global_step:
            self._log(f"{path} holds the evaluation at step {int(step)}, after this "
                      f"checkpoint's step {self.global_step} (the run stopped on an error); "
                      f"it is kept until this run writes its own best")

    # ------------------------------------------------------------------ training
