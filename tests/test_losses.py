"""Core losses against the slow float64 reference (tests/reference.py), invariants, queue and
sampled negatives, mixed precision, extreme logits, torch.compile, input validation, doctests."""

from __future__ import annotations

import doctest
import io
import math
import pathlib
import re
import zlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import softnce
import softnce.infonce
import softnce.losses
import softnce.noise
import softnce.targets
from reference import (
    RefQueue,
    ref_batch_infonce,
    ref_dense,
    ref_separated_infonce,
    ref_soft_target_ce,
)
from softnce import (
    InfoNCE,
    SoftTargetCrossEntropy,
    SoftTargetInfoNCE,
    SoftTargets,
    class_prior,
    separated_infonce,
    soft_target_cross_entropy,
    soft_target_infonce,
    uniform_noise,
)

# ------------------------------------------------------------------------------- helpers
FORMS = ("dense", "int", "onehot", "smooth", "mix", "general")


def make_targets(form: str, n: int, c: int, gen: torch.Generator) -> object:
    """Targets of one form: dense rows with exact zeros, int labels, SoftTargets k=1 (one-hot),
    k=1 with uniform part (label smoothing), k=2 with uniform part (MixUp), k=3 arbitrary."""
    labels = torch.randint(c, (n,), generator=gen)
    if form == "dense":
        raw = torch.rand(n, c, generator=gen, dtype=torch.float64)
        raw = raw * (torch.rand(n, c, generator=gen, dtype=torch.float64) < 0.6)
        raw[torch.arange(n), labels] += 0.5  # every row keeps some mass
        return raw / raw.sum(dim=1, keepdim=True)
    if form == "int":
        return labels
    if form == "onehot":
        return SoftTargets.from_labels(labels, c)
    if form == "smooth":
        return SoftTargets.label_smoothing(labels, c, smoothing=0.2)
    if form == "mix":
        other = torch.randint(c, (n,), generator=gen)
        lam = torch.rand(n, generator=gen)
        return SoftTargets.mix(labels, other, lam, c, smoothing=0.1)
    if form == "general":
        idx = torch.randint(c, (n, 3), generator=gen)
        w = torch.rand(n, 3, generator=gen, dtype=torch.float64)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        total = w.sum(dim=1) + u
        return SoftTargets(idx, w / total[:, None], u / total, c)
    raise ValueError(form)


def seed_of(*parts: object) -> int:
    """A deterministic seed per test case (``hash`` of strings changes between runs)."""
    return zlib.crc32(repr(parts).encode())


def make_noise(c: int, gen: torch.Generator) -> torch.Tensor:
    """A strictly positive, non-uniform float32 noise distribution."""
    q = torch.rand(c, generator=gen) + 0.05
    return q / q.sum()


def make_logits(n: int, c: int, gen: torch.Generator, scale: float = 2.0) -> torch.Tensor:
    return (torch.randn(n, c, generator=gen, dtype=torch.float64) * scale).requires_grad_()


