"""The validation vocabulary of ``softnce._validation``: one checker per constraint, one
tolerance rule (:func:`simplex_atol`), one wording, ValueError for values, TypeError for types."""

from __future__ import annotations

import math

import pytest
import torch

from softnce import SoftTargetInfoNCE, SoftTargets, soft_target_infonce
from softnce._validation import (
    SIMPLEX_ATOL,
    check_float_dtype,
    check_labels,
    check_logits,
    check_probability_vector,
    check_row_sums,
    check_simplex_rows,
    check_temperature,
    diagnose_logits,
    simplex_atol,
)


def test_simplex_atol_rule():
    assert simplex_atol(torch.float32) == SIMPLEX_ATOL == simplex_atol(torch.float64)
    assert simplex_atol(None) == SIMPLEX_ATOL
    assert simplex_atol(torch.float16) == pytest.approx(2 * 2.0**-10)
    assert simplex_atol(torch.bfloat16) == pytest.approx(2 * 2.0**-7)
    # rounding a probability vector to dtype keeps its sum within eps/2 of one, whatever C is
    for dtype in (torch.float16, torch.bfloat16):
        gen = torch.Generator().manual_seed(0)
        for c in (3, 100, 10000):
            p = torch.rand(64, c, generator=gen, dtype=torch.float64)
            p = p / p.sum(1, keepdim=True)
            dev = (p.to(dtype).double().sum(1) - 1).abs().max()
            assert float(dev) <= torch.finfo(dtype).eps / 2 + 1e-12
            check_simplex_rows("p", p.to(dtype))


def test_check_simplex_rows_messages():
    check_simplex_rows("y", torch.full((2, 4), 0.25))
    check_simplex_rows("y", torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"y must be finite; found NaN or infinite entries"):
        check_simplex_rows("y", torch.tensor([[math.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"y must be non-negative .*found minimum -0.5"):
        check_simplex_rows("y", torch.tensor([[1.5, -0.5]]))
    with pytest.raises(ValueError, match=r"y rows must sum to 1 \(tolerance 0.001\); row 1 "
                                         r"sums to 0.9"):
        check_simplex_rows("y", torch.tensor([[0.5, 0.5], [0.5, 0.4]]))
    with pytest.raises(ValueError, match=r"tolerance 0.015625\); row 0 sums to 1.1"):
        check_simplex_rows("y", torch.tensor([[0.6, 0.5]], dtype=torch.bfloat16))


def test_check_row_sums_reports_nan_rows():
    with pytest.raises(ValueError, match=r"row 1 sums to nan"):
        check_row_sums("t", torch.tensor([1.0, math.nan, 1.2]), torch.float32)


def test_check_temperature_types_and_values():
    assert check_temperature(2) == 2.0
    assert check_temperature(torch.tensor(0.5)) == 0.5
    for bad in ("1", None, True, [1.0]):
        with pytest.raises(TypeError, match=r"temperature must be a positive float; found"):
            check_temperature(bad)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"temperature must be > 0 and finite; found"):
            check_temperature(bad)
    with pytest.raises(ValueError, match=r"tau must be > 0"):
        check_temperature(0, name="tau")
    with pytest.raises(ValueError, match=r"temperature must be a positive scalar; found a tensor"):
        check_temperature(torch.ones(2))


def test_check_probability_vector():
    q = torch.full((4,), 0.25)
    assert check_probability_vector("q", q, 4, True) is q
    with pytest.raises(ValueError, match=r"q must be finite"):
        check_probability_vector("q", torch.tensor([math.nan, 1.0]), None, True)
    with pytest.raises(ValueError, match=r"q must be strictly positive.*indices \[1\]"):
        check_probability_vector("q", torch.tensor([1.0, 0.0]), None, True)
    with pytest.raises(ValueError, match=r"q must sum to 1 \(tolerance 0.001\); found sum 1.2"):
        check_probability_vector("q", torch.tensor([0.6, 0.6]), None, True)
    with pytest.raises(TypeError, match=r"q must be a floating-point tensor"):
        check_probability_vector("q", torch.tensor([1, 1]), None, True)
    # the dtype rule applies: a bfloat16 prior rounded from float32 is accepted
    q16 = (torch.rand(1000) + 0.1)
    check_probability_vector("q", (q16 / q16.sum()).to(torch.bfloat16), None, True)


def test_labels_logits_dtype_checkers():
    with pytest.raises(ValueError, match=r"y must hold class indices in \[0, 2\]; found values "
                                         r"in \[0, 3\]"):
        check_labels("y", torch.tensor([0, 3]), 3, None, True)
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor"):
        check_logits(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must be finite; found 2 NaN"):
        check_logits(torch.tensor([[math.nan, math.inf]]), True)
    with pytest.raises(ValueError, match=r"z must be finite"):
        diagnose_logits(torch.tensor([math.nan]), "z")
    with pytest.raises(TypeError, match=r"dtype must be a real floating-point torch.dtype"):
        check_float_dtype("dtype", torch.complex128)


def test_one_tolerance_everywhere():
    """Dense rows, sparse rows and noise vectors use the same rule."""
    y = torch.full((3, 5), 0.2 + 1.5e-4)  # sums 1.00075: inside 1e-3
    soft_target_infonce(torch.zeros(3, 5), y)
    SoftTargets(torch.tensor([[0]]), torch.tensor([[1.0009]]), torch.zeros(1), 3)
    SoftTargetInfoNCE(noise_probs=torch.tensor([0.5, 0.5009]))
    for call in (lambda: soft_target_infonce(torch.zeros(3, 5), torch.full((3, 5), 0.2 + 3e-4)),
                 lambda: SoftTargets(torch.tensor([[0]]), torch.tensor([[1.0011]]),
                                     torch.zeros(1), 3),
                 lambda: SoftTargetInfoNCE(noise_probs=torch.tensor([0.5, 0.5011]))):
        with pytest.raises(ValueError, match=r"sum to 1.*tolerance 0.001"):
            call()



def test_noise_probs_changed_in_place_are_checked_again():
    """No caching of a passed check: in-place changes, also through .data or numpy, raise."""
    import numpy as np

    from softnce import soft_target_infonce

    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    q = torch.full((4,), 0.25)
    soft_target_infonce(z, y, q)
    q.data.mul_(2)                       # bypasses the version counter
    with pytest.raises(ValueError, match="noise_probs must sum to 1"):
        soft_target_infonce(z, y, q)
    a = np.full(4, 0.25, dtype=np.float32)
    qn = torch.from_numpy(a)
    soft_target_infonce(z, y, qn)
    a[1] = -0.5
    with pytest.raises(ValueError, match="strictly positive"):
        soft_target_infonce(z, y, qn)
    with torch.inference_mode():
        qi = torch.full((4,), 0.25)
    soft_target_infonce(z, y, qi)        # inference tensors are fine
