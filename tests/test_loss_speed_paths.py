"""The fast loss paths (issue 13) and the loss-API defects of issues 12/16.

* the custom autograd function for ``SoftTargets`` scores (values and gradients against the
  float64 loop references, ``gradcheck``), the dense path with 1/tau folded into the scores;
* validation on derived quantities: a NaN/inf logit anywhere still raises the same message;
  with ``validate_args=False`` no host synchronisation at all;
* dtype-aware simplex tolerance, float64 noise and queue, empty batches, overflow, degenerate
  ``SoftTargets``, the single-candidate warning;
* ``SoftTargetInfoNCE.step_candidates`` (gradient accumulation independent of the split).

No timing assertions here: speed is measured by ``benchmarks/bench_losses.py``.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch

import softnce._scores as L
import softnce._validation as _validation
from reference import RefQueue, ref_batch_infonce, ref_separated_infonce, ref_soft_target_ce
from softnce import (
    InfoNCE,
    SoftTargetCrossEntropy,
    SoftTargetInfoNCE,
    SoftTargets,
    separated_infonce,
    soft_target_cross_entropy,
    soft_target_infonce,
)


def _soft(n: int, c: int, gen: torch.Generator, k: int = 2, uniform: bool = True,
          dtype=torch.float64) -> SoftTargets:
    idx = torch.randint(c, (n, k), generator=gen)
    w = torch.rand(n, k, generator=gen, dtype=dtype) + 0.05
    u = (torch.rand(n, generator=gen, dtype=dtype) * 0.5 if uniform
         else torch.zeros(n, dtype=dtype))
    w = w / w.sum(dim=1, keepdim=True) * (1 - u).unsqueeze(1)
    return SoftTargets(idx, w, u, c)


def _grad(fn, z: torch.Tensor, weights: torch.Tensor | None = None):
    x = z.detach().clone().requires_grad_()
    out = fn(x)
    (out * weights).sum().backward() if weights is not None else out.sum().backward()
    return out.detach(), x.grad


FORMS = ["k1-smooth", "k2-uniform", "k3-no-uniform", "labels", "dense"]


def _targets(form: str, n: int, c: int, gen: torch.Generator):
    if form == "k1-smooth":
        return SoftTargets.label_smoothing(torch.randint(c, (n,), generator=gen), c, 0.2,
                                           dtype=torch.float64)
    if form == "k2-uniform":
        return _soft(n, c, gen, 2, True)
    if form == "k3-no-uniform":
        return _soft(n, c, gen, 3, False)
    if form == "labels":
        return torch.randint(c, (n,), generator=gen)
    raw = torch.rand(n, c, generator=gen, dtype=torch.float64) + 0.01
    return raw / raw.sum(dim=1, keepdim=True)


# ----------------------------------------------------------- values and gradients vs reference
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("tau", [0.3, 1.0])
@pytest.mark.parametrize("noise", [False, True])
def test_fast_paths_match_reference_values_and_gradients(form, tau, noise):
    gen = torch.Generator().manual_seed(hash((form, tau, noise)) % 2**31)
    n, c = 7, 9
    z = torch.randn(n, c, generator=gen, dtype=torch.float64) * 2
    t = _targets(form, n, c, gen)
    neg = _targets(form, 4, c, gen)
    q = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.1) if noise else None
    q = q / q.sum() if q is not None else None
    w = torch.rand(n, generator=gen, dtype=torch.float64)
    cases = [
        (lambda x: soft_target_infonce(x, t, q, tau, "none"),
         lambda x: ref_batch_infonce(x, t, q, tau, "none")),
        (lambda x: separated_infonce(x, t, neg, q, tau, "none"),
         lambda x: ref_separated_infonce(x, t, neg, q, tau, "none")),
        (lambda x: soft_target_cross_entropy(x, t, tau, "none"),
         lambda x: ref_soft_target_ce(x, t, tau, "none")),
    ]
    for impl, ref in cases:
        v, g = _grad(impl, z, w)
        v_ref, g_ref = _grad(ref, z, w)
        torch.testing.assert_close(v, v_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("uniform", [True, False])
def test_sparse_scores_function_gradcheck(uniform):
    gen = torch.Generator().manual_seed(1)
    n, c = 4, 6
    z = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    cand = _soft(5, c, gen, 2, uniform)
    pos = _soft(n, c, gen, 1, uniform)

    def fn(x):
        s, sp, _ = L._SparseScores.apply(x, *L._sparse_args(cand, x.dtype, 0.7),
                                         *L._sparse_args(pos, x.dtype, 0.7))
        return s, sp

    assert torch.autograd.gradcheck(fn, (z,))
    assert torch.autograd.gradgradcheck is not None  # (second order is not supported: documented)
    # the function equals the dense products
    s, sp = fn(z)
    torch.testing.assert_close(s, 0.7 * z @ cand.to_dense(torch.float64).T)
    torch.testing.assert_close(sp, 0.7 * (z * pos.to_dense(torch.float64)).sum(1))


@pytest.mark.parametrize("negatives", ["batch", "queue", "sampled", "simplex"])
def test_module_gradcheck_through_fast_path(negatives):
    gen = torch.Generator().manual_seed(2)
    n, c = 5, 6
    t = _soft(n, c, gen, 2, True)
    m = SoftTargetInfoNCE(temperature=0.6, negatives=negatives, queue_size=4, num_negatives=3)
    if negatives == "queue":
        m(torch.zeros(3, c, dtype=torch.float64), _soft(3, c, gen))
        m.eval()
    z = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)

    def fn(x):
        torch.manual_seed(0)
        return m(x, t)

    assert torch.autograd.gradcheck(fn, (z,))


def test_targets_requiring_grad_fall_back_to_autograd():
    gen = torch.Generator().manual_seed(3)
    st = _soft(4, 5, gen)
    w = st.weights.clone().requires_grad_()
    t = SoftTargets(st.indices, w, st.uniform, 5, validate_args=False)
    z = torch.randn(4, 5, dtype=torch.float64)
    soft_target_infonce(z, t, validate_args=False).backward()
    assert w.grad is not None and bool(torch.isfinite(w.grad).all())


# ------------------------------------------------------------------ validation on derived values
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("form", ["labels", "k2-uniform", "dense-onehot", "k3-no-uniform"])
def test_nonfinite_logit_in_an_unused_column_still_raises(bad, form, read_mode):
    """Column 4 carries no target mass in any row: the value never reaches a score except
    through the row sums (sparse) or the 0 * x products of the dense GEMM."""
    gen = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 1, 2, 3])
    t = {"labels": labels,
         "k2-uniform": SoftTargets.mix(labels, labels.flip(0), 0.3, 5),
         "dense-onehot": torch.eye(5)[labels],
         "k3-no-uniform": SoftTargets(torch.tensor([[0, 1, 2]] * 4), torch.full((4, 3), 1 / 3),
                                      torch.zeros(4), 5)}[form]
    z = torch.randn(4, 5, generator=gen)
    z[2, 4] = bad
    calls = [lambda: soft_target_infonce(z, t), lambda: SoftTargetInfoNCE()(z, t),
             lambda: separated_infonce(z, t, torch.tensor([1, 2])),
             lambda: soft_target_cross_entropy(z, t), lambda: SoftTargetCrossEntropy()(z, t),
             lambda: SoftTargetInfoNCE(negatives="sampled", num_negatives=3)(z, t)]
    for call in calls:
        with pytest.raises(ValueError, match=r"logits must be finite; found 1 NaN or infinite"):
            call()


def test_scores_overflow_from_finite_logits_raises_naming_it(read_mode):
    z = torch.tensor([[3e38, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"loss must be finite.*finite logits.*overflow"):
        soft_target_infonce(z, torch.tensor([0, 1]), temperature=0.1)


@contextlib.contextmanager
def _no_host_sync():
    """Make every Python-level read of a tensor value on the host raise."""
    names = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}

    def boom(*_a, **_k):
        raise AssertionError("host synchronisation with validate_args=False")

    try:
        for n in names:
            setattr(torch.Tensor, n, boom)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)


@pytest.mark.parametrize("form", FORMS)
def test_validate_args_false_reads_no_value_on_the_host(form):
    gen = torch.Generator().manual_seed(5)
    n, c = 6, 7
    t = _targets(form, n, c, gen)
    q = torch.full((c,), 1.0 / c, dtype=torch.float64)
    z = torch.randn(n, c, generator=gen, requires_grad=True)
    mods = [SoftTargetInfoNCE(q, 0.5, validate_args=False),
            SoftTargetInfoNCE(q, 0.5, "sampled", num_negatives=4, validate_args=False),
            SoftTargetInfoNCE(None, 0.5, "simplex", num_negatives=4, validate_args=False),
            SoftTargetCrossEntropy(0.5, validate_args=False)]
    with _no_host_sync():
        losses = [soft_target_infonce(z, t, q, 0.5, validate_args=False),
                  separated_infonce(z, t, torch.tensor([1, 2]), q, 0.5, validate_args=False),
                  soft_target_cross_entropy(z, t, 0.5, validate_args=False)]
        losses += [m(z, t) for m in mods]
        sum(losses).backward()
    assert all(bool(torch.isfinite(v)) for v in losses)


@contextlib.contextmanager
def _count_host_reads(batched: bool = True):
    """Count the Python-level reads of tensor values on the host as an accelerator would do
    them (each one a synchronisation on a GPU): the checks are switched to their accelerator
    form, one stack and one read (``batched=False`` keeps the CPU's form, a read of each value,
    which is no synchronisation there). Yields a list of the reads' names."""
    names = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")
    saved = {n: getattr(torch.Tensor, n) for n in names}
    reads: list[str] = []

    def counting(name):
        def read(self, *a, **k):
            reads.append(name)
            return saved[name](self, *a, **k)
        return read

    saved_policy = _validation.BATCH_READS_ON_CPU
    try:
        _validation.BATCH_READS_ON_CPU = batched
        for n in names:
            setattr(torch.Tensor, n, counting(n))
        yield reads
    finally:
        for n, f in saved.items():
            setattr(torch.Tensor, n, f)
        _validation.BATCH_READS_ON_CPU = saved_policy


