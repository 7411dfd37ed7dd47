"""Dense soft targets checked inside the loss's one host read (issue 13, "checks for free").

With ``validate_args=True`` the row sums and the minimum of dense (N, C) targets are read to
the host with the loss's own scalars (finiteness, noise): stacked and read once on an
accelerator, one by one on the CPU (where a read is no synchronisation). The contract stays:
every bad matrix raises the eager check's ``ValueError`` with the same message, through the
functions and the modules. The order: shape and type errors of any argument first (they are
checked before anything is computed), then value errors, targets before the noise and the
logits. A queue never takes bad targets in, and targets gathered across ranks are checked
before the gather, so no rank computes with another rank's bad rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from softnce import (
    SoftTargetCrossEntropy,
    SoftTargetInfoNCE,
    SoftTargets,
    separated_infonce,
    soft_target_cross_entropy,
    soft_target_infonce,
)
from softnce._validation import (
    check_labels,
    check_simplex_rows,
    read_scalars,
    simplex_row_stats,
    simplex_stats_ok,
)
from test_loss_speed_paths import _count_host_reads

N, C = 4, 5


def _good(dtype=torch.float32) -> torch.Tensor:
    raw = torch.rand(N, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.1
    return (raw / raw.sum(1, keepdim=True)).to(dtype)


def _bad(kind: str) -> torch.Tensor:
    y = _good()
    if kind == "nan":
        y[2, 3] = math.nan
    elif kind == "inf":
        y[1, 0] = math.inf
    elif kind == "negative":  # row sums stay 1: only the minimum catches it
        y[3, 0] -= 0.5
        y[3, 1] += 0.5
    elif kind == "sum":  # off by more than the bfloat16 tolerance
        y[1] *= 1.1
    return y


BAD_MSG = {"nan": "targets must be finite; found NaN or infinite entries",
           "inf": "targets must be finite; found NaN or infinite entries",
           "negative": "targets must be non-negative",
           "sum": r"targets rows must sum to 1 \(tolerance 0.001\); row 1 sums to 1.1"}


MODULES = ("SoftTargetInfoNCE", "SoftTargetInfoNCE(queue)", "SoftTargetCrossEntropy")


def _calls(q: torch.Tensor | None):
    """Every loss entry point that takes dense targets, as ``fn(logits, targets)``; the modules
    are built here (they check ``q`` once, at construction), with ``q`` only when it is valid."""
    positives = SoftTargets.label_smoothing(torch.tensor([0, 1, 2, 3]), C, 0.1)
    calls = {
        "soft_target_infonce": lambda z, y: soft_target_infonce(z, y, q),
        "separated_infonce": lambda z, y: separated_infonce(z, y, _good()[:2], q),
        "separated_infonce(negatives)": lambda z, y: separated_infonce(z, positives, y, q),
        "soft_target_cross_entropy": lambda z, y: soft_target_cross_entropy(z, y),
    }
    good_q = q if q is not None and abs(float(q.sum()) - 1) < 1e-6 else None
    calls["SoftTargetInfoNCE"] = SoftTargetInfoNCE(good_q)
    calls["SoftTargetInfoNCE(queue)"] = SoftTargetInfoNCE(good_q, negatives="queue",
                                                          queue_size=8)
    calls["SoftTargetCrossEntropy"] = SoftTargetCrossEntropy()
    return calls


@pytest.mark.parametrize("kind", sorted(BAD_MSG))
@pytest.mark.parametrize("call", sorted(_calls(None)))
def test_bad_dense_targets_raise_the_eager_message(kind, call, read_mode):
    y = _bad(kind)
    name = "negatives" if call.endswith("(negatives)") else "targets"
    msg = BAD_MSG[kind].replace("targets", name, 1)
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(1))
    z_bad = z.clone()
    z_bad[0, 0] = math.nan
    bad_q = torch.tensor([0.5, 0.5, 0.5, 0.25, 0.25])  # sums to 2
    for q in (None, bad_q):  # (the modules refuse a bad q at construction: tested elsewhere)
        fn = _calls(q)[call]
        for logits in (z, z_bad):  # the targets are named before the noise and the logits
            with pytest.raises(ValueError, match=msg):
                fn(logits, y)
    # the eager check says the same
    with pytest.raises(ValueError, match=msg):
        check_simplex_rows(name, y)


def test_bad_targets_never_reach_the_queue():
    loss_fn = SoftTargetInfoNCE(negatives="queue", queue_size=8)
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(2))
    loss_fn(z, _good())
    before = int(loss_fn.queue_len)
    with pytest.raises(ValueError, match="must be non-negative"):
        loss_fn(z, _bad("negative"))
    assert int(loss_fn.queue_len) == before


@pytest.mark.parametrize("call", ["soft_target_infonce", "separated_infonce",
                                  "separated_infonce(negatives)", "soft_target_cross_entropy",
                                  "SoftTargetInfoNCE", "SoftTargetCrossEntropy"])
def test_dense_targets_cost_one_host_read(call):
    """Targets, noise and the result's finiteness in a single read (two before: the targets'
    row sums and minimum had a synchronisation of their own)."""
    q = torch.full((C,), 1.0 / C)
    fn = _calls(q)[call]
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = _good()
    fn(z, y)  # warnings, lazy imports: outside the count
    with _count_host_reads() as reads:
        loss = fn(z, y)
    assert len(reads) == 1, reads
    assert bool(torch.isfinite(loss))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_simplex_row_stats_and_tolerance_follow_the_dtype(dtype):
    y = _good(dtype)
    stats = torch.stack(simplex_row_stats(y)).tolist()
    assert simplex_stats_ok(stats, dtype)
    assert stats[2] == float(y.min()) and stats[0] <= stats[1]
    assert torch.isfinite(soft_target_infonce(torch.zeros(N, C), y))
    for kind in ("nan", "inf", "negative", "sum"):
        bad = torch.stack(simplex_row_stats(_bad(kind).to(dtype))).tolist()
        assert not simplex_stats_ok(bad, dtype), kind


def test_validate_args_false_skips_the_value_check():
    y = _bad("negative")
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(4))
    assert torch.isfinite(soft_target_infonce(z, y, validate_args=False))
    with pytest.raises(ValueError, match="must have C=5 columns"):  # shapes are still checked
        soft_target_infonce(z, y[:, :4], validate_args=False)


def test_integer_labels_cost_one_read_of_their_own():
    """Labels are checked before the loss indexes with them (an out-of-range label must not
    reach ``gather``), in one read for both ends of the range; then the result's read."""
    labels = torch.tensor([0, 1, 4, 3])
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(5))
    soft_target_infonce(z, labels)
    with _count_host_reads() as reads:
        soft_target_infonce(z, labels)
    assert len(reads) == 2, reads
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\]; found values in \[0, 5\]"):
        soft_target_infonce(z, torch.tensor([0, 1, 5, 3]))
    with pytest.raises(ValueError, match=r"found values in \[-1, 3\]"):
        soft_target_cross_entropy(z, torch.tensor([0, -1, 2, 3]))


