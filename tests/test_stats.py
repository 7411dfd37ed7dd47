"""The one aggregation function: t quantiles, intervals and paired differences against
scipy.stats on fixed inputs, and the verdict logic on constructed inputs."""

from __future__ import annotations

import math

import pytest
import scipy.stats as st

from softnce.metrics.stats import paired_difference, summarize, t_quantile, verdict


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 100, 1000])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(p, df):
    assert t_quantile(p, df) == pytest.approx(st.t.ppf(p, df), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("values", [[0.91, 0.93, 0.92], [1.0, 2.0, 4.0, 8.0, 16.0],
                                    [0.1, 0.1000001], [3.0, -1.0, 2.5, 0.0, 7.0, 1.0, 2.0]])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_summarize_matches_scipy_t_interval(values, confidence):
    s = summarize(values, confidence)
    n = len(values)
    mean = sum(values) / n
    sem = st.sem(values)  # ddof=1
    lo, hi = st.t.interval(confidence, n - 1, loc=mean, scale=sem)
    assert s["n"] == n and s["mean"] == pytest.approx(mean, rel=1e-12)
    assert s["std"] == pytest.approx(st.tstd(values), rel=1e-12)
    assert s["ci_low"] == pytest.approx(lo, rel=1e-9, abs=1e-12)
    assert s["ci_high"] == pytest.approx(hi, rel=1e-9, abs=1e-12)


def test_summarize_degenerate_inputs():
    one = summarize([0.5])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"])
    assert math.isnan(one["ci_low"]) and math.isnan(one["ci_high"])
    none = summarize([])
    assert none["n"] == 0 and math.isnan(none["mean"])
    assert summarize([1.0, float("nan"), 3.0])["n"] == 2
    with pytest.raises(ValueError, match="confidence"):
        summarize([1.0, 2.0], confidence=1.5)
    with pytest.raises(TypeError, match="values"):
        summarize(["a", "b"])


def test_paired_difference_matches_scipy_on_differences():
    a = [0.10, 0.12, 0.09, 0.11]
    b = [0.13, 0.15, 0.10, 0.16]
    d = paired_difference(a, b)
    diffs = [x - y for x, y in zip(a, b)]
    lo, hi = st.t.interval(0.95, 3, loc=sum(diffs) / 4, scale=st.sem(diffs))
    assert d["ci_low"] == pytest.approx(lo, rel=1e-9) and d["ci_high"] == pytest.approx(hi, rel=1e-9)
    # the paired test agrees with scipy's paired t-test on the sign of the evidence
    assert st.ttest_rel(a, b).pvalue < 0.05 and d["ci_high"] < 0
    with pytest.raises(ValueError, match="pair up"):
        paired_difference([1.0, 2.0], [1.0])


def test_verdict_on_constructed_intervals():
    below = {"ci_low": -0.03, "ci_high": -0.01}   # A - B < 0 for sure
    above = {"ci_low": 0.01, "ci_high": 0.02}     # A - B > 0 for sure
    straddle = {"ci_low": -0.01, "ci_high": 0.02}
    assert verdict(below, "lower") == "holds"
    assert verdict(below, "higher") == "does not hold"
    assert verdict(above, "higher") == "holds"
    assert verdict(above, "lower") == "does not hold"
    assert verdict(straddle, "lower") == "inconclusive"
    assert verdict(straddle, "higher") == "inconclusive"
    assert verdict(paired_difference([1.0], [2.0]), "lower") == "inconclusive"  # one seed
    with pytest.raises(ValueError, match="better"):
        verdict(below, "smaller")