@pytest.mark.parametrize("form", ["k1-smooth", "k2-uniform", "k3-no-uniform"])
def test_validate_args_true_reads_one_value_with_noise(form):
    """Validated SoftTargets plus a noise vector: the noise check, the logits' finiteness and
    the result fold into one scalar, one host read per call (the noise vector used to cost a
    second one on every functional call)."""
    gen = torch.Generator().manual_seed(6)
    n, c = 6, 7
    t = _targets(form, n, c, gen)
    q = torch.rand(c, generator=gen) + 0.1
    q = q / q.sum()
    z = torch.randn(n, c, generator=gen, requires_grad=True)
    negs = SoftTargets.label_smoothing(torch.tensor([1, 2]), c, 0.1)
    calls = [lambda: soft_target_infonce(z, t, q, 0.5),
             lambda: separated_infonce(z, t, negs, q, 0.5)]
    for call in calls:
        call()  # first call: nothing to validate, but keep the count honest
        with _count_host_reads() as reads:
            loss = call()
        assert len(reads) == 1, reads
        assert bool(torch.isfinite(loss))


_BAD_NOISE = {
    "nan": (0.5, math.nan, 0.25, 0.25, 0.0), "inf": (0.5, math.inf, 0.25, 0.25, 0.0),
    "zero": (0.5, 0.0, 0.25, 0.25, 0.0), "negative": (0.6, -0.1, 0.25, 0.25, 0.0),
    "sum": (0.3, 0.3, 0.3, 0.3, 0.3),
}
_BAD_NOISE_MSG = {"nan": "must be finite", "inf": "must be finite",
                  "zero": r"must be strictly positive.*indices \[1, 4\]",
                  "negative": r"must be strictly positive.*indices \[1, 4\]",
                  "sum": r"must sum to 1 \(tolerance 0.001\); found sum 1.5"}