def test_targets_gathered_across_ranks_are_checked_before_the_gather(monkeypatch):
    """Under DDP a deferred check would run after the all_gather: the other ranks would score
    their rows against the bad rank's targets. Simulated in one process."""
    import softnce.infonce as infonce_module

    seen = []
    monkeypatch.setattr(infonce_module, "is_distributed", lambda: True)
    monkeypatch.setattr(infonce_module, "gather_targets", lambda t: (seen.append(t), (t, 0))[1])
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(6))
    for kind in ("negative", "nan"):
        with pytest.raises(ValueError, match=BAD_MSG[kind]):
            SoftTargetInfoNCE()(z, _bad(kind))
    assert not seen
    SoftTargetInfoNCE()(z, _good())
    assert len(seen) == 1
    SoftTargetInfoNCE(gather_distributed=False)(z, _good())  # local: deferred, no gather
    assert len(seen) == 1


def test_shape_errors_come_before_value_errors():
    y = _bad("nan")
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(7))
    with pytest.raises(ValueError, match="noise_probs must have length C=5"):
        soft_target_infonce(z, y, torch.full((4,), 0.25))
    with pytest.raises(ValueError, match=r"negatives must hold class indices"):
        separated_infonce(z, y, torch.tensor([9]))
    with pytest.raises(ValueError, match="targets must be finite"):  # values: targets first
        soft_target_infonce(z, y, torch.full((C,), 0.5))


@pytest.mark.parametrize("form", ["dense", "labels", "soft"])
def test_vmap_with_validation_says_what_to_do(form, read_mode):
    labels = torch.tensor([0, 1, 2, 3])
    t = {"dense": _good(), "labels": labels,
         "soft": SoftTargets.label_smoothing(labels, C, 0.1)}[form]
    zs = torch.randn(2, N, C, generator=torch.Generator().manual_seed(8))
    with pytest.raises(RuntimeError, match="pass validate_args=False inside the transform"):
        torch.func.vmap(lambda a: soft_target_infonce(a, t))(zs)
    out = torch.func.vmap(lambda a: soft_target_infonce(a, t, validate_args=False))(zs)
    torch.testing.assert_close(out, torch.stack([soft_target_infonce(a, t) for a in zs]))


def test_read_scalars_reads_each_value_on_the_cpu_and_stacks_elsewhere(monkeypatch):
    """On the CPU each value is read as it is (no stack: on a small problem the stack and the
    Python around it were most of the checks' cost); the accelerator's way, one stack and one
    read, gives the same numbers (forced here), ints staying ints."""
    import softnce._validation as V

    ts = [torch.tensor(1.5), torch.tensor(float("nan")), torch.tensor(-2.0, dtype=torch.float64)]
    stacks = []
    real_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda *a, **k: (stacks.append(1), real_stack(*a, **k))[1])
    with _count_host_reads(batched=False) as reads:
        each = read_scalars(ts)
    assert not stacks and reads == ["item"] * 3
    with _count_host_reads() as reads:  # the accelerator's way, forced
        batched = read_scalars(ts)
    assert len(stacks) == 1 and reads == ["tolist"]
    assert each[0] == batched[0] == 1.5 and each[2] == batched[2] == -2.0
    assert math.isnan(each[1]) and math.isnan(batched[1])
    assert not V.BATCH_READS_ON_CPU  # restored
    lo, hi = read_scalars(torch.aminmax(torch.tensor([3, 0, 2])))
    assert (lo, hi) == (0, 3) and isinstance(lo, int)
    check_labels("targets", torch.tensor([0, 4]), 5, 2, True)
    with pytest.raises(ValueError, match=r"found values in \[0, 5\]"):
        check_labels("targets", torch.tensor([0, 5]), 5, 2, True)


@pytest.mark.parametrize("call", sorted(_calls(None)))
def test_validated_loss_builds_no_stack_on_the_cpu(call, monkeypatch):
    """The CPU path of the checks reads each value and builds no stack of them (the stack is
    the accelerator's one read)."""
    q = torch.full((C,), 1.0 / C)
    fn = _calls(q)[call]
    z = torch.randn(N, C, generator=torch.Generator().manual_seed(3), requires_grad=True)
    y = _good()
    fn(z, y)
    stacks = []
    real_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda *a, **k: (stacks.append(1), real_stack(*a, **k))[1])
    loss = fn(z, y)
    assert not stacks
    loss.backward()
    assert torch.isfinite(z.grad).all()
