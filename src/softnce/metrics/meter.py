"""Streaming, DDP-safe calibration meter (bin sums, memory independent of N)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from softnce._validation import check_temperature

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


from softnce.metrics._inputs import (
    _as_targets,
    _as_topk,
    _check_2d,
    _check_n_bins,
    _check_prob_values,
    _floating,
    _prob_rows_bad,
    _to_tensor,
)
from softnce.metrics.functional import (
    _ace,
    _bin_sums,
    _classwise_from_sums,
    _classwise_sums,
    _ece_from_sums,
    _mce_from_sums,
    _sample_stats,
)
from softnce.metrics.reliability import ReliabilityCurve

# --------------------------------------------------------------------------------------------
# streaming meter
# --------------------------------------------------------------------------------------------


def _gather_samples(confs: Tensor, accs: Tensor) -> tuple[Tensor, Tensor]:
    """All ranks' per-sample confidences and accuracies (variable lengths; collective)."""
    local = torch.stack([confs, accs])  # (2, n_local)
    world = dist.get_world_size()
    size = torch.tensor([local.shape[1]], dtype=torch.int64, device=local.device)
    sizes_all = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_all, size)
    lens = [int(s) for s in sizes_all]
    padded = local.new_zeros(2, max(lens))
    padded[:, : local.shape[1]] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    allv = torch.cat([g[:, :ln] for g, ln in zip(gathered, lens)], dim=1)
    return allv[0], allv[1]