@pytest.mark.parametrize("bad", sorted(_BAD_NOISE))
@pytest.mark.parametrize("target_form", ["labels", "k2-uniform", "k3-no-uniform", "dense"])
def test_bad_noise_raises_through_the_folded_check(bad, target_form, read_mode):
    """The noise check runs inside the result's scalar now: every bad vector still raises the
    eager check's message, also when no target puts mass on the bad class, when the logits
    are bad too (the noise is named first), for an empty batch, and in both functions."""
    gen = torch.Generator().manual_seed(7)
    q = torch.tensor(_BAD_NOISE[bad])
    if bad in ("zero", "negative"):
        q[4] = 0.0 if bad == "zero" else -0.15
    labels = torch.tensor([0, 2, 3, 0])
    t = {"labels": labels, "k2-uniform": SoftTargets.mix(labels, labels.flip(0), 0.3, 5),
         "k3-no-uniform": SoftTargets(torch.tensor([[0, 2, 3]] * 4), torch.full((4, 3), 1 / 3),
                                      torch.zeros(4), 5),
         "dense": torch.eye(5)[labels]}[target_form]
    z = torch.randn(4, 5, generator=gen)
    z_bad = z.clone()
    z_bad[1, 1] = math.nan
    msg = "noise_probs " + _BAD_NOISE_MSG[bad]
    for logits in (z, z_bad):
        with pytest.raises(ValueError, match=msg):
            soft_target_infonce(logits, t, q)
        with pytest.raises(ValueError, match=msg):
            separated_infonce(logits, t, torch.tensor([2]), q)
    with pytest.raises(ValueError, match=msg):
        soft_target_infonce(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), q)
    # the module checks once, at construction, with the same message
    with pytest.raises(ValueError, match=msg):
        SoftTargetInfoNCE(noise_probs=q)
    # without validation the shape is still checked, the values not
    soft_target_infonce(z, t, q, validate_args=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_noise_within_its_tolerance_is_accepted(dtype):
    q = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=dtype)  # rounds off 1 by up to a few ulps
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(8))
    ref = soft_target_infonce(z, torch.tensor([0, 1, 3]), q.double(), validate_args=False)
    got = soft_target_infonce(z, torch.tensor([0, 1, 3]), q)
    assert abs(float(got) - float(ref)) < 1e-2


