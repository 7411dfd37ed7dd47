"""Reliability curves and diagrams (matplotlib imported only when plotting)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure


from softnce.metrics._inputs import _check_n_bins
from softnce.metrics.functional import _bin_sums, _prepare, _top1

# --------------------------------------------------------------------------------------------
# reliability curves and diagrams
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin statistics of an equal-width reliability diagram.

    Attributes:
        confidence: ``(M,)`` float64 mean top-1 confidence per bin (NaN for empty bins).
        accuracy: ``(M,)`` float64 mean correctness per bin (NaN for empty bins).
        count: ``(M,)`` int64 number of samples per bin.
        bin_edges: ``(M + 1,)`` float64 edges ``linspace(0, 1, M + 1)``.
    """

    confidence: Tensor
    accuracy: Tensor
    count: Tensor
    bin_edges: Tensor

    @classmethod
    def from_sums(cls, sums: Tensor) -> ReliabilityCurve:
        """Build from ``(3, M)`` per-bin (count, sum of confidences, sum of accuracies)."""
        count = sums[0]
        safe = count.clamp_min(1)
        empty = count == 0
        nan = torch.full_like(count, math.nan)
        m = sums.shape[1]
        return cls(
            confidence=torch.where(empty, nan, sums[1] / safe),
            accuracy=torch.where(empty, nan, sums[2] / safe),
            count=count.round().to(torch.int64),
            bin_edges=torch.linspace(0.0, 1.0, m + 1, dtype=torch.float64, device=sums.device),
        )

    @property
    def n_bins(self) -> int:
        return int(self.count.numel())

    @property
    def n(self) -> int:
        """Total number of samples."""
        return int(self.count.sum())

    def _gaps(self) -> Tensor:
        return torch.nan_to_num(self.accuracy - self.confidence, nan=0.0)

    @property
    def ece(self) -> float:
        """ECE recomputed from the bins: ``sum_b count_b / N * |acc_b - conf_b|``."""
        n = self.n
        return math.nan if n == 0 else float((self.count * self._gaps().abs()).sum() / n)

    @property
    def mce(self) -> float:
        """MCE over the non-empty bins."""
        nonempty = self.count > 0
        return math.nan if not bool(nonempty.any()) else float(self._gaps()[nonempty].abs().max())


def reliability_curve(
    probs: Any, targets: Any, n_bins: int = 15, *, validate_args: bool = True
) -> ReliabilityCurve:
    """Per-bin mean confidence, accuracy and count of the top-1 prediction (equal-width bins).

    The binning is that of :func:`expected_calibration_error`, so ``curve.ece`` equals it.
    """
    p, t, soft = _prepare(probs, targets, n_bins, validate_args)
    conf, acc, _ = _top1(p, t, soft)
    return ReliabilityCurve.from_sums(_bin_sums(conf, acc, n_bins))


def _to_curve(item: Any, n_bins: int, name: str) -> ReliabilityCurve:
    if isinstance(item, ReliabilityCurve):
        return item
    if hasattr(item, "reliability_curve") and callable(item.reliability_curve):
        curve = item.reliability_curve()
        if isinstance(curve, ReliabilityCurve):
            return curve
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return reliability_curve(item[0], item[1], n_bins)
    raise TypeError(
        f"{name} must be a ReliabilityCurve, a (probs, targets) pair or a CalibrationMeter, "
        f"found {type(item).__name__}"
    )


