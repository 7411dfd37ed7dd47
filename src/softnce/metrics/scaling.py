"""Temperature scaling (Guo et al. 2017) fitted on held-out logits."""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from softnce._validation import check_temperature

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass


from softnce.metrics._inputs import _as_targets, _check_2d, _check_n_bins, _floating, _to_tensor
from softnce.metrics.functional import expected_calibration_error

# --------------------------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------------------------


class TemperatureScaler:
    r"""Temperature scaling (Guo et al. 2017): one scalar :math:`T > 0` fitted on held-out data.

    ``fit(logits, labels)`` minimises the validation NLL

    .. math::
        \mathcal L(T) = -\frac1N \sum_i \sum_c y_{ic} \log \operatorname{softmax}(z_i / T)_c

    over :math:`\log T` with L-BFGS (strong-Wolfe line search, float64). :math:`\mathcal L` is
    convex in :math:`1/T`, so this normally finds the optimum; as a safeguard the result is
    compared with :math:`T = 1` (or, when ``bounds`` exclude 1, the bound closest to 1) and with
    the best point of a log-spaced grid over ``bounds``, and the candidate with the lowest NLL
    is kept, so the fitted NLL is never worse than at :math:`T = 1` whenever ``bounds`` contain
    1. :math:`T` is clamped to ``bounds`` (separable validation data would otherwise drive
    :math:`T \to 0`). ``report()`` gives the NLL at :math:`T = 1` (``nll_before``) and at the
    returned :math:`T` (``nll_after``).

    ``transform(logits)`` returns ``logits / T`` (argmax, hence accuracy, unchanged);
    ``predict_proba(logits)`` returns ``softmax(logits / T)``; ``report()`` gives NLL and ECE
    before (T = 1) and after on the fitting data.

    Args:
        temperature: initial / fixed temperature (used by ``transform`` before any ``fit``).
        n_bins: bins for the ECE in :meth:`report`.
        max_iter: L-BFGS iterations.
        bounds: ``(T_min, T_max)``.
    """

    def __init__(
        self,
        temperature: float = 1.0,
        *,
        n_bins: int = 15,
        max_iter: int = 100,
        bounds: tuple[float, float] = (1e-2, 1e2),
    ) -> None:
        temperature = check_temperature(temperature)
        lo, hi = bounds
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"bounds must satisfy 0 < T_min < T_max < inf; found {bounds!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1; found {max_iter!r}")
        self.temperature = float(temperature)
        self.n_bins = _check_n_bins(n_bins)
        self.max_iter = int(max_iter)
        self.bounds = (float(lo), float(hi))
        self._report: dict[str, float] | None = None

    @staticmethod
    def _nll_at(z: Tensor, t: Tensor, soft: bool, log_t: Tensor) -> Tensor:
        lp = F.log_softmax(z / log_t.exp(), dim=1)
        if soft:
            return (
                -(torch.where(t > 0, t * lp, torch.zeros((), dtype=lp.dtype, device=lp.device)))
                .sum(1)
                .mean()
            )
        return -lp.gather(1, t[:, None]).mean()

    def fit(self, logits: Any, labels: Any, *, validate_args: bool = True) -> TemperatureScaler:
        """Fit the temperature on validation ``logits`` ``(N, C)`` and labels or soft targets."""
        x = _floating(_to_tensor(logits, "logits"), "logits", "logits")
        _check_2d(x, "logits", "logits")
        if x.shape[0] == 0:
            raise ValueError(f"logits must contain at least one sample; found shape {tuple(x.shape)}")
        if validate_args and not bool(torch.isfinite(x).all()):
            raise ValueError(
                f"logits must be finite; found {int((~torch.isfinite(x)).sum())} NaN/inf entries"
            )
        z = x.detach().to(torch.float64)
        t, soft = _as_targets(
            labels, z.shape[0], z.shape[1], z.device, torch.float64, validate_args, name="labels"
        )
        lo, hi = math.log(self.bounds[0]), math.log(self.bounds[1])

        def nll(v: float) -> float:
            return float(
                self._nll_at(z, t, soft, torch.tensor(v, dtype=torch.float64, device=z.device))
            )

        # L-BFGS on log T
        param = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)
        opt = torch.optim.LBFGS(
            [param],
            lr=1.0,
            max_iter=self.max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
        )

        def closure() -> Tensor:
            opt.zero_grad()
            loss = self._nll_at(z, t, soft, param)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        cand = {"lbfgs": float(param.detach())}
        if not math.isfinite(cand["lbfgs"]):
            del cand["lbfgs"]
        else:
            cand["lbfgs"] = min(max(cand["lbfgs"], lo), hi)
        grid = torch.linspace(lo, hi, 25, dtype=torch.float64).tolist()
        grid_nll = [nll(v) for v in grid]
        best = min(range(len(grid)), key=lambda i: grid_nll[i])
        cand["grid"] = grid[best]
        # T = 1 when the bounds admit it, else the bound closest to 1
        cand["identity"] = min(max(0.0, lo), hi)
        scores = {k: nll(v) for k, v in cand.items()}
        method = min(scores, key=lambda k: scores[k])
        self.temperature = min(max(math.exp(cand[method]), self.bounds[0]), self.bounds[1])
        nll_before = nll(0.0)

        probs_before = F.softmax(z, dim=1)
        probs_after = F.softmax(z / self.temperature, dim=1)
        self._report = {
            "temperature": self.temperature,
            "nll_before": nll_before,
            "nll_after": nll(math.log(self.temperature)),
            "ece_before": float(
                expected_calibration_error(probs_before, t, self.n_bins, validate_args=False)
            ),
            "ece_after": float(
                expected_calibration_error(probs_after, t, self.n_bins, validate_args=False)
            ),
            "n": float(z.shape[0]),
        }
        self.method_ = method
        return self

    def transform(self, logits: Tensor) -> Tensor:
        """``logits / T``."""
        return logits / self.temperature

    __call__ = transform

    def predict_proba(self, logits: Tensor) -> Tensor:
        """``softmax(logits / T)`` over the last dimension."""
        return F.softmax(logits / self.temperature, dim=-1)

    def report(self) -> dict[str, float]:
        """``{"temperature", "nll_before", "nll_after", "ece_before", "ece_after", "n"}``.

        Before = ``T = 1``; measured on the data passed to :meth:`fit`.
        """
        if self._report is None:
            raise RuntimeError("TemperatureScaler.report() needs fit() first")
        return dict(self._report)

    def __repr__(self) -> str:
        return f"TemperatureScaler(temperature={self.temperature:.4f})"