def test_validated_soft_targets_are_checked_once():
    st = SoftTargets.mix(torch.tensor([0, 1]), torch.tensor([1, 2]), 0.4, 3, smoothing=0.1)
    raw = SoftTargets(st.indices, st.weights.clone(), st.uniform, 3, validate_args=False)
    assert not raw._validated
    soft_target_infonce(torch.zeros(2, 3), raw)
    assert raw._validated and raw[:1]._validated and raw.to(torch.float64)._validated
    raw.weights.mul_(2)  # in-place mutation after validation is (documented as) not re-checked
    soft_target_infonce(torch.zeros(2, 3), raw)
    bad = SoftTargets(raw.indices, raw.weights, raw.uniform, 3, validate_args=False)
    with pytest.raises(ValueError, match=r"targets weights plus uniform mass must sum to 1"):
        soft_target_infonce(torch.zeros(2, 3), bad)


# ------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_targets_accepted_wrong_rows_rejected(dtype):
    labels = torch.tensor([0, 2, 1])
    st = SoftTargets.label_smoothing(labels, 3, 0.1, dtype=dtype)
    sums = (st.weights.double().sum(1) + st.uniform.double())
    if dtype == torch.bfloat16:
        assert abs(float(sums[0]) - 0.998535) < 1e-6
    fresh = SoftTargets(st.indices, st.weights, st.uniform, 3)  # validated again from scratch
    z = torch.randn(3, 3)
    for t in (fresh, st.to_dense(dtype), SoftTargets.mix(labels, labels.flip(0), 0.3, 3, 0.1,
                                                         dtype=dtype)):
        assert torch.isfinite(soft_target_infonce(z, t))
        assert torch.isfinite(soft_target_cross_entropy(z, t))
    for total in (0.9, 1.1):
        w = torch.full((3, 1), total, dtype=dtype)
        with pytest.raises(ValueError, match=r"weights plus uniform mass must sum to 1"):
            SoftTargets(labels[:, None], w, torch.zeros(3, dtype=dtype), 3)
        dense = torch.zeros(3, 3, dtype=dtype)
        dense[:, 0] = total
        with pytest.raises(ValueError, match=r"targets rows must sum to 1"):
            soft_target_infonce(z, dense)


