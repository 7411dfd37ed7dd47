"""Evaluation helpers: metrics from logits (raw and after temperature scaling fitted on a
calibration split), and metrics against a known p(y|x)."""

from __future__ import annotations

import json
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from softnce.harness.progress import _fmt_epoch
from softnce.harness.samplers import ShardSampler
from softnce.harness.state import atomic_save, move_to


def truth_metrics(logits: torch.Tensor, true_probs: torch.Tensor, temperature: float) -> dict:
    r"""Calibration against a known ``p*(y|x)``: ``kl_to_truth`` = mean KL(p* || p),
    ``ece_to_truth`` = mean ``|max_c p_c - p*(argmax p)|``, ``bayes_top1`` = mean ``max_c p*_c``
    (the accuracy of the Bayes classifier)."""
    logp = F.log_softmax(logits.double() / temperature, dim=1)
    pt = true_probs.double()
    kl = (pt * (pt.clamp_min(1e-300).log() - logp)).sum(1)
    conf, pred = logp.exp().max(1)
    return {
        "kl_to_truth": float(kl.mean()),
        "ece_to_truth": float((conf - pt.gather(1, pred[:, None]).squeeze(1)).abs().mean()),
        "bayes_top1": float(pt.max(1).values.mean()),
    }



def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                        true_probs: torch.Tensor | None = None) -> dict[str, float]:
    """top-1/top-5, ECE/MCE/ACE (15 bins), NLL, Brier of ``softmax(logits / temperature)``
    (and the truth metrics when ``true_probs`` is known)."""
    from softnce.metrics import CalibrationMeter

    c = logits.shape[1]
    meter = CalibrationMeter(n_bins=15, inputs="logits", temperature=temperature,
                             num_classes=c, topk=(1, 5))
    meter.update(logits, labels)
    out = {k: float(v) for k, v in meter.compute().items()}
    if true_probs is not None and len(true_probs) == len(logits):
        out.update(truth_metrics(logits, true_probs, temperature))
    return out


def heldout_metrics(cal_logits: torch.Tensor, cal_labels: torch.Tensor, test_logits: torch.Tensor,
                 test_labels: torch.Tensor, temperature: float,
                 test_true_probs: torch.Tensor | None = None) -> dict[str, float]:
    """The held-out protocol: test metrics raw, and with suffix ``_ts`` after temperature
    scaling fitted on the *calibration* logits only; ``temperature_ts`` is the fitted factor
    (predictions ``softmax(z / (temperature * temperature_ts))``)."""
    from softnce.metrics import TemperatureScaler

    raw = metrics_from_logits(test_logits, test_labels, temperature, test_true_probs)
    scaler = TemperatureScaler().fit(cal_logits.double() / temperature, cal_labels)
    t_ts = float(scaler.temperature)
    scaled = metrics_from_logits(test_logits, test_labels, temperature * t_ts, test_true_probs)
    out = dict(raw)
    out.update({f"{k}_ts": v for k, v in scaled.items() if k != "bayes_top1"})
    out["temperature_ts"] = t_ts
    return out


#: N * C floats up to which logits are kept (``save_val_logits="auto"``, ``test_logits.pt``).
SAVE_LOGITS_LIMIT = 20_000_000


