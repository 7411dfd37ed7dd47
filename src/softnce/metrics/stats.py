r"""Aggregation over seeds: the one place every report (compare, study, toy, CellTypeGraph CV)
takes its means, spreads, intervals, paired differences and verdicts from.

Conventions (stated in every report that uses them):

* spread: the sample standard deviation, ``ddof=1`` (``nan`` for one value);
* interval: the two-sided Student-t interval of the mean,
  :math:`\bar x \pm t_{1-\alpha/2,\,n-1}\, s / \sqrt n` (95% by default; ``nan`` for one value);
* paired difference of configurations A and B: the per-seed differences
  :math:`d_s = a_s - b_s` (same seed, so the same data split and initialisation) summarised the
  same way;
* verdict on "A is better than B" for a metric: ``"holds"`` when the paired interval excludes 0
  on A's side, ``"does not hold"`` when it excludes 0 on B's side, ``"inconclusive"`` otherwise
  (including fewer than two seeds).

Pure python + math (no numpy / scipy): the t quantile comes from the regularised incomplete beta
function (Lentz's continued fraction) and bisection; tested against ``scipy.stats.t.ppf``.

Example::

    >>> s = summarize([0.91, 0.93, 0.92])
    >>> round(s["mean"], 4), round(s["ci_low"], 4), round(s["ci_high"], 4)
    (0.92, 0.8952, 0.9448)
    >>> verdict(paired_difference([0.02, 0.03, 0.025], [0.05, 0.06, 0.055]), "lower")
    'holds'
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["VERDICTS", "paired_difference", "summarize", "t_quantile", "verdict"]

VERDICTS = ("holds", "does not hold", "inconclusive")


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta :math:`I_x(a, b)`."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) \
        + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution with ``df`` degrees of freedom (``0 < p < 1``)."""
    if not (0.0 < p < 1.0):
        raise ValueError(f"p must be in (0, 1); found {p}")
    if not (df > 0) or math.isinf(df):
        raise ValueError(f"df must be a positive finite number; found {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1); found {confidence!r}")
    return float(confidence)


def _values(values: Sequence[float], name: str) -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a sequence of numbers; found {values!r}") from e
    return out


def summarize(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``{"n", "mean", "std" (ddof=1), "ci_low", "ci_high", "half_width"}`` of ``values``.

    NaN values are dropped (``n`` counts the rest); with fewer than two values ``std`` and the
    interval are ``nan``; with none, ``mean`` is ``nan`` too.
    """
    conf = _check_confidence(confidence)
    xs = [v for v in _values(values, "values") if not math.isnan(v)]
    n = len(xs)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "ci_low": nan, "ci_high": nan,
                "half_width": nan}
    mean = math.fsum(xs) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": nan, "ci_low": nan, "ci_high": nan,
                "half_width": nan}
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + conf / 2.0, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half,
            "half_width": half}


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> dict[str, float]:
    """:func:`summarize` of the per-seed differences ``a[s] - b[s]`` (equal lengths; a pair with
    a NaN on either side is dropped)."""
    xa, xb = _values(a, "a"), _values(b, "b")
    if len(xa) != len(xb):
        raise ValueError(f"a and b must pair up seed by seed; found lengths {len(xa)} and "
                         f"{len(xb)}")
    return summarize([x - y for x, y in zip(xa, xb)], confidence)


def verdict(diff: dict[str, float], better: str) -> str:
    """Verdict on "A is better than B" from the paired interval of ``A - B``.

    ``better``: ``"lower"`` (ECE, NLL, Brier, KL) or ``"higher"`` (accuracy).
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"better must be 'lower' or 'higher'; found {better!r}")
    lo, hi = diff.get("ci_low", float("nan")), diff.get("ci_high", float("nan"))
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if better == "lower":
        lo, hi = -hi, -lo
    if lo > 0:
        return "holds"
    if hi < 0:
        return "does not hold"
    return "inconclusive"