def test_float64_noise_probs_stay_float64():
    gen = torch.Generator().manual_seed(6)
    n, c = 5, 4
    q = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1
    q = q / q.sum()
    m = SoftTargetInfoNCE(noise_probs=q, temperature=0.5)
    assert m.noise_probs.dtype == torch.float64
    z = torch.randn(n, c, generator=gen, dtype=torch.float64)
    t = torch.randint(c, (n,), generator=gen)
    torch.testing.assert_close(m(z, t), ref_batch_infonce(z, t, q, 0.5), rtol=1e-13,
                               atol=1e-14)
    assert SoftTargetInfoNCE(noise_probs=q.float()).noise_probs.dtype == torch.float32


@pytest.mark.parametrize("dense", [False, True])
def test_queue_keeps_float64_targets(dense):
    gen = torch.Generator().manual_seed(7)
    c = 5
    m = SoftTargetInfoNCE(negatives="queue", queue_size=6)
    ref = RefQueue(6)
    for _ in range(3):
        t = _soft(4, c, gen)
        t = t.to_dense(torch.float64) if dense else t
        z = torch.randn(4, c, generator=gen, dtype=torch.float64)
        cand = ref.dense(c)
        torch.testing.assert_close(m(z, t), ref_separated_infonce(z, t, cand, None),
                                   rtol=1e-13, atol=1e-14)
        ref.push(t, c)
    q = m.queue_candidates(c)
    assert q.dtype == torch.float64
    sd = m.state_dict()
    m2 = SoftTargetInfoNCE(negatives="queue", queue_size=6)
    m2.load_state_dict(sd)
    assert m2.queue_candidates(c).dtype == torch.float64


# ------------------------------------------------------------------------------- defects
def _all_calls(z, t):
    return {
        "infonce": lambda r: soft_target_infonce(z, t, reduction=r),
        "separated": lambda r: separated_infonce(z, t, torch.tensor([1]), reduction=r),
        "ce": lambda r: soft_target_cross_entropy(z, t, reduction=r),
        "module": lambda r: SoftTargetInfoNCE(reduction=r)(z, t),
        "sampled": lambda r: SoftTargetInfoNCE(negatives="sampled", num_negatives=2,
                                               reduction=r)(z, t),
        "infonce-labels": lambda r: InfoNCE(reduction=r)(z, torch.zeros(0, dtype=torch.long)),
    }


@pytest.mark.parametrize("form", ["labels", "soft", "dense"])
def test_empty_batch_gives_zero_with_zero_gradient(form):
    c = 3
    t = {"labels": torch.zeros(0, dtype=torch.long),
         "soft": SoftTargets.mix(torch.zeros(0, dtype=torch.long),
                                 torch.zeros(0, dtype=torch.long), 0.5, c, 0.1),
         "dense": torch.zeros(0, c)}[form]
    for name in _all_calls(None, t):
        for reduction in ("mean", "sum", "none"):
            z = torch.zeros(0, c, requires_grad=True)
            out = _all_calls(z, t)[name](reduction)
            if reduction == "none":
                assert out.shape == (0,), name
                continue
            assert out.shape == () and float(out) == 0.0, (name, reduction)
            out.backward()
            assert z.grad is not None and z.grad.shape == (0, c), name


def test_float32_logits_near_max_do_not_give_nan():
    z = torch.tensor([[2e38, 0, 2e38], [0, 1, 0.0]])
    labels = torch.tensor([1, 0])
    sparse = soft_target_infonce(z, labels)
    dense = soft_target_infonce(z, torch.eye(3)[labels])
    assert torch.isfinite(sparse) and torch.isfinite(dense)
    torch.testing.assert_close(sparse, dense)
    torch.testing.assert_close(sparse.double(), ref_batch_infonce(z, labels), rtol=1e-6, atol=0)
    x = z.clone().requires_grad_()
    soft_target_infonce(x, labels).backward()
    assert bool(torch.isfinite(x.grad).all())
    # with a uniform part the row sum is needed and overflows: a clear error, not NaN
    with pytest.raises(ValueError, match=r"loss must be finite.*overflow"):
        soft_target_infonce(z, SoftTargets.label_smoothing(labels, 3, 0.1))