class EvaluationMixin:
    """The trainer's evaluation: per-epoch metrics on the calibration split, and the held-out
    protocol at the end (needs the trainer's model, bundle, loaders and distributed state)."""

    @torch.no_grad()
    def evaluate(self, split: str = "val", keep: bool | None = None
                 ) -> tuple[dict[str, float], torch.Tensor | None, torch.Tensor | None]:
        """Metrics on ``split`` (``"val"``: the calibration split, or ``"test"``) on all ranks
        and, if kept (``keep``; default: the ``save_val_logits`` rule), the gathered logits."""
        from softnce.metrics import CalibrationMeter

        cfg, b = self.cfg, self.bundle
        data = b.val if split == "val" else b.test
        true_probs = b.val_true_probs if split == "val" else b.test_true_probs
        model = self.ema.module if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        meter = CalibrationMeter(n_bins=15, inputs="logits", temperature=cfg.temperature,
                                 num_classes=b.num_classes, topk=(1, 5))
        sampler = ShardSampler(len(data), self.rank, self.world)
        gen = torch.Generator()
        gen.manual_seed(0)
        loader = self._loader(data, cfg.resolved_eval_batch_size, sampler, False, gen)
        stats_hook = getattr(model, "eval_stats", None)
        if keep is None:
            keep = (cfg.save_val_logits is True
                    or (cfg.save_val_logits == "auto"
                        and len(data) * b.num_classes <= SAVE_LOGITS_LIMIT)
                    or true_probs is not None)
        keep = keep and stats_hook is None
        # optional ``bundle.extra["val_row_ids"]``: batch -> (rows,) int64 stable key per row,
        # saved as ``row_ids`` in val_logits.pt so row order never matters (multi-process eval)
        row_ids_fn = b.extra.get(f"{split}_row_ids") if isinstance(b.extra, dict) else None
        all_logits, all_labels, all_ids, masked = [], [], [], False
        self.val_row_ids = None
        for batch in loader:
            batch = move_to(batch, self.device)
            x, labels, _soft, mask = b.unpack(batch)
            kw = {"mask": mask} if mask is not None else {}
            if stats_hook is not None:
                with self._autocast():
                    stats = stats_hook(x, labels, cfg.temperature, **kw)
                meter.update_stats(**stats)
                continue
            with self._autocast():
                logits = model(x)
            logits = logits.float()
            if mask is not None:
                logits, labels = logits[mask], labels[mask]
                masked = True
            meter.update(logits, labels)
            if keep:
                all_logits.append(logits.cpu())
                all_labels.append(labels.cpu())
                if row_ids_fn is not None:
                    ids = row_ids_fn(batch)
                    all_ids.append((ids[mask] if mask is not None else ids).long().cpu())
        metrics = meter.compute()
        model.train(was_training)
        if not keep:
            return metrics, None, None
        logits = torch.cat(all_logits) if all_logits else torch.zeros(0, b.num_classes)
        labels = torch.cat(all_labels) if all_labels else torch.zeros(0, dtype=torch.long)
        row_ids = (torch.cat(all_ids) if all_ids else torch.zeros(0, dtype=torch.long)) \
            if row_ids_fn is not None else None
        if self.world > 1:
            parts: list[Any] = [None] * self.world
            dist.all_gather_object(parts, (logits, labels, row_ids))
            if masked:  # order of masked rows is not recoverable; concatenate by rank
                logits = torch.cat([p[0] for p in parts])
                labels = torch.cat([p[1] for p in parts])
                if row_ids is not None:
                    row_ids = torch.cat([p[2] for p in parts])
            else:
                n = sum(len(p[1]) for p in parts)
                logits = torch.zeros(n, b.num_classes)
                labels = torch.zeros(n, dtype=torch.long)
                if row_ids is not None:
                    row_ids = torch.zeros(n, dtype=torch.long)
                for r, (lg, lb, ri) in enumerate(parts):
                    logits[r::self.world] = lg
                    labels[r::self.world] = lb
                    if row_ids is not None:
                        row_ids[r::self.world] = ri
        if split == "val":
            self.val_row_ids = row_ids
        if true_probs is not None and not masked and len(logits) == len(true_probs):
            metrics.update(truth_metrics(logits, true_probs, cfg.temperature))
        return metrics, logits, labels

    def _test_evaluation(self) -> dict[str, Any] | None:
        """The held-out protocol at the end of a run: metrics on the test split raw, and after
        a temperature fitted on the calibration split only (``*_ts``, ``temperature_ts``)."""
        if self.bundle.test is None or len(self.bundle.test) == 0:
            return None
        metrics, test_logits, test_labels = self.evaluate("test", keep=True)
        if test_logits is None:  # a model scoring through eval_stats (huge C): raw only
            return {k: float(v) for k, v in metrics.items()}
        _, cal_logits, cal_labels = self.evaluate("val", keep=True)
        out = heldout_metrics(cal_logits, cal_labels, test_logits, test_labels,
                              self.cfg.temperature, self.bundle.test_true_probs)
        if self.rank == 0 and test_logits.numel() <= SAVE_LOGITS_LIMIT:
            atomic_save({"logits": test_logits.float(), "labels": test_labels.long(),
                         "temperature": self.cfg.temperature,
                         "temperature_ts": out["temperature_ts"]}, self.out / "test_logits.pt")
        return out

    def _evaluate_and_record(self, train_loss: float, sps: float, elapsed: float,
                             final: bool = True) -> dict:
        """Evaluate on the calibration split, append to metrics.jsonl; ``val_logits.pt`` is
        written at the final evaluation only (one write per run, not one per epoch)."""
        metrics, logits, labels = self.evaluate()
        epoch = self.epoch if self.step_in_epoch == 0 else \
            self.epoch + self.step_in_epoch / self.steps_per_epoch
        rec: dict[str, Any] = {"epoch": epoch, "step": self.global_step,
                               "train_loss": train_loss,
                               "lr": self.optimizer.param_groups[0]["lr"]}
        rec.update({k: (float(v) if isinstance(v, (int, float)) else v)
                    for k, v in metrics.items()})
        rec["samples_per_s"] = sps
        rec["time_s"] = elapsed
        self.records.append(rec)
        if self.best is None or (rec["top1"], -rec["nll"]) > (self.best["top1"],
                                                             -self.best["nll"]):
            self.best = dict(rec)
            if self.rank == 0:  # best.pt: weights only (EMA when used) of this evaluation,
                from softnce.harness.runs import best_weights  # written with the next checkpoint

                self._pending_best = None  # free the older copy before taking this one
                self._pending_best = best_weights(self, rec)
        if self.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            save_logits = final and logits is not None and (
                self.cfg.save_val_logits is True
                or (self.cfg.save_val_logits == "auto"
                    and logits.numel() <= SAVE_LOGITS_LIMIT))
            if save_logits:
                saved = {"logits": logits.float(), "labels": labels.long(),
                         "epoch": epoch, "temperature": self.cfg.temperature}
                if getattr(self, "val_row_ids", None) is not None:
                    saved["row_ids"] = self.val_row_ids
                atomic_save(saved, self.out / "val_logits.pt")
            line = (f"epoch {_fmt_epoch(epoch)}/{self.cfg.epochs} step {self.global_step} "
                    f"loss {train_loss:.4f} top1 {rec['top1']:.4f} nll {rec['nll']:.4f} "
                    f"ece {rec['ece']:.4f} brier {rec['brier']:.4f}")
            self._log(line)
        return rec