def _dist_world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class CalibrationMeter:
    r"""Streaming accumulator for top-k accuracy, ECE, MCE, ACE, classwise ECE, NLL and Brier.

    ``update(logits_or_probs, targets)`` per batch, ``compute()`` at the end, ``reset()`` to
    start over. State (all sums in float64, on the device of the first batch):

    * per equal-width bin: count, sum of top-1 confidences, sum of top-1 correctness
      (``3 * n_bins`` numbers) -> ECE, MCE;
    * per class and bin of :math:`p_c`: count, sum of :math:`p_c`, sum of :math:`y_c`
      (``3 * C * n_bins``) -> classwise ECE (Kull et al. 2019);
    * running sums of per-sample NLL, Brier score and top-k correctness;
    * only for the equal-mass ACE (Nixon et al. 2019): every sample's top-1 confidence and
      correctness, i.e. memory grows with N (two numbers per sample). With
      ``keep_confidences=False`` nothing grows and ``"ace"`` is omitted from ``compute()``.

    The metric definitions and bins are exactly those of the functions in this module, so
    streaming over batches equals the one-shot functions on the concatenated data.

    Distributed: if ``torch.distributed`` is initialised with world size > 1, ``compute()``
    (and :meth:`reliability_curve`, :meth:`prediction_counts`) are collectives: every rank must
    call them; they all-reduce the sums and all-gather the (variable-size) ACE buffers, so every
    rank returns the global numbers. Ranks may see different numbers of samples (also zero).
    All ranks must use the same ``n_bins``/``topk``/``keep_confidences``.

    Args:
        n_bins: number of bins ``M >= 1``.
        inputs: ``"logits"``: ``probs = softmax(x / temperature)``; ``"probs"``: ``x`` are
            probabilities (with ``temperature != 1`` they are re-tempered as
            ``softmax(log(x) / temperature)``, which equals ``softmax(logits / temperature)``);
            ``"auto"``: the first non-empty batch decides: probabilities if all entries are in
            [0, 1] and every row sums to 1 within 1e-3, else logits; the decision is kept until
            :meth:`reset` (``meter.resolved_inputs``).
        temperature: softmax temperature ``> 0``.
        num_classes: number of classes ``C``; inferred from the first batch if ``None``.
        keep_confidences: keep per-sample confidences/accuracies for ACE (see above).
        topk: the ``k`` for the ``"top{k}"`` keys (``k > C`` is clamped to ``C``).
        validate_args: value checks on every batch (NaN, probabilities, label range).

    ``compute()`` returns ``{"top1", "top5", "ece", "mce", "ace", "classwise_ece", "nll",
    "brier", "n"}`` (one ``"top{k}"`` per entry of ``topk``) as Python floats: fractions, not
    percent; ``n`` is the number of samples. With no samples every metric is NaN and ``n = 0``.
    ``classwise_ece`` is NaN if any batch was fed through :meth:`update_stats`, which has no
    per-class probabilities.
    """

    def __init__(
        self,
        n_bins: int = 15,
        inputs: Literal["auto", "logits", "probs"] = "auto",
        temperature: float = 1.0,
        num_classes: int | None = None,
        keep_confidences: bool = True,
        topk: int | Sequence[int] = (1, 5),
        validate_args: bool = True,
    ) -> None:
        self.n_bins = _check_n_bins(n_bins)
        if inputs not in ("auto", "logits", "probs"):
            raise ValueError(f"inputs must be 'auto', 'logits' or 'probs'; found {inputs!r}")
        self.inputs = inputs
        temperature = check_temperature(temperature)
        self.temperature = float(temperature)
        if num_classes is not None and (
            isinstance(num_classes, bool)
            or not isinstance(num_classes, numbers.Integral)
            or num_classes < 1
        ):
            raise ValueError(f"num_classes must be None or an integer >= 1; found {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.keep_confidences = bool(keep_confidences)
        self.topk = _as_topk(topk, "topk")
        if len(set(self.topk)) != len(self.topk):
            raise ValueError(f"topk must not repeat values; found {topk!r}")
        self.validate_args = bool(validate_args)
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget every sample (and the ``"auto"`` decision and inferred ``num_classes``)."""
        self.resolved_inputs: str | None = None if self.inputs == "auto" else self.inputs
        self._classes: int | None = self.num_classes
        self._device: torch.device | None = None
        self._n = 0
        self._bins: Tensor | None = None  # (3, M)
        self._scalars: Tensor | None = None  # (2 + len(topk),): nll, brier, top-k sums
        self._cw: Tensor | None = None  # (3, C, M)
        self._cw_valid = True
        self._pred_counts: Tensor | None = None  # (C',) float64
        self._confs: list[Tensor] = []
        self._accs: list[Tensor] = []

    def _init_state(self, device: torch.device) -> None:
        if self._device is None:
            self._device = device
            self._bins = torch.zeros(3, self.n_bins, dtype=torch.float64, device=device)
            self._scalars = torch.zeros(2 + len(self.topk), dtype=torch.float64, device=device)
        elif device != self._device:
            raise ValueError(
                f"all batches must be on one device: the meter's state is on {self._device}, "
                f"found a batch on {device} (call reset() to switch devices)"
            )

    def _check_classes(self, c: int, name: str) -> None:
        if self._classes is None:
            self._classes = c
        elif c != self._classes:
            raise ValueError(
                f"{name} has {c} classes but the meter expects num_classes={self._classes}"
            )

    # ------------------------------------------------------------------ updates

    def update(self, logits_or_probs: Any, targets: Any) -> None:
        """Add a batch: ``(N, C)`` logits or probabilities and labels / soft targets."""
        x = _floating(
            _to_tensor(logits_or_probs, "logits_or_probs").detach(),
            "logits_or_probs",
            "logits or probabilities",
        )
        if not isinstance(targets, Tensor) and hasattr(targets, "to_dense"):
            targets = targets.to_dense(dtype=x.dtype)
        if isinstance(targets, Tensor):
            targets = targets.detach()
        _check_2d(x, "logits_or_probs", "logits or probabilities")
        n, c = x.shape
        self._check_classes(c, "logits_or_probs")
        if n == 0:
            _as_targets(targets, 0, c, x.device, x.dtype, False)  # shape check only
            return
        mode = self.resolved_inputs
        if mode is None:
            looks_like_probs = not bool(_prob_rows_bad(x)) and bool((x <= 1).all())
            mode = "probs" if looks_like_probs else "logits"
            self.resolved_inputs = mode
        log_probs: Tensor | None = None
        if mode == "probs":
            if self.validate_args:
                hint = (
                    " (inputs were detected as probabilities from the first batch)"
                    if self.inputs == "auto"
                    else ""
                )
                _check_prob_values(x, "logits_or_probs", hint)
            probs = x
            scores = x
            if self.temperature != 1.0:
                scores = torch.log(x.clamp_min(torch.finfo(x.dtype).tiny)) / self.temperature
                log_probs = F.log_softmax(scores, dim=1)
                probs = F.softmax(scores, dim=1)
        else:
            if self.validate_args and bool(torch.isnan(x).any()):
                raise ValueError(
                    f"logits_or_probs must not contain NaN; found {int(torch.isnan(x).sum())} "
                    "NaN entries"
                )
            scores = x / self.temperature if self.temperature != 1.0 else x
            log_probs = F.log_softmax(scores, dim=1)
            probs = F.softmax(scores, dim=1)
        t, soft = _as_targets(targets, n, c, x.device, probs.dtype, self.validate_args)
        st = _sample_stats(probs, t, soft, self.topk, log_probs=log_probs, scores=scores)
        self._accumulate(st.conf, st.acc, st.nll, st.brier, st.topk, st.pred)
        cw = _classwise_sums(probs, t, soft, self.n_bins)
        self._cw = cw if self._cw is None else self._cw.add_(cw)

    def update_stats(
        self,
        confidences: Tensor,
        accuracies: Tensor,
        nll: Tensor,
        brier: Tensor,
        topk_correct: Mapping[int, Tensor],
        predictions: Tensor | None = None,
    ) -> None:
        r"""Add per-sample statistics computed elsewhere (e.g. chunked over a huge label space).

        All arguments are ``(N,)`` tensors on one device: the top-1 confidence
        :math:`\max_c p_c \in [0, 1]`, the top-1 correctness :math:`a \in [0, 1]` (0/1 or the
        target mass on the predicted class), the per-sample NLL :math:`-\sum_c y_c\log p_c`, the
        per-sample Brier score :math:`\sum_c (p_c - y_c)^2`, and ``topk_correct[k]`` (top-k
        correctness or target mass on the top-k classes) for every ``k`` in the meter's
        ``topk`` (extra keys are ignored). ``predictions`` (optional, ``(N,)`` int64 top-1
        classes) feed :meth:`prediction_counts`.

        Without the ``(N, C)`` probabilities there are no per-class statistics, so once a
        non-empty batch came in this way ``compute()["classwise_ece"]`` is NaN until
        :meth:`reset`.
        """
        tensors = {"confidences": confidences, "accuracies": accuracies, "nll": nll, "brier": brier}
        if not isinstance(topk_correct, Mapping):
            raise TypeError(
                f"topk_correct must be a dict {{k: (N,) tensor}}; found {type(topk_correct).__name__}"
            )
        missing = [k for k in self.topk if k not in topk_correct]
        if missing:
            raise ValueError(
                f"topk_correct must have keys {list(self.topk)} (the meter's topk), "
                f"missing {missing}"
            )
        for k in self.topk:
            tensors[f"topk_correct[{k}]"] = topk_correct[k]
        conv: dict[str, Tensor] = {}
        n = None
        for name, v in tensors.items():
            v = _to_tensor(v, name).detach()
            if v.ndim != 1:
                raise ValueError(f"{name} must have shape (N,); found {tuple(v.shape)}")
            if n is None:
                n = v.shape[0]
            elif v.shape[0] != n:
                raise ValueError(f"{name} has {v.shape[0]} entries but confidences has {n}")
            conv[name] = v
        assert n is not None
        conf = conv["confidences"]
        if not conf.is_floating_point():
            raise TypeError(f"confidences must be floating point; found dtype {conf.dtype}")
        if conf.dtype in (torch.float16, torch.bfloat16):
            conf = conf.float()
        dev = conf.device
        for name, v in conv.items():
            if v.device != dev:
                raise ValueError(f"{name} is on {v.device} but confidences is on {dev}")
        acc = conv["accuracies"].to(conf.dtype)
        if predictions is not None:
            predictions = _to_tensor(predictions, "predictions").detach()
            if predictions.shape != (n,):
                raise ValueError(
                    f"predictions must have shape ({n},); found {tuple(predictions.shape)}"
                )
            if predictions.is_floating_point() or predictions.dtype == torch.bool:
                raise TypeError(
                    f"predictions must be integer class indices; found dtype {predictions.dtype}"
                )
            predictions = predictions.to(dev, torch.long)
        if self.validate_args and n > 0:
            self._validate_stats(conf, acc, conv, predictions)
        if n == 0:
            return
        self._accumulate(
            conf,
            acc,
            conv["nll"],
            conv["brier"],
            {k: conv[f"topk_correct[{k}]"] for k in self.topk},
            predictions,
        )
        self._cw_valid = False

    def _validate_stats(
        self, conf: Tensor, acc: Tensor, conv: dict[str, Tensor], pred: Tensor | None
    ) -> None:
        for name in conv:
            if bool(torch.isnan(conv[name].double()).any()):
                raise ValueError(f"{name} must not contain NaN")
        for name, v, hi in (("confidences", conf, 1.0), ("accuracies", acc, 1.0)):
            if bool(((v < 0) | (v > hi)).any()):
                raise ValueError(
                    f"{name} must be in [0, 1]; found range [{float(v.min()):.6g}, "
                    f"{float(v.max()):.6g}]"
                )
        if bool((conv["nll"] < 0).any()):
            raise ValueError(f"nll must be >= 0; found minimum {float(conv['nll'].min()):.6g}")
        b = conv["brier"].double()
        if bool(((b < -1e-9) | (b > 2 + 1e-9)).any()):
            raise ValueError(
                f"brier must be in [0, 2]; found range [{float(b.min()):.6g}, {float(b.max()):.6g}]"
            )
        for k in self.topk:
            v = conv[f"topk_correct[{k}]"].double()
            if bool(((v < -1e-9) | (v > 1 + 1e-9)).any()):
                raise ValueError(f"topk_correct[{k}] must be in [0, 1]")
        if pred is not None and bool((pred < 0).any()):
            raise ValueError(f"predictions must be >= 0; found {int(pred.min())}")
        if pred is not None and self._classes is not None and bool((pred >= self._classes).any()):
            raise ValueError(
                f"predictions must be < num_classes={self._classes}; found {int(pred.max())}"
            )

    def _accumulate(
        self,
        conf: Tensor,
        acc: Tensor,
        nll: Tensor,
        brier: Tensor,
        topk: Mapping[int, Tensor],
        pred: Tensor | None,
    ) -> None:
        self._init_state(conf.device)
        assert self._bins is not None and self._scalars is not None
        self._n += int(conf.shape[0])
        self._bins.add_(_bin_sums(conf, acc, self.n_bins))
        parts = [nll.to(torch.float64).sum(), brier.to(torch.float64).sum()]
        parts += [topk[k].to(torch.float64).sum() for k in self.topk]
        self._scalars.add_(torch.stack(parts))
        if self.keep_confidences:
            self._confs.append(conf.detach().clone())
            self._accs.append(acc.detach().clone())
        if pred is not None:
            size = int(pred.max()) + 1
            if self._classes is not None:
                size = max(size, self._classes)
            counts = torch.bincount(pred, minlength=size).to(torch.float64)
            if self._pred_counts is None:
                self._pred_counts = counts
            else:
                if counts.numel() > self._pred_counts.numel():
                    counts[: self._pred_counts.numel()] += self._pred_counts
                    self._pred_counts = counts
                else:
                    self._pred_counts[: counts.numel()] += counts

    # ------------------------------------------------------------------ reduction

    def _comm_device(self) -> torch.device:
        if self._device is not None:
            return self._device
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _global_state(self, with_samples: bool) -> dict[str, Any]:
        """Local state, or under DDP the state summed/gathered over all ranks (collective)."""
        dev = self._comm_device() if _dist_world() > 1 else (self._device or torch.device("cpu"))
        m = self.n_bins
        bins = (
            self._bins
            if self._bins is not None
            else torch.zeros(3, m, dtype=torch.float64, device=dev)
        )
        scalars = (
            self._scalars
            if self._scalars is not None
            else torch.zeros(2 + len(self.topk), dtype=torch.float64, device=dev)
        )
        cw, cw_valid = self._cw, self._cw_valid
        pred = self._pred_counts
        confs = accs = None
        if with_samples and self.keep_confidences:
            if self._confs:
                confs, accs = torch.cat(self._confs), torch.cat(self._accs)
                if accs.dtype != confs.dtype:
                    accs = accs.to(confs.dtype)
            else:
                confs = torch.zeros(0, dtype=torch.float32, device=dev)
                accs = torch.zeros(0, dtype=torch.float32, device=dev)
        n = float(self._n)
        if _dist_world() == 1:
            return {
                "n": n,
                "bins": bins,
                "scalars": scalars,
                "cw": cw if cw_valid else None,
                "pred": pred,
                "confs": confs,
                "accs": accs,
            }

        # header: [C of classwise state (MAX), classwise invalid (MAX), prediction-count length
        # (MAX), float64-samples flag (MAX)]
        c_local = 0 if cw is None else cw.shape[1]
        header = torch.tensor(
            [
                c_local,
                0 if cw_valid else 1,
                0 if pred is None else pred.numel(),
                int(confs is not None and confs.dtype == torch.float64),
            ],
            dtype=torch.int64,
            device=dev,
        )
        dist.all_reduce(header, op=dist.ReduceOp.MAX)
        c_glob, cw_invalid, p_len, f64 = (int(v) for v in header.tolist())
        use_cw = c_glob > 0 and not cw_invalid
        if use_cw and cw is not None and cw.shape[1] != c_glob:
            raise ValueError(
                f"ranks disagree on the number of classes ({cw.shape[1]} here, {c_glob} elsewhere)"
            )
        chunks = [
            torch.tensor([n], dtype=torch.float64, device=dev),
            bins.reshape(-1),
            scalars.reshape(-1),
        ]
        if use_cw:
            chunks.append(
                cw.reshape(-1)
                if cw is not None
                else torch.zeros(3 * c_glob * m, dtype=torch.float64, device=dev)
            )
        if p_len:
            pc = torch.zeros(p_len, dtype=torch.float64, device=dev)
            if pred is not None:
                pc[: pred.numel()] = pred
            chunks.append(pc)
        flat = torch.cat([ch.to(dev) for ch in chunks])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        sizes = [1, 3 * m, scalars.numel(), 3 * c_glob * m if use_cw else 0, p_len]
        parts = list(torch.split(flat, sizes))
        out: dict[str, Any] = {
            "n": float(parts[0]),
            "bins": parts[1].view(3, m),
            "scalars": parts[2],
            "cw": parts[3].view(3, c_glob, m) if use_cw else None,
            "pred": parts[4] if p_len else None,
            "confs": None,
            "accs": None,
        }
        if with_samples and self.keep_confidences:
            assert confs is not None and accs is not None
            dtype = torch.float64 if f64 else torch.float32
            out["confs"], out["accs"] = _gather_samples(confs.to(dev, dtype), accs.to(dev, dtype))
        return out

    # ------------------------------------------------------------------ results

    def compute(self) -> dict[str, float]:
        """The metrics over everything seen since :meth:`reset` (global under DDP).

        Keys: ``top{k}`` for each ``k`` in ``topk``, ``ece``, ``mce``, ``ace`` (only with
        ``keep_confidences``), ``classwise_ece``, ``nll``, ``brier``, ``n``. Does not change
        the state, so ``update`` can continue afterwards.
        """
        g = self._global_state(with_samples=True)
        n = g["n"]
        keys = [f"top{k}" for k in self.topk] + ["ece", "mce"]
        keys += ["ace"] if self.keep_confidences else []
        keys += ["classwise_ece", "nll", "brier"]
        if n == 0:
            out = dict.fromkeys(keys, math.nan)
            out["n"] = 0.0
            return out
        dev = g["bins"].device
        nan = torch.full((), math.nan, dtype=torch.float64, device=dev)
        s = g["scalars"]
        vals = [s[2 + i] / n for i in range(len(self.topk))]
        vals += [_ece_from_sums(g["bins"]), _mce_from_sums(g["bins"])]
        if self.keep_confidences:
            vals.append(_ace(g["confs"], g["accs"], self.n_bins))
        vals.append(_classwise_from_sums(g["cw"]) if g["cw"] is not None else nan)
        vals += [s[0] / n, s[1] / n]
        floats = torch.stack([v.to(dev, torch.float64) for v in vals]).tolist()
        out = dict(zip(keys, floats))
        out["n"] = float(n)
        return out

    def reliability_curve(self) -> ReliabilityCurve:
        """The equal-width reliability curve of everything seen (collective under DDP)."""
        return ReliabilityCurve.from_sums(self._global_state(with_samples=False)["bins"])

    def prediction_counts(self) -> Tensor | None:
        """``(C,)`` int64 count of top-1 predictions per class (global under DDP; collective).

        Filled by :meth:`update` and by :meth:`update_stats` calls that pass ``predictions``;
        ``None`` if no predictions were seen. Useful to spot collapse onto a few classes.
        """
        pred = self._global_state(with_samples=False)["pred"]
        return None if pred is None else pred.round().to(torch.int64)

    def __repr__(self) -> str:
        return (
            f"CalibrationMeter(n_bins={self.n_bins}, inputs={self.inputs!r}, "
            f"temperature={self.temperature}, n={self._n})"
        )