def grad_of(fn, z: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses of ``fn(z)`` and the gradient of ``sum_i w_i loss_i`` w.r.t. z."""
    z = z.detach().clone().requires_grad_()
    out = fn(z)
    (g,) = torch.autograd.grad((out * weights.to(out.dtype)).sum(), z)
    return out.detach(), g


def assert_matches(impl, ref, z: torch.Tensor, gen: torch.Generator, rtol=1e-7, atol=1e-9):
    """Values (reduction="none" rows) and weighted-row gradients agree."""
    w = torch.rand(z.shape[0], generator=gen, dtype=torch.float64) + 0.5
    v_impl, g_impl = grad_of(impl, z, w)
    v_ref, g_ref = grad_of(ref, z, w)
    assert v_impl.shape == v_ref.shape == (z.shape[0],)
    torch.testing.assert_close(v_impl.double(), v_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(g_impl.double(), g_ref, rtol=rtol, atol=atol)


def queue_fifo(module: SoftTargetInfoNCE, c: int) -> torch.Tensor | None:
    """The module's queue as dense float64 rows, oldest first (reconstructed from the ring
    buffer: before the first wrap slots 0..len-1; once full the oldest entry sits at ptr)."""
    cands = module.queue_candidates(c)
    if cands is None:
        return None
    dense = ref_dense(cands, c)
    m, ptr = int(module.queue_len), int(module.queue_ptr)
    order = [(ptr + i) % m for i in range(m)] if m == module.queue_size else list(range(m))
    return dense[order]


SHAPES_TAU = [((1, 1), 1.0), ((1, 4), 0.5), ((3, 1), 2.0), ((4, 6), 1.0), ((6, 3), 0.3),
              ((5, 17), 2.5)]


# ------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("shape_tau", SHAPES_TAU, ids=lambda s: f"{s[0][0]}x{s[0][1]}-t{s[1]}")
@pytest.mark.parametrize("form", FORMS)
def test_soft_target_infonce_matches_reference(form, shape_tau, noise):
    (n, c), tau = shape_tau
    gen = torch.Generator().manual_seed(seed_of(form, n, c, noise))
    t = make_targets(form, n, c, gen)
    q = make_noise(c, gen) if noise else None
    z = make_logits(n, c, gen)
    assert_matches(
        lambda x: soft_target_infonce(x, t, q, tau, reduction="none"),
        lambda x: ref_batch_infonce(x, t, q, tau, reduction="none"),
        z, gen,
    )
    for red in ("mean", "sum"):
        torch.testing.assert_close(soft_target_infonce(z, t, q, tau, reduction=red),
                                   ref_batch_infonce(z, t, q, tau, reduction=red))


@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0, 7.0])
@pytest.mark.parametrize("form", ["dense", "mix"])
def test_temperature_range(form, tau):
    gen = torch.Generator().manual_seed(11)
    t = make_targets(form, 5, 4, gen)
    q = make_noise(4, gen)
    z = make_logits(5, 4, gen)
    assert_matches(lambda x: soft_target_infonce(x, t, q, tau, reduction="none"),
                   lambda x: ref_batch_infonce(x, t, q, tau, reduction="none"), z, gen)
    assert_matches(lambda x: soft_target_cross_entropy(x, t, tau, reduction="none"),
                   lambda x: ref_soft_target_ce(x, t, tau, reduction="none"), z, gen)


@pytest.mark.parametrize("shape_tau", SHAPES_TAU, ids=lambda s: f"{s[0][0]}x{s[0][1]}-t{s[1]}")
@pytest.mark.parametrize("form", FORMS)
def test_soft_target_cross_entropy_matches_reference(form, shape_tau):
    (n, c), tau = shape_tau
    gen = torch.Generator().manual_seed(seed_of(form, n, c))
    t = make_targets(form, n, c, gen)
    z = make_logits(n, c, gen)
    assert_matches(lambda x: soft_target_cross_entropy(x, t, tau, reduction="none"),
                   lambda x: ref_soft_target_ce(x, t, tau, reduction="none"), z, gen)
    module = SoftTargetCrossEntropy(temperature=tau, reduction="none")
    assert_matches(lambda x: module(x, t),
                   lambda x: ref_soft_target_ce(x, t, tau, reduction="none"), z, gen)
    for red in ("mean", "sum"):
        torch.testing.assert_close(SoftTargetCrossEntropy(tau, red)(z, t),
                                   ref_soft_target_ce(z, t, tau, red))


def test_soft_target_cross_entropy_equals_torch_cross_entropy_on_labels():
    gen = torch.Generator().manual_seed(0)
    z = make_logits(6, 5, gen)
    labels = torch.randint(5, (6,), generator=gen)
    torch.testing.assert_close(soft_target_cross_entropy(z, labels, temperature=0.5),
                               torch.nn.functional.cross_entropy(z / 0.5, labels))


@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("form", FORMS)
def test_module_batch_mode_matches_reference(form, noise):
    gen = torch.Generator().manual_seed(seed_of(form, noise, "module"))
    n, c, tau = 5, 4, 0.7
    t = make_targets(form, n, c, gen)
    q = make_noise(c, gen) if noise else None
    z = make_logits(n, c, gen)
    module = SoftTargetInfoNCE(noise_probs=q, temperature=tau, reduction="none")
    assert_matches(lambda x: module(x, t),
                   lambda x: ref_batch_infonce(x, t, q, tau, reduction="none"), z, gen)
    torch.testing.assert_close(SoftTargetInfoNCE(q, tau)(z, t), ref_batch_infonce(z, t, q, tau))


@pytest.mark.parametrize("negatives", ["batch", "queue", "sampled"])
def test_infonce_hard_labels_matches_reference(negatives):
    gen = torch.Generator().manual_seed(5)
    n, c, tau = 6, 5, 0.5
    q = make_noise(c, gen)
    module = InfoNCE(noise_probs=q, temperature=tau, negatives=negatives, queue_size=4,
                     num_negatives=9, reduction="none")
    queue = RefQueue(4)
    for _ in range(3):
        labels = torch.randint(c, (n,), generator=gen)
        z = make_logits(n, c, gen)
        negs = queue.dense(c)

        def ref(x, labels=labels, negs=negs):
            if negatives == "batch":
                return ref_batch_infonce(x, labels, q, tau, reduction="none")
            if negatives == "queue":
                return ref_separated_infonce(x, labels, negs, q, tau, "none")
            # called after the module: reads the labels it drew in this step
            return ref_separated_infonce(x, labels, module.last_negatives, q, tau, "none")

        assert_matches(lambda x, labels=labels: module(x, labels), ref, z, gen, rtol=1e-6,
                       atol=1e-6)
        queue.push(labels, c)
    if negatives == "queue":
        torch.testing.assert_close(queue_fifo(module, c), queue.dense(c))


def test_infonce_equals_soft_target_infonce_on_one_hot():
    gen = torch.Generator().manual_seed(2)
    z = make_logits(7, 4, gen)
    labels = torch.randint(4, (7,), generator=gen)
    q = make_noise(4, gen)
    hard = InfoNCE(noise_probs=q, temperature=0.3)(z, labels)
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    torch.testing.assert_close(hard, soft_target_infonce(z, onehot, q, 0.3))
    torch.testing.assert_close(hard, SoftTargetInfoNCE(q, 0.3)(z, SoftTargets.from_labels(labels,
                                                                                          4)))


# --------------------------------------------------------------------- separated negatives
@pytest.mark.parametrize("neg_form", ["int", "dense", "mix", "general"])
@pytest.mark.parametrize("bias", [False, True])
def test_separated_infonce_matches_reference(neg_form, bias):
    gen = torch.Generator().manual_seed(seed_of(neg_form, bias))
    n, c, k, tau = 4, 6, 7, 0.8
    t = make_targets("mix", n, c, gen)
    negs = make_targets(neg_form, k, c, gen)
    q = make_noise(c, gen)
    pb = torch.randn(n, generator=gen, dtype=torch.float64) if bias else None
    nb = torch.randn(k, generator=gen, dtype=torch.float64) if bias else None
    z = make_logits(n, c, gen)
    assert_matches(
        lambda x: separated_infonce(x, t, negs, q, tau, "none", positive_bias=pb, negative_bias=nb),
        lambda x: ref_separated_infonce(x, t, negs, q, tau, "none", pb, nb),
        z, gen,
    )


def test_separated_infonce_without_negatives_is_zero():
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 3])
    for negs in (None, torch.zeros(0, dtype=torch.long)):
        out = separated_infonce(z, labels, negs, reduction="none")
        assert torch.equal(out.detach(), torch.zeros(3, dtype=torch.float64))
        (g,) = torch.autograd.grad(out.sum(), z)
        assert torch.equal(g, torch.zeros_like(z))


# ------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_functional(form):
    gen = torch.Generator().manual_seed(seed_of("gc", form))
    n, c = 4, 5
    t = make_targets(form, n, c, gen)
    negs = make_targets("general", 3, c, gen)
    q = make_noise(c, gen).double()
    z = make_logits(n, c, gen)
    pb = torch.randn(n, generator=gen, dtype=torch.float64)
    nb = torch.randn(3, generator=gen, dtype=torch.float64)
    for fn in (
        lambda x: soft_target_infonce(x, t, q, 0.7, reduction="none"),
        lambda x: soft_target_cross_entropy(x, t, 1.3, reduction="none"),
        lambda x: separated_infonce(x, t, negs, q, 0.7, "none", positive_bias=pb,
                                    negative_bias=nb),
    ):
        assert torch.autograd.gradcheck(fn, (z,), fast_mode=True)


@pytest.mark.parametrize("negatives", ["batch", "queue", "sampled"])
def test_gradcheck_modules(negatives):
    gen = torch.Generator().manual_seed(17)
    n, c = 3, 4
    q = make_noise(c, gen)
    module = SoftTargetInfoNCE(q, 0.6, negatives=negatives, queue_size=5, num_negatives=6,
                               reduction="none")
    module(torch.randn(4, c, dtype=torch.float64), make_targets("mix", 4, c, gen))  # fill queue
    module.eval()  # gradcheck calls forward many times: keep the queue fixed
    t = make_targets("smooth", n, c, gen)
    z = make_logits(n, c, gen)

    def fn(x):
        with torch.random.fork_rng():
            torch.manual_seed(3)  # the same sampled negatives in every call
            return module(x, t)

    assert torch.autograd.gradcheck(fn, (z,))
    hard = InfoNCE(q, 0.6, negatives=negatives, queue_size=5, num_negatives=6)
    hard(torch.randn(4, c, dtype=torch.float64), torch.tensor([0, 1, 2, 3]))
    hard.eval()
    labels = torch.tensor([1, 1, 3])

    def fn_hard(x):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            return hard(x, labels)

    assert torch.autograd.gradcheck(fn_hard, (z,))
    ce = SoftTargetCrossEntropy(0.6, "none")
    assert torch.autograd.gradcheck(lambda x: ce(x, t), (z,))


# ----------------------------------------------------------------------------------- queue
def test_queue_contents_fifo_wraparound_and_losses():
    gen = torch.Generator().manual_seed(23)
    c, tau, qsize = 6, 0.9, 5
    q = make_noise(c, gen)
    module = SoftTargetInfoNCE(q, tau, negatives="queue", queue_size=qsize, reduction="none")
    ref_queue = RefQueue(qsize)
    # batch sizes: fill, wrap around, one batch larger than the queue, a single row
    plan = [(3, "int"), (2, "mix"), (4, "smooth"), (7, "general"), (1, "onehot"), (3, "int")]
    for step, (n, form) in enumerate(plan):
        t = make_targets(form, n, c, gen)
        z = make_logits(n, c, gen)
        negs = ref_queue.dense(c)
        if negs is None:  # empty queue: a lone positive, zero loss and gradient
            out = module(z, t)
            assert torch.equal(out.detach(), torch.zeros(n, dtype=torch.float64))
        else:  # the queue is stored in float32: compare at float32 precision
            assert_matches(lambda x, t=t: module(x, t),
                           lambda x, t=t, negs=negs: ref_separated_infonce(x, t, negs, q, tau,
                                                                           "none"),
                           z, gen, rtol=1e-6, atol=1e-6)
        ref_queue.push(t, c)
        assert int(module.queue_len) == len(ref_queue), f"step {step}"
        torch.testing.assert_close(queue_fifo(module, c), ref_queue.dense(c), rtol=1e-6,
                                   atol=1e-6, msg=f"queue contents after step {step}")
    assert int(module.queue_len) == qsize  # wrapped around


def test_queue_smaller_than_first_batch_keeps_last_rows():
    module = SoftTargetInfoNCE(negatives="queue", queue_size=3)
    labels = torch.tensor([0, 1, 2, 3, 4])
    module(torch.randn(5, 5), labels)
    fifo = queue_fifo(module, 5)
    torch.testing.assert_close(fifo, ref_dense(torch.tensor([2, 3, 4]), 5))


def test_queue_eval_mode_does_not_enqueue_but_uses_queue():
    gen = torch.Generator().manual_seed(4)
    module = SoftTargetInfoNCE(negatives="queue", queue_size=8, reduction="none")
    first = make_targets("mix", 3, 5, gen)
    module(torch.randn(3, 5), first)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.eval()
    t = make_targets("smooth", 4, 5, gen)
    z = make_logits(4, 5, gen)
    out = module(z, t)
    torch.testing.assert_close(out, ref_separated_infonce(z, t, first, None, 1.0, "none"))
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_queue_switches_from_sparse_to_dense_targets():
    gen = torch.Generator().manual_seed(8)
    c, qsize = 5, 6
    module = SoftTargetInfoNCE(negatives="queue", queue_size=qsize, temperature=0.5,
                               reduction="none")
    ref_queue = RefQueue(qsize)
    plan = ["mix", "int", "dense", "smooth", "dense", "general"]
    for step, form in enumerate(plan):
        t = make_targets(form, 4, c, gen)
        z = make_logits(4, c, gen)
        out = module(z, t)
        torch.testing.assert_close(
            out, ref_separated_infonce(z, t, ref_queue.dense(c), None, 0.5, "none"),
            rtol=1e-6, atol=1e-6, msg=f"step {step}")
        ref_queue.push(t, c)
        torch.testing.assert_close(queue_fifo(module, c), ref_queue.dense(c), rtol=1e-6,
                                   atol=1e-6, msg=f"step {step}")
    assert module.queue_dense.shape == (qsize, c)  # dense storage after the switch


@pytest.mark.parametrize("dense_storage", [False, True])
def test_queue_state_dict_round_trip_continues_identically(dense_storage):
    gen = torch.Generator().manual_seed(31)
    c = 7
    kwargs = dict(noise_probs=make_noise(c, gen), temperature=0.4, negatives="queue",
                  queue_size=9, reduction="none")
    module = SoftTargetInfoNCE(**kwargs)
    forms = ["mix", "dense" if dense_storage else "smooth", "int", "general"]
    for form in forms:
        module(make_logits(4, c, gen), make_targets(form, 4, c, gen))
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh = SoftTargetInfoNCE(**kwargs)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    for form in ["int", "mix", "general", "onehot"]:
        t = make_targets(form, 5, c, gen)
        z = make_logits(5, c, gen)
        a, b = module(z, t), fresh(z, t)
        assert torch.equal(a, b)
        torch.testing.assert_close(queue_fifo(module, c), queue_fifo(fresh, c))
        assert int(module.queue_ptr) == int(fresh.queue_ptr)
        assert int(module.queue_len) == int(fresh.queue_len)


def test_queue_state_dict_with_other_queue_size_raises():
    module = SoftTargetInfoNCE(negatives="queue", queue_size=9)
    module(torch.zeros(9, 4), torch.arange(9) % 4)
    other = SoftTargetInfoNCE(negatives="queue", queue_size=5)
    with pytest.raises(ValueError, match=r"queue_indices holds a queue of 9 slots but this "
                                         r"module has queue_size=5"):
        other.load_state_dict(module.state_dict())
    fresh = SoftTargetInfoNCE(negatives="queue", queue_size=5)  # an empty queue loads anywhere
    fresh.load_state_dict(SoftTargetInfoNCE(negatives="queue", queue_size=9).state_dict())


def test_queue_reset():
    module = SoftTargetInfoNCE(negatives="queue", queue_size=4)
    module(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    module.reset_queue()
    assert module.queue_candidates(4) is None
    z = torch.randn(2, 4, requires_grad=True)
    assert float(module(z, torch.tensor([1, 2])).detach()) == 0.0


# --------------------------------------------------------------------------------- sampled
@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("form", ["int", "dense", "mix"])
def test_sampled_negatives_match_reference(form, noise):
    gen = torch.Generator().manual_seed(seed_of(form, noise, "sampled"))
    n, c, k, tau = 3, 6, 7, 0.6
    q = make_noise(c, gen) if noise else None
    module = SoftTargetInfoNCE(q, tau, negatives="sampled", num_negatives=k, reduction="none")
    t = make_targets(form, n, c, gen)
    z = make_logits(n, c, gen)
    torch.manual_seed(0)
    out = module(z, t)
    negs = module.last_negatives
    assert negs.shape == (k,) and negs.dtype == torch.long
    assert int(negs.min()) >= 0 and int(negs.max()) < c
    (g,) = torch.autograd.grad(out.sum(), z)
    z_ref = z.detach().clone().requires_grad_()
    ref = ref_separated_infonce(z_ref, t, negs, q, tau, "none")
    (g_ref,) = torch.autograd.grad(ref.sum(), z_ref)
    torch.testing.assert_close(out.detach(), ref.detach())
    torch.testing.assert_close(g, g_ref)
    torch.manual_seed(0)
    module(z, t)
    assert torch.equal(module.last_negatives, negs)  # drawn from the global RNG: reproducible


@pytest.mark.parametrize("noise", [False, True])
def test_sampled_negatives_follow_noise_distribution(noise):
    c = 5
    q = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625]) if noise else None
    module = SoftTargetInfoNCE(q, negatives="sampled", num_negatives=20000)
    torch.manual_seed(1)
    module(torch.randn(2, c), torch.tensor([0, 1]))
    freq = torch.bincount(module.last_negatives, minlength=c).float() / 20000
    expected = q if noise else torch.full((c,), 1 / c)
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


# ------------------------------------------------------------------------------ invariants
def _all_losses(n: int, c: int, gen: torch.Generator, tau: float, q: torch.Tensor | None):
    """Per-row (reduction="none") loss functions of logits for every loss and mode."""
    t = make_targets("mix", n, c, gen)
    negs = make_targets("general", 3, c, gen)
    queued = SoftTargetInfoNCE(q, tau, negatives="queue", queue_size=4, reduction="none")
    queued(torch.randn(5, c, dtype=torch.float64), make_targets("smooth", 5, c, gen))
    queued.eval()
    sampled = SoftTargetInfoNCE(q, tau, negatives="sampled", num_negatives=5, reduction="none")

    def sampled_fn(x):
        with torch.random.fork_rng():
            torch.manual_seed(7)
            return sampled(x, t)

    return {
        "functional": lambda x: soft_target_infonce(x, t, q, tau, reduction="none"),
        "batch": lambda x: SoftTargetInfoNCE(q, tau, reduction="none")(x, t),
        "queue": lambda x: queued(x, t),
        "sampled": sampled_fn,
        "separated": lambda x: separated_infonce(x, t, negs, q, tau, "none"),
        "soft_ce": lambda x: soft_target_cross_entropy(x, t, tau, reduction="none"),
    }


dims = dict(n=st.integers(1, 6), c=st.integers(1, 7), seed=st.integers(0, 2**20),
            tau=st.floats(0.1, 5.0))


@settings(max_examples=15, deadline=None)
@given(**dims, shift=st.floats(-50, 50))
def test_invariant_row_shift(n, c, seed, tau, shift):
    """Adding a constant to a row of logits adds a constant to all its scores: no change."""
    gen = torch.Generator().manual_seed(seed)
    q = make_noise(c, gen)
    z = make_logits(n, c, gen).detach()
    shifts = torch.randn(n, 1, generator=gen, dtype=torch.float64) * shift
    # float32 target rows sum to 1 only up to ~1e-7, so the shift cancels up to that much
    atol = 1e-6 * (1.0 + float(shifts.abs().max()) / tau)
    for name, fn in _all_losses(n, c, gen, tau, q).items():
        torch.testing.assert_close(fn(z + shifts), fn(z), rtol=1e-6, atol=atol, msg=name)


@settings(max_examples=15, deadline=None)
@given(**dims)
def test_invariant_loss_nonnegative_and_reductions(n, c, seed, tau):
    gen = torch.Generator().manual_seed(seed)
    q = make_noise(c, gen)
    z = make_logits(n, c, gen, scale=5.0).detach().float()
    t = make_targets("general", n, c, gen)
    for name, fn in _all_losses(n, c, gen, tau, q).items():
        assert bool((fn(z) >= -1e-6).all()), name
    for fn in (lambda red: soft_target_infonce(z, t, q, tau, reduction=red),
               lambda red: soft_target_cross_entropy(z, t, tau, reduction=red),
               lambda red: SoftTargetInfoNCE(q, tau, reduction=red)(z, t)):
        rows = fn("none")
        assert rows.shape == (n,)
        torch.testing.assert_close(fn("mean"), rows.mean())
        torch.testing.assert_close(fn("sum"), rows.sum())


@settings(max_examples=15, deadline=None)
@given(**dims)
def test_invariant_hard_equals_soft_on_one_hot(n, c, seed, tau):
    gen = torch.Generator().manual_seed(seed)
    q = make_noise(c, gen)
    z = make_logits(n, c, gen).detach()
    labels = torch.randint(c, (n,), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, c).double()
    hard = InfoNCE(q, tau, reduction="none")(z, labels)
    torch.testing.assert_close(hard, soft_target_infonce(z, onehot, q, tau, reduction="none"))
    torch.testing.assert_close(hard, SoftTargetInfoNCE(q, tau, reduction="none")(
        z, SoftTargets.from_labels(labels, c)))
    torch.testing.assert_close(soft_target_cross_entropy(z, onehot, tau, reduction="none"),
                               torch.nn.functional.cross_entropy(z / tau, labels,
                                                                 reduction="none"))


@settings(max_examples=15, deadline=None)
@given(**dims, form=st.sampled_from(["onehot", "smooth", "mix", "general"]))
def test_invariant_dense_equals_soft_targets(n, c, seed, tau, form):
    gen = torch.Generator().manual_seed(seed)
    q = make_noise(c, gen)
    z = make_logits(n, c, gen).detach()
    t = make_targets(form, n, c, gen)
    negs = make_targets("general", 4, c, gen)
    d, nd = t.to_dense(torch.float64), negs.to_dense(torch.float64)
    pairs = [
        (soft_target_infonce(z, t, q, tau, reduction="none"),
         soft_target_infonce(z, d, q, tau, reduction="none")),
        (soft_target_cross_entropy(z, t, tau, reduction="none"),
         soft_target_cross_entropy(z, d, tau, reduction="none")),
        (separated_infonce(z, t, negs, q, tau, "none"),
         separated_infonce(z, d, nd, q, tau, "none")),
    ]
    for sparse, dense in pairs:
        torch.testing.assert_close(sparse, dense)


@settings(max_examples=15, deadline=None)
@given(**dims)
def test_invariant_uniform_noise_equals_no_correction(n, c, seed, tau):
    gen = torch.Generator().manual_seed(seed)
    z = make_logits(n, c, gen).detach()
    uni = uniform_noise(c)
    for form in ("dense", "mix", "int"):
        t = make_targets(form, n, c, gen)
        torch.testing.assert_close(soft_target_infonce(z, t, uni, tau, reduction="none"),
                                   soft_target_infonce(z, t, None, tau, reduction="none"))
        negs = make_targets("general", 3, c, gen)
        torch.testing.assert_close(separated_infonce(z, t, negs, uni, tau, "none"),
                                   separated_infonce(z, t, negs, None, tau, "none"))


# ----------------------------------------------------------------- precision and extremes
@pytest.mark.parametrize("n,c", [(8, 10), (12, 5)])  # dense scores: either side of the product
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision_logits(dtype, n, c):
    gen = torch.Generator().manual_seed(3)
    z32 = torch.randn(n, c, generator=gen) * 3
    t = make_targets("mix", n, c, gen)
    q = make_noise(c, gen)
    fns = {
        "functional": lambda x: soft_target_infonce(x, t, q, 0.5),
        "dense": lambda x: soft_target_infonce(x, t.to_dense(), q, 0.5),
        "dense module": lambda x: SoftTargetInfoNCE(q, 0.5)(x, t.to_dense()),
        "module": lambda x: SoftTargetInfoNCE(q, 0.5)(x, t),
        "separated": lambda x: separated_infonce(x, t, torch.tensor([0, 3, c - 1]), q, 0.5),
        "soft_ce": lambda x: SoftTargetCrossEntropy(0.5)(x, t),
        "infonce": lambda x: InfoNCE(q, 0.5)(x, t.argmax()),
    }
    for name, fn in fns.items():
        z = z32.to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            loss = fn(z)
        assert loss.dtype == torch.float32, name
        assert torch.isfinite(loss), name
        loss.backward()
        assert z.grad.dtype == dtype and bool(torch.isfinite(z.grad).all()), name
        # computed in float32 on the rounded logits, close to the float32 loss
        torch.testing.assert_close(loss, fn(z.detach().float()), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loss, fn(z32), rtol=3e-2, atol=3e-2)


def test_autocast_model_output():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5)
    x = torch.randn(4, 6)
    labels = torch.tensor([0, 1, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
        assert logits.dtype == torch.bfloat16
        loss = SoftTargetInfoNCE(temperature=0.2)(logits, labels)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_huge_logits_finite(tau):
    gen = torch.Generator().manual_seed(9)
    n, c = 6, 8
    q = make_noise(c, gen)
    z = (torch.randn(n, c, generator=gen) * 1e4)
    for form in ("dense", "int", "mix"):
        t = make_targets(form, n, c, gen)
        t = t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        fns = _all_losses(n, c, gen, tau, q)
        fns["infonce_batch"] = lambda x: InfoNCE(q, tau, reduction="none")(x, torch.arange(n) % c)
        fns["soft_ce_t"] = lambda x, t=t: soft_target_cross_entropy(x, t, tau, reduction="none")
        fns["batch_t"] = lambda x, t=t: soft_target_infonce(x, t, q, tau, reduction="none")
        for name, fn in fns.items():
            x = z.clone().requires_grad_()
            out = fn(x)
            assert bool(torch.isfinite(out).all()), (form, name)
            out.sum().backward()
            assert bool(torch.isfinite(x.grad).all()), (form, name)
        # and still accurate (float32 vs the float64 reference)
        torch.testing.assert_close(
            soft_target_infonce(z, t, q, tau, reduction="none").double(),
            ref_batch_infonce(z, t, q, tau, reduction="none").detach(),
            rtol=1e-4, atol=1e-2 / tau)


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    t = make_targets("mix", 6, 5, gen)
    q = make_noise(5, gen)

    def fn(x, y):
        return soft_target_infonce(x, y, q, 0.5, validate_args=False)

    compiled = torch.compile(fn, backend="aot_eager")  # AOTAutograd traces forward and backward
    z = torch.randn(6, 5, generator=gen, requires_grad=True)
    z2 = z.detach().clone().requires_grad_()
    out, out_eager = compiled(z, t), fn(z2, t)
    torch.testing.assert_close(out, out_eager)
    out.backward()
    out_eager.backward()
    torch.testing.assert_close(z.grad, z2.grad)
    torch._dynamo.reset()


def test_torch_compile_with_validation_checks_and_stays_quiet(caplog):
    """validate_args=True under torch.compile: the same value as eager, bad targets still
    raise, and the happy path reads its checks in the stacked form (one graph break, without
    dynamo's warning about ``Tensor.item()`` that per-value CPU reads would log)."""
    import logging

    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    y = torch.softmax(torch.randn(4, 5, generator=gen), 1)
    q = make_noise(5, gen)
    z = torch.randn(4, 5, generator=gen)
    compiled = torch.compile(soft_target_infonce, backend="eager")
    with caplog.at_level(logging.WARNING):
        out = compiled(z, y, q)
    torch.testing.assert_close(out, soft_target_infonce(z, y, q))
    assert not [r for r in caplog.records if "Tensor.item()" in r.getMessage()]
    y_bad = y.clone()
    y_bad[3, 0] -= 0.5
    y_bad[3, 1] += 0.5
    with pytest.raises(ValueError, match="targets must be non-negative"):
        compiled(z, y_bad, q)
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- noise / prior
def test_class_prior_formula():
    labels = torch.tensor([0, 0, 2, 2, 2, 3])
    q = class_prior(labels, 5, pseudo_count=0.5)
    counts = torch.tensor([2, 0, 3, 1, 0], dtype=torch.float64)
    torch.testing.assert_close(q, ((counts + 0.5) / (6 + 5 * 0.5)).float())
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]])
    torch.testing.assert_close(class_prior(soft, 3, 1.0),
                               torch.tensor([1.5, 1.75, 1.75]) / 5)
    torch.testing.assert_close(uniform_noise(4), torch.full((4,), 0.25))


