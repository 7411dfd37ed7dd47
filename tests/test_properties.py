"""Property tests of the public loss / targets / calibration API (hypothesis).

Any call either returns finite values (valid input) or raises ``ValueError`` / ``TypeError``
(invalid input) -- never another exception, never NaN (except the ``mean`` over an empty batch,
which is NaN as in torch). Small by default (CI); set
``SOFTNCE_LONG_FUZZ=1`` for a long run.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import softnce  # noqa: E402
from softnce import SoftTargets, soft_target_cross_entropy, soft_target_infonce  # noqa: E402
from softnce.metrics import (  # noqa: E402
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    top_k_accuracy,
)

LONG = os.environ.get("SOFTNCE_LONG_FUZZ") == "1"
FUZZ = settings(deadline=None, max_examples=2000 if LONG else 40, derandomize=not LONG,
                database=None if not LONG else settings.default.database,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
OK_ERRORS = (ValueError, TypeError)

finite = st.floats(-50, 50, allow_nan=False, width=32)
anyfloat = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def valid_batch(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 6))
    logits = torch.tensor(draw(st.lists(st.lists(finite, min_size=c, max_size=c), min_size=n,
                                        max_size=n)), dtype=torch.float32)
    labels = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    eps = draw(st.floats(0.0, 0.99))
    tau = draw(st.floats(0.05, 20.0))
    return logits, labels, c, eps, tau


@FUZZ
@given(valid_batch())
def test_valid_losses_are_finite_and_non_negative_ce(batch):
    logits, labels, c, eps, tau = batch
    y = SoftTargets.label_smoothing(labels, c, eps)
    dense = y.to_dense()
    assert torch.allclose(dense.sum(1), torch.ones(len(labels)), atol=1e-5)
    for targets in (labels, y, dense):
        ce = soft_target_cross_entropy(logits, targets, temperature=tau)
        nce = soft_target_infonce(logits, targets, temperature=tau)
        assert math.isfinite(float(ce)) and float(ce) >= -1e-5
        assert math.isfinite(float(nce))


def _call_or_allowed(fn, *a, empty_mean_nan: bool = False, **kw):
    try:
        out = fn(*a, **kw)
    except OK_ERRORS:
        return None
    if isinstance(out, torch.Tensor):
        if empty_mean_nan and out.numel() == 1 and torch.isnan(out):
            return out  # the mean over an empty batch is NaN, as in torch (0 / 0)
        assert torch.isfinite(out).all(), out
    return out


@FUZZ
@given(n=st.integers(0, 4), c=st.integers(0, 4),
       vals=st.lists(anyfloat, min_size=0, max_size=16),
       labels=st.lists(st.integers(-3, 6), min_size=0, max_size=5),
       tau=st.one_of(anyfloat, st.just(0.0), st.integers(-2, 3)),
       reduction=st.sampled_from(["mean", "sum", "none", "bogus", 3]))
def test_arbitrary_loss_calls_raise_only_value_or_type_errors(n, c, vals, labels, tau,
                                                             reduction):
    flat = (vals * (n * c + 1))[: n * c] if vals else [0.0] * (n * c)
    logits = torch.tensor(flat, dtype=torch.float32).reshape(n, c) if n * c else torch.zeros(n, c)
    lab = torch.tensor(labels, dtype=torch.long)
    empty = n == 0
    for fn in (soft_target_cross_entropy, soft_target_infonce):
        _call_or_allowed(fn, logits, lab, temperature=tau, reduction=reduction,
                         empty_mean_nan=empty)
        _call_or_allowed(fn, logits, logits.softmax(1) if c else logits, temperature=tau,
                         empty_mean_nan=empty)


@FUZZ
@given(labels=st.lists(st.integers(-2, 8), min_size=0, max_size=6),
       c=st.one_of(st.integers(-1, 8), st.floats(allow_nan=True), st.none()),
       eps=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-1, 2),
                     st.none()),
       lam=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none()))
def test_soft_targets_constructors_raise_only_value_or_type_errors(labels, c, eps, lam):
    lab = torch.tensor(labels, dtype=torch.long)
    for call in (lambda: SoftTargets.label_smoothing(lab, c, eps),
                 lambda: SoftTargets.from_labels(lab, c),
                 lambda: SoftTargets.mix(lab, lab.flip(0), lam, c, smoothing=eps or 0.0)):
        try:
            y = call()
        except OK_ERRORS:
            continue
        d = y.to_dense()
        assert torch.isfinite(d).all() and (d >= -1e-6).all()
        assert torch.allclose(d.sum(1), torch.ones(len(labels)), atol=1e-4)


@FUZZ
@given(n=st.integers(0, 5), c=st.integers(0, 5), vals=st.lists(anyfloat, max_size=25),
       labels=st.lists(st.integers(-2, 6), max_size=6),
       bins=st.one_of(st.integers(-2, 30), st.floats(allow_nan=True), st.none()),
       k=st.one_of(st.integers(-1, 6), st.none()))
def test_calibration_metrics_raise_only_value_or_type_errors(n, c, vals, labels, bins, k):
    flat = (vals * (n * c + 1))[: n * c] if vals else [0.25] * (n * c)
    probs = torch.tensor(flat, dtype=torch.float32).reshape(n, c) if n * c else torch.zeros(n, c)
    lab = torch.tensor(labels, dtype=torch.long)
    for p in (probs, probs.abs().softmax(1) if n * c and torch.isfinite(probs).all()
              else probs):
        _call_or_allowed(expected_calibration_error, p, lab, bins)
        _call_or_allowed(brier_score, p, lab)
        _call_or_allowed(negative_log_likelihood, p, lab)
        _call_or_allowed(top_k_accuracy, p, lab, k)


@FUZZ
@given(valid_batch())
def test_valid_calibration_metrics_are_finite_and_in_range(batch):
    logits, labels, c, _, _ = batch
    p = logits.softmax(1)
    ece = float(expected_calibration_error(p, labels))
    assert 0.0 <= ece <= 1.0 + 1e-6
    assert 0.0 <= float(brier_score(p, labels)) <= 2.0 + 1e-5
    assert math.isfinite(float(negative_log_likelihood(p, labels)))


def test_public_names_exist():
    for name in softnce.__all__:
        assert hasattr(softnce, name)