def plot_reliability_diagram(
    curves_or_dict: Any,
    path: str | Path | None = None,
    *,
    n_bins: int = 15,
    title: str | None = None,
    show_histogram: bool = True,
    panel_size: tuple[float, float] = (3.6, 4.2),
    dpi: int = 120,
) -> Figure:
    """Draw reliability diagrams for one or several models side by side.

    Each model gets a column: on top, per-bin accuracy bars with the gap to the bin's mean
    confidence drawn as a hatched bar (red: over-confident, blue: under-confident), the
    diagonal of perfect calibration and the ECE in the legend; below (``show_histogram``), the
    fraction of samples per confidence bin with the mean confidence and accuracy marked.

    Args:
        curves_or_dict: a :class:`ReliabilityCurve`, a ``(probs, targets)`` pair, a
            :class:`CalibrationMeter`, or a dict ``name -> any of these`` (one column each,
            in dict order).
        path: if given, save there; the format follows the extension (``.png``, ``.svg``,
            ``.pdf``). Parent directories are created.
        n_bins: bins for entries given as ``(probs, targets)``.
        title: optional figure title.
        show_histogram: add the confidence histogram row.
        panel_size: ``(width, height)`` in inches per model column.
        dpi: resolution for raster output.

    Returns:
        the ``matplotlib.figure.Figure`` (Agg canvas; pyplot's global state is not touched).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    over, under = "#c44e52", "#55a8c4"  # gap colours: over- / under-confident bins
    _check_n_bins(n_bins)
    if path is not None:
        path = Path(path)
        if path.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise ValueError(f"path must end in .png, .svg or .pdf; found {str(path)!r}")
    if isinstance(curves_or_dict, Mapping):
        if not curves_or_dict:
            raise ValueError("curves_or_dict must contain at least one model; found an empty dict")
        items = {
            str(k): _to_curve(v, n_bins, f"curves_or_dict[{k!r}]")
            for k, v in curves_or_dict.items()
        }
    else:
        items = {"model": _to_curve(curves_or_dict, n_bins, "curves_or_dict")}

    ncols = len(items)
    nrows = 2 if show_histogram else 1
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(nrows, ncols, height_ratios=[3, 1] if show_histogram else [1])
    for col, (name, curve) in enumerate(items.items()):
        edges = curve.bin_edges.detach().cpu().double().numpy()
        width = edges[1:] - edges[:-1]
        centers = edges[:-1] + width / 2
        acc = curve.accuracy.detach().cpu().double().numpy()
        conf = curve.confidence.detach().cpu().double().numpy()
        count = curve.count.detach().cpu().double().numpy()
        nonempty = count > 0
        ax = fig.add_subplot(gs[0, col])
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
        ax.bar(
            centers[nonempty],
            acc[nonempty],
            width=width[nonempty],
            color="#4c72b0",
            edgecolor="black",
            lw=0.6,
            label="accuracy",
        )
        gap = conf[nonempty] - acc[nonempty]
        colors = [over if g > 0 else under for g in gap]
        ax.bar(
            centers[nonempty],
            gap,
            bottom=acc[nonempty],
            width=width[nonempty],
            color=colors,
            alpha=0.45,
            edgecolor=colors,
            hatch="//",
            lw=0.6,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(f"{name}  (N = {curve.n})", fontsize=10)
        ax.set_ylabel("accuracy")
        handles, _ = ax.get_legend_handles_labels()
        handles.append(
            Patch(
                facecolor=over,
                edgecolor=over,
                alpha=0.45,
                hatch="//",
                label=f"gap (ECE = {100 * curve.ece:.2f}%)",
            )
        )
        ax.legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
        if show_histogram:
            ax.tick_params(labelbottom=False)
            hx = fig.add_subplot(gs[1, col], sharex=ax)
            total = max(count.sum(), 1.0)
            hx.bar(centers, count / total, width=width, color="0.6", edgecolor="black", lw=0.5)
            n = count.sum()
            if n > 0:
                mean_conf = float((count * conf)[nonempty].sum() / n)
                mean_acc = float((count * acc)[nonempty].sum() / n)
                hx.axvline(mean_conf, color="#c44e52", lw=1.2, label=f"mean conf {mean_conf:.3f}")
                hx.axvline(
                    mean_acc, color="#4c72b0", lw=1.2, ls="--", label=f"accuracy {mean_acc:.3f}"
                )
                hx.legend(loc="upper left", fontsize=7, frameon=False)
            hx.set_xlabel("confidence")
            hx.set_ylabel("fraction")
        else:
            ax.set_xlabel("confidence")
    if title:
        fig.suptitle(title)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