def test_missing_class_does_not_make_loss_nan():
    c = 5
    train_labels = torch.tensor([0, 1, 1, 2, 3, 0])  # class 4 never occurs
    q = class_prior(train_labels, c)
    assert bool((q > 0).all())
    z = torch.randn(4, c, requires_grad=True)
    batch = torch.tensor([4, 4, 1, 0])
    for negatives in ("batch", "queue", "sampled"):
        loss_fn = InfoNCE(q, negatives=negatives, num_negatives=50)
        for _ in range(2):
            loss = loss_fn(z, batch)
            assert torch.isfinite(loss), negatives
            loss.backward()
            assert bool(torch.isfinite(z.grad).all())
    with pytest.raises(ValueError, match=r"classes \[4\] never occur"):
        class_prior(train_labels, c, pseudo_count=0.0)


# -------------------------------------------------------------------------------- bad input
Z = torch.zeros(3, 5)
LAB = torch.tensor([0, 1, 4])
GOOD_Y = torch.full((3, 5), 0.2)


def _rows(*vals):
    return torch.tensor(vals, dtype=torch.float32)


BAD_CASES = [
    # logits
    ("logits 1-D", lambda: soft_target_infonce(torch.zeros(5), LAB), ValueError,
     r"logits must be a 2-D tensor.*\(5,\)"),
    ("logits 3-D", lambda: soft_target_cross_entropy(torch.zeros(3, 5, 1), LAB), ValueError,
     r"logits must be a 2-D tensor"),
    ("logits int", lambda: soft_target_infonce(torch.zeros(3, 5, dtype=torch.long), LAB),
     TypeError, r"logits must be a floating-point tensor"),
    ("logits list", lambda: soft_target_infonce([[0.0]], LAB), TypeError,
     r"logits must be a torch.Tensor"),
    ("logits nan", lambda: soft_target_infonce(Z.clone().fill_(math.nan), LAB), ValueError,
     r"logits must be finite"),
    ("logits inf", lambda: SoftTargetInfoNCE()(torch.tensor([[0.0, math.inf]] * 3), LAB[:3] % 2),
     ValueError, r"logits must be finite"),
    ("logits inf ce", lambda: soft_target_cross_entropy(torch.tensor([[0.0, -math.inf]]),
                                                        torch.tensor([0])),
     ValueError, r"logits must be finite"),
    # batch / class count
    ("labels batch", lambda: soft_target_infonce(Z, torch.tensor([0, 1])), ValueError,
     r"targets must have N=3 rows.*found 2"),
    ("dense batch", lambda: soft_target_infonce(Z, torch.full((4, 5), 0.2)), ValueError,
     r"targets must have N=3 rows"),
    ("soft batch", lambda: SoftTargetInfoNCE()(Z, SoftTargets.from_labels(LAB[:2], 5)),
     ValueError, r"targets must have N=3 rows"),
    ("dense classes", lambda: soft_target_infonce(Z, torch.full((3, 4), 0.25)), ValueError,
     r"targets must have C=5 columns.*\(3, 4\)"),
    ("soft classes", lambda: soft_target_cross_entropy(Z, SoftTargets.from_labels(LAB, 6)),
     ValueError, r"targets has num_classes=6 but logits have C=5"),
    ("queue classes", lambda: _queue_then(torch.zeros(2, 4)), ValueError,
     r"the queue holds targets over 5 classes but logits have C=4"),
    ("sparse queue classes", lambda: _queue_then(torch.zeros(2, 4), dense=False), ValueError,
     r"the queue holds targets over 5 classes but logits have C=4"),
    # labels
    ("label too big", lambda: soft_target_infonce(Z, torch.tensor([0, 5, 1])), ValueError,
     r"targets must hold class indices in \[0, 4\]; found values in \[0, 5\]"),
    ("label negative", lambda: InfoNCE()(Z, torch.tensor([0, -1, 1])), ValueError,
     r"targets must hold class indices in \[0, 4\]; found values in \[-1, 1\]"),
    ("labels 2-D int", lambda: soft_target_infonce(Z, torch.zeros(3, 5, dtype=torch.long)),
     ValueError, r"targets as integer labels must have shape \(N,\)"),
    ("float 1-D", lambda: soft_target_infonce(Z, torch.tensor([0.0, 1.0, 4.0])), ValueError,
     r"targets is a 1-D floating-point tensor"),
    ("bool targets", lambda: soft_target_infonce(Z, torch.ones(3, dtype=torch.bool)), TypeError,
     r"targets must be int64 labels or float soft targets"),
    ("list targets", lambda: soft_target_infonce(Z, [0, 1, 2]), TypeError,
     r"targets must be a torch.Tensor"),
    ("infonce float targets", lambda: InfoNCE()(Z, GOOD_Y), TypeError,
     r"InfoNCE expects integer class labels"),
    ("infonce soft targets", lambda: InfoNCE()(Z, SoftTargets.from_labels(LAB, 5)), TypeError,
     r"InfoNCE expects integer class labels"),
    # dense target values
    ("targets negative", lambda: soft_target_infonce(
        Z, torch.tensor([[1.2, -0.2, 0, 0, 0]] * 3)), ValueError, r"targets must be non-negative"),
    ("targets nan", lambda: soft_target_cross_entropy(
        Z, torch.tensor([[math.nan, 1.0, 0, 0, 0]] * 3)), ValueError, r"targets must be finite"),
    ("targets inf", lambda: soft_target_infonce(
        Z, torch.tensor([[math.inf, 1.0, 0, 0, 0]] * 3)), ValueError, r"targets must be finite"),
    ("targets sum", lambda: soft_target_infonce(Z, torch.full((3, 5), 0.2 + 4e-4)), ValueError,
     r"targets rows must sum to 1 \(tolerance 0.001\); row 0 sums to 1.002"),
    ("negatives sum", lambda: separated_infonce(Z, LAB, torch.full((2, 5), 0.3)), ValueError,
     r"negatives rows must sum to 1"),
    # noise
    ("noise length", lambda: soft_target_infonce(Z, LAB, torch.full((4,), 0.25)), ValueError,
     r"noise_probs must have length C=5.*found length 4"),
    ("noise zero", lambda: soft_target_infonce(Z, LAB, _rows(0.5, 0.5, 0, 0, 0)), ValueError,
     r"noise_probs must be strictly positive.*indices \[2, 3, 4\]"),
    ("noise negative", lambda: separated_infonce(Z, LAB, LAB, _rows(0.6, 0.6, -0.2, 0.5, -0.5)),
     ValueError, r"noise_probs must be strictly positive"),
    ("noise sum", lambda: soft_target_infonce(Z, LAB, torch.full((5,), 0.3)), ValueError,
     r"noise_probs must sum to 1 \(tolerance 0.001\); found sum 1.5"),
    ("noise 2-D", lambda: soft_target_infonce(Z, LAB, torch.full((1, 5), 0.2)), ValueError,
     r"noise_probs must be a 1-D tensor"),
    ("noise int", lambda: soft_target_infonce(Z, LAB, torch.ones(5, dtype=torch.long)),
     TypeError, r"noise_probs must be a floating-point tensor"),
    ("module noise zero", lambda: SoftTargetInfoNCE(noise_probs=_rows(1.0, 0.0)), ValueError,
     r"noise_probs must be strictly positive"),
    ("module noise sum", lambda: InfoNCE(noise_probs=_rows(0.7, 0.7)), ValueError,
     r"noise_probs must sum to 1"),
    ("module noise length", lambda: SoftTargetInfoNCE(noise_probs=_rows(0.5, 0.5))(Z, LAB),
     ValueError, r"noise_probs has length 2 but the targets have C=5"),
    # temperature
    ("tau zero", lambda: soft_target_infonce(Z, LAB, temperature=0.0), ValueError,
     r"temperature must be > 0 and finite; found 0.0"),
    ("tau negative", lambda: SoftTargetInfoNCE(temperature=-1.0), ValueError,
     r"temperature must be > 0"),
    ("tau nan", lambda: SoftTargetCrossEntropy(temperature=math.nan), ValueError,
     r"temperature must be > 0"),
    ("tau inf", lambda: soft_target_cross_entropy(Z, LAB, temperature=math.inf), ValueError,
     r"temperature must be > 0"),
    ("tau str", lambda: InfoNCE(temperature="1"), TypeError, r"temperature must be a positive"),
    # reduction / mode / sizes
    ("reduction", lambda: soft_target_infonce(Z, LAB, reduction="avg"), ValueError,
     r"reduction must be one of \('mean', 'sum', 'none'\); found 'avg'"),
    ("module reduction", lambda: SoftTargetCrossEntropy(reduction="batchmean"), ValueError,
     r"reduction must be one of"),
    ("negatives mode", lambda: SoftTargetInfoNCE(negatives="memory"), ValueError,
     r"negatives must be one of \('batch', 'queue', 'sampled'.*found 'memory'"),
    ("queue size", lambda: SoftTargetInfoNCE(negatives="queue", queue_size=0), ValueError,
     r"queue_size must be a positive int; found 0"),
    ("num negatives", lambda: InfoNCE(negatives="sampled", num_negatives=-3), ValueError,
     r"num_negatives must be a positive int"),
    # SoftTargets values
    ("soft sum", lambda: SoftTargets(torch.tensor([[0], [1]]), _rows([0.5], [0.9]),
                                     _rows(0.4, 0.1), 3), ValueError,
     r"weights plus uniform mass must sum to 1.*row 0 sums to 0.9"),
    ("soft sum in loss", lambda: soft_target_infonce(Z, SoftTargets(
        LAB[:, None], torch.full((3, 1), 0.5), torch.full((3,), 0.2), 5, validate_args=False)),
     ValueError, r"targets weights plus uniform mass must sum to 1"),
    ("soft negative", lambda: SoftTargets(torch.tensor([[0, 1]]), _rows([1.2, -0.2]), _rows(0.0),
                                          3), ValueError, r"weights must be non-negative"),
    ("soft index", lambda: SoftTargets(torch.tensor([[3]]), _rows([1.0]), _rows(0.0), 3),
     ValueError, r"indices must lie in \[0, 2\]; found values in \[3, 3\]"),
    # separated biases
    ("positive bias", lambda: separated_infonce(Z, LAB, LAB, positive_bias=torch.zeros(2)),
     ValueError, r"positive_bias must have shape \(3,\)"),
    ("negative bias", lambda: separated_infonce(Z, LAB, LAB[:2], negative_bias=torch.zeros(3)),
     ValueError, r"negative_bias must have shape \(2,\)"),
    # class prior
    ("prior pseudo", lambda: class_prior(LAB, 5, pseudo_count=-1.0), ValueError,
     r"pseudo_count must be >= 0"),
    ("prior range", lambda: class_prior(LAB, 4), ValueError,
     r"labels must hold class indices in \[0, 3\]"),
    ("prior classes", lambda: class_prior(LAB, 0), ValueError,
     r"num_classes must be a positive int"),
]