def test_degenerate_soft_targets_rejected_at_construction():
    with pytest.raises(ValueError, match=r"SoftTargets indices must have at least one component"):
        SoftTargets(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0), torch.ones(2), 3)
    with pytest.raises(ValueError, match=r"at least one component"):
        SoftTargets(torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0), torch.ones(2), 3,
                    validate_args=False)
    for dtype in (torch.complex64, torch.int64):
        with pytest.raises(TypeError, match=r"dtype must be a real floating-point torch.dtype"):
            SoftTargets.mix(torch.tensor([0]), torch.tensor([1]), 0.5, 3, dtype=dtype)
        with pytest.raises(TypeError, match=r"dtype must be a real floating-point"):
            SoftTargets.label_smoothing(torch.tensor([0]), 3, dtype=dtype)


def test_single_candidate_warns_once():
    z, t = torch.zeros(1, 3), torch.tensor([1])
    m = SoftTargetInfoNCE()
    with pytest.warns(UserWarning, match=r"1 candidate\(s\): the loss is exactly 0") as rec:
        m(z, t)
    assert rec[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(m(z, t)) == 0.0  # once per module instance
        SoftTargetInfoNCE(negatives="sampled", num_negatives=2)(z, t)  # has negatives
        SoftTargetInfoNCE()(torch.zeros(2, 3), torch.tensor([0, 1]))
    L._WARNED_FEW_CANDIDATES = False
    with pytest.warns(UserWarning, match=r"exactly 0"):
        soft_target_infonce(z, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soft_target_infonce(z, t)  # once per process for the functions


# ------------------------------------------------------------------------- step candidates
def _accumulate(loss_fn, z, t, sizes, seed=0):
    torch.manual_seed(seed)
    x = z.detach().clone().requires_grad_()
    total = 0.0
    with loss_fn.step_candidates(t):
        start = 0
        for nb in sizes:
            rows = slice(start, start + nb)
            part = loss_fn(x[rows], t[rows]) * nb / len(t)
            part.backward()
            total = total + part.detach()
            start += nb
    return total, x.grad


def _whole(loss_fn, z, t, seed=0, inside=True):
    torch.manual_seed(seed)
    x = z.detach().clone().requires_grad_()
    ctx = loss_fn.step_candidates(t) if inside else contextlib.nullcontext()
    with ctx:
        out = loss_fn(x, t)
    out.backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("form", ["labels", "soft", "dense"])
def test_step_candidates_batch_mode_equals_one_batch(form):
    gen = torch.Generator().manual_seed(8)
    n, c = 64, 11
    z = torch.randn(n, c, generator=gen, dtype=torch.float64)
    labels = torch.randint(c, (n,), generator=gen)
    t = {"labels": labels, "soft": SoftTargets.mix(labels, labels.flip(0), 0.3, c, 0.1),
         "dense": SoftTargets.mix(labels, labels.flip(0), 0.3, c, 0.1).to_dense(torch.float64)
         }[form]
    q = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1
    for loss_fn in (SoftTargetInfoNCE(q / q.sum(), 0.5),
                    *([InfoNCE(q / q.sum(), 0.5)] if form == "labels" else [])):
        v_acc, g_acc = _accumulate(loss_fn, z, t, [16, 16, 16, 16])
        v_one, g_one = _whole(loss_fn, z, t, inside=False)
        torch.testing.assert_close(v_acc, v_one, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_acc, g_one, rtol=1e-12, atol=1e-13)
        v_ref = ref_batch_infonce(z, t, q / q.sum(), 0.5)
        torch.testing.assert_close(v_acc, v_ref.detach(), rtol=1e-12, atol=1e-12)
        v_acc, g_acc = _accumulate(loss_fn, z, t, [5, 30, 29])  # uneven split
        torch.testing.assert_close(g_acc, g_one, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("negatives", ["queue", "sampled", "simplex"])
def test_step_candidates_other_modes_independent_of_split(negatives):
    gen = torch.Generator().manual_seed(9)
    n, c = 24, 7
    z = torch.randn(n, c, generator=gen, dtype=torch.float64)
    t = _soft(n, c, gen, 2, True)

    def make():
        m = SoftTargetInfoNCE(temperature=0.7, negatives=negatives, queue_size=10,
                              num_negatives=5)
        if negatives == "queue":
            m(torch.zeros(6, c, dtype=torch.float64), _soft(6, c, torch.Generator()
                                                            .manual_seed(1)))
        return m

    m_acc, m_one = make(), make()
    v_acc, g_acc = _accumulate(m_acc, z, t, [6, 6, 12], seed=3)
    v_one, g_one = _whole(m_one, z, t, seed=3)
    torch.testing.assert_close(v_acc, v_one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_acc, g_one, rtol=1e-12, atol=1e-13)
    if negatives == "queue":
        # candidates = step targets + the queue before the step; the queue is filled at exit
        before = make().queue_candidates(c).to_dense(torch.float64)
        cands = torch.cat([t.to_dense(torch.float64), before])
        ref = ref_batch_infonce(z, t, None, 0.7, candidates=cands)
        torch.testing.assert_close(v_one, ref.detach(), rtol=1e-12, atol=1e-12)
        assert int(m_acc.queue_len) == 10
        torch.testing.assert_close(m_acc.queue_candidates(c).to_dense(torch.float64)
                                   .sort(0).values,
                                   t.to_dense(torch.float64)[-10:].sort(0).values)
    if negatives == "sampled":
        neg = SoftTargets.from_labels(m_one.last_negatives, c).to_dense(torch.float64)
        cands = torch.cat([t.to_dense(torch.float64), neg])
        ref = ref_batch_infonce(z, t, None, 0.7, candidates=cands)
        torch.testing.assert_close(v_one, ref.detach(), rtol=1e-12, atol=1e-12)


def test_step_candidates_errors():
    m = SoftTargetInfoNCE()
    t = torch.tensor([0, 1, 2])
    with m.step_candidates(t):
        m(torch.zeros(2, 3), t[:2])
        with pytest.raises(ValueError, match=r"more rows than the 3 step targets"):
            m(torch.zeros(2, 3), t[1:])
        with pytest.raises(RuntimeError, match=r"do not nest"):
            with m.step_candidates(t):
                pass
    assert m._step is None
    with pytest.raises(TypeError, match=r"InfoNCE expects integer class labels"):
        with InfoNCE().step_candidates(torch.full((3, 3), 1 / 3)):
            pass


@pytest.mark.parametrize("n,c", [(9, 4), (4, 9), (6, 6)])  # C < M folds into the logits
@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_dense_scores_on_either_side_of_the_product_match_the_reference(n, c, noise, tau):
    """Dense targets: with fewer classes than candidates, 1/tau and log q are folded into the
    (N, C) logits, ``(z / tau - log q) Y^T``; otherwise into the (N, M) scores. Both match the
    float64 loop reference, values and gradients of logits and targets."""
    gen = torch.Generator().manual_seed(n * 10 + c)
    z = torch.randn(n, c, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.softmax(torch.randn(n, c, generator=gen, dtype=torch.float64), 1)
    y.requires_grad_()
    q = None
    if noise:
        q = torch.rand(c, generator=gen, dtype=torch.float64) + 0.1
        q = q / q.sum()
    got = soft_target_infonce(z, y, q, tau, reduction="none")
    ref = ref_batch_infonce(z, y, q, tau, reduction="none")  # loops; targets as constants
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    gz, gy = torch.autograd.grad(got.sum(), (z, y))
    torch.testing.assert_close(gz, torch.autograd.grad(ref.sum(), z)[0], rtol=1e-10, atol=1e-12)
    log_q = torch.zeros(c, dtype=torch.float64) if q is None else q.log()
    direct = torch.nn.functional.cross_entropy((z / tau - log_q) @ y.T, torch.arange(n),
                                               reduction="sum")
    torch.testing.assert_close(gy, torch.autograd.grad(direct, y)[0], rtol=1e-10, atol=1e-12)