def _queue_then(z: torch.Tensor, dense: bool = True) -> torch.Tensor:
    module = SoftTargetInfoNCE(negatives="queue", queue_size=4)
    module(torch.zeros(2, 5), SoftTargets.mix(LAB[:2], LAB[1:], 0.5, 5))
    if dense:
        module(torch.zeros(2, 5), torch.full((2, 5), 0.2))  # dense storage from now on
    return module(z, torch.tensor([0, 1]))


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_input_raises(call, exc, match, read_mode):
    with pytest.raises(exc, match=match):
        call()


def test_targets_within_tolerance_accepted():
    y = torch.full((3, 5), 0.2 + 1.5e-4)  # rows sum to 1.00075: inside 1e-3
    assert torch.isfinite(soft_target_infonce(Z, y))
    q = torch.full((5,), 0.2 - 1e-4)
    assert torch.isfinite(soft_target_infonce(Z, LAB, q))


def test_validate_args_false_skips_value_checks_only():
    nan_z = Z.clone().fill_(math.nan)
    assert torch.isnan(soft_target_infonce(nan_z, LAB, validate_args=False))
    bad_y = torch.full((3, 5), 0.3)  # rows sum to 1.5: accepted unchecked
    assert torch.isfinite(soft_target_infonce(Z, bad_y, validate_args=False))
    assert torch.isfinite(soft_target_cross_entropy(Z, bad_y, validate_args=False))
    assert torch.isfinite(SoftTargetInfoNCE(validate_args=False)(Z, bad_y))
    noise = torch.full((5,), 0.3)
    assert torch.isfinite(soft_target_infonce(Z, LAB, noise, validate_args=False))
    # shape checks still run
    for call, match in [
        (lambda: soft_target_infonce(torch.zeros(5), LAB, validate_args=False), r"2-D"),
        (lambda: soft_target_infonce(Z, LAB[:2], validate_args=False), r"N=3"),
        (lambda: soft_target_infonce(Z, torch.full((3, 4), 0.25), validate_args=False), r"C=5"),
        (lambda: soft_target_infonce(Z, torch.ones(3), validate_args=False), r"1-D floating"),
        (lambda: soft_target_infonce(Z, LAB, torch.ones(4) / 4, validate_args=False),
         r"noise_probs must have length C=5"),
        (lambda: SoftTargetInfoNCE(validate_args=False)(Z, LAB[:2]), r"N=3"),
        (lambda: soft_target_cross_entropy(Z, SoftTargets.from_labels(LAB % 4, 4),
                                           validate_args=False), r"num_classes=4"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()


# -------------------------------------------------------------------------------- doctests
@pytest.mark.parametrize("module", [softnce.losses, softnce.infonce, softnce.targets, softnce.noise],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_public_api_exported():
    for name in ("soft_target_infonce", "SoftTargetInfoNCE", "InfoNCE", "SoftTargetCrossEntropy",
                 "class_prior", "SoftTargets"):
        assert name in softnce.__all__ and hasattr(softnce, name)


DOC = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_examples_run():
    """Both loss usage examples in the README (quick start and the Losses section) run."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
              if "from softnce import SoftTargetInfoNCE" in b]
    assert len(blocks) >= 2, "the README lost its loss usage examples"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(DOC), "exec"), namespace)
        assert torch.isfinite(namespace["loss"])
        torch.testing.assert_close(namespace["probs"].sum(dim=1), torch.ones(32))


def test_separated_infonce_bias_must_be_tensor():
    z = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="positive_bias must be a torch.Tensor"):
        separated_infonce(z, torch.tensor([0, 1]), torch.tensor([2]), positive_bias=[0.0, 0.0])
    with pytest.raises(TypeError, match="negative_bias must be a torch.Tensor"):
        separated_infonce(z, torch.tensor([0, 1]), torch.tensor([2]), negative_bias=1.0)
