"""Embedded soft-target InfoNCE (``softnce.embedded``) and the label-embedding head.

Every loss here must equal the dense loss on the full logits ``h E^T + b`` (values and
gradients), in every candidate mode and under two-process gloo DDP; chunked evaluation must equal
the full-matrix softmax statistics.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from _helpers import free_port as _free_port
from _helpers import run_workers
from softnce import InfoNCE, SoftTargetCrossEntropy, SoftTargetInfoNCE, SoftTargets
from softnce import soft_target_infonce as dense_infonce
from softnce.embedded import (
    EmbeddingScorer,
    chunked_softmax_stats,
    embedded_infonce,
    soft_target_infonce_embedded,
)
from softnce.losses import separated_infonce
from softnce.models.embedding import LabelEmbeddingHead

F64 = torch.float64
TARGET_FORMS = ("labels", "smooth", "mix", "mix_smooth", "mix_lam_tensor", "k3", "dense")


def _targets(form: str, n: int, c: int, gen: torch.Generator, dtype=F64):
    a = torch.randint(c, (n,), generator=gen)
    b = torch.randint(c, (n,), generator=gen)
    if form == "labels":
        return a
    if form == "smooth":
        return SoftTargets.label_smoothing(a, c, 0.2, dtype=dtype)
    if form == "mix":
        return SoftTargets.mix(a, b, 0.35, c, dtype=dtype)
    if form == "mix_smooth":
        return SoftTargets.mix(a, b, 0.6, c, smoothing=0.1, dtype=dtype)
    if form == "mix_lam_tensor":
        return SoftTargets.mix(a, b, torch.rand(n, generator=gen, dtype=dtype), c, smoothing=0.05,
                               dtype=dtype)
    if form == "k3":  # three components and a per-row uniform mass
        w = torch.rand(n, 3, generator=gen, dtype=dtype)
        u = torch.rand(n, generator=gen, dtype=dtype) * 0.3
        w = w / w.sum(1, keepdim=True) * (1 - u).unsqueeze(1)
        return SoftTargets(torch.randint(c, (n, 3), generator=gen), w, u, c)
    if form == "dense":
        return torch.softmax(torch.randn(n, c, generator=gen, dtype=dtype) * 2, dim=1)
    raise AssertionError(form)


def _problem(n: int, d: int, c: int, seed: int, bias: bool = True, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    e = (torch.randn(c, d, generator=gen, dtype=dtype) * 0.7).requires_grad_()
    b = (torch.randn(c, generator=gen, dtype=dtype) * 0.5).requires_grad_() if bias else None
    return gen, h, e, b


def _noise(kind: str | None, c: int, gen: torch.Generator):
    if kind is None:
        return None
    q = torch.rand(c, generator=gen, dtype=F64) + 0.05
    return q / q.sum()


def _grads(loss, params):
    params = [p for p in params if p is not None]
    return torch.autograd.grad(loss, params)


def _assert_close(a, b, tol=1e-10):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------- functional agreement
@pytest.mark.parametrize(
    "shape,form,temperature,noise,bias",
    [
        (shape, form, t, noise, bias)
        for shape, form, (t, noise, bias) in itertools.product(
            [(6, 4, 9), (13, 7, 40)],
            TARGET_FORMS,
            [(1.0, None, True), (0.3, "prior", True), (2.5, "prior", False), (0.7, None, False)],
        )
    ],
)
def test_functional_matches_dense_values_and_gradients(shape, form, temperature, noise, bias):
    n, d, c = shape
    gen, h, e, b = _problem(n, d, c, seed=hash((shape, form)) % 1000, bias=bias)
    q = _noise(noise, c, gen)
    y = _targets(form, n, c, gen)
    for reduction in ("mean", "sum", "none"):
        got = soft_target_infonce_embedded(h, e, y, b, q, temperature, reduction)
        logits = h @ e.T + (b if b is not None else 0.0)
        ref = dense_infonce(logits, y, q, temperature, reduction)
        _assert_close(got, ref)
    _assert_close(_grads(got.sum(), (h, e, b)), _grads(ref.sum(), (h, e, b)))


@pytest.mark.parametrize("form,noise", [("labels", None), ("mix_smooth", "prior"),
                                        ("k3", "prior"), ("dense", None)])
def test_gradcheck_float64(form, noise):
    gen, h, e, b = _problem(5, 3, 7, seed=3)
    y = _targets(form, 5, 7, gen)
    q = _noise(noise, 7, gen)
    assert torch.autograd.gradcheck(
        lambda h_, e_, b_: soft_target_infonce_embedded(h_, e_, y, b_, q, 0.8), (h, e, b))


def test_float32_agreement_at_larger_c():
    gen, h, e, b = _problem(64, 32, 5000, seed=5, dtype=torch.float32)
    y = SoftTargets.mix(torch.randint(5000, (64,), generator=gen),
                        torch.randint(5000, (64,), generator=gen), 0.7, 5000, smoothing=0.1)
    got = soft_target_infonce_embedded(h, e, y, b, temperature=0.5)
    ref = dense_infonce(h @ e.T + b, y, temperature=0.5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(_grads(got, (h, e, b)), _grads(ref, (h, e, b))):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------- candidate modes
def _module_pair(**kw):
    return SoftTargetInfoNCE(**kw), SoftTargetInfoNCE(**kw)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("noise", [None, "prior"])
def test_batch_mode_module_matches_dense(reduction, noise):
    gen, h, e, b = _problem(9, 5, 30, seed=11)
    q = _noise(noise, 30, gen)
    emb, ref = _module_pair(noise_probs=q, temperature=0.4, reduction=reduction)
    for form in ("labels", "mix_smooth", "dense"):
        y = _targets(form, 9, 30, gen)
        got = embedded_infonce(emb, h, e, y, b)
        want = ref(h @ e.T + b, y)
        assert got.dtype == F64  # float64 inputs stay float64 (noise buffer is float32)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for g1, g2 in zip(_grads(got.sum(), (h, e, b)), _grads(want.sum(), (h, e, b))):
            torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)


def test_queue_mode_matches_dense_over_steps():
    gen, h, e, b = _problem(6, 4, 25, seed=21)
    q = _noise("prior", 25, gen)
    emb, ref = _module_pair(noise_probs=q, temperature=0.6, negatives="queue", queue_size=10)
    emb.train()
    ref.train()
    forms = ("labels", "smooth", "mix", "mix_smooth", "k3", "labels")
    for step, form in enumerate(forms):
        y = _targets(form, 6, 25, gen)
        got = embedded_infonce(emb, h, e, y, b)
        want = ref(h @ e.T + b, y)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for g1, g2 in zip(_grads(got, (h, e, b)), _grads(want, (h, e, b))):
            torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)
        if step == 0:
            assert float(got.detach()) == 0.0  # empty queue: a lone positive
    for name, buf in emb.named_buffers():
        torch.testing.assert_close(buf, dict(ref.named_buffers())[name])
    assert int(emb.queue_len) == 10


def test_queue_mode_with_dense_targets_in_the_queue():
    gen, h, e, b = _problem(5, 4, 12, seed=22)
    emb, ref = _module_pair(negatives="queue", queue_size=7)
    for form in ("smooth", "dense", "mix"):
        y = _targets(form, 5, 12, gen)
        torch.testing.assert_close(embedded_infonce(emb, h, e, y, b), ref(h @ e.T + b, y),
                                   rtol=1e-6, atol=1e-6)
    assert emb.queue_dense.numel() and ref.queue_dense.numel()


@pytest.mark.parametrize("noise", [None, "prior"])
@pytest.mark.parametrize("form", ["labels", "mix_smooth"])
def test_sampled_mode_uses_identical_negatives(noise, form):
    gen, h, e, b = _problem(7, 5, 50, seed=31)
    q = _noise(noise, 50, gen)
    emb, ref = _module_pair(noise_probs=q, temperature=1.3, negatives="sampled",
                            num_negatives=17)
    y = _targets(form, 7, 50, gen)
    torch.manual_seed(123)
    got = embedded_infonce(emb, h, e, y, b)
    torch.manual_seed(123)
    want = ref(h @ e.T + b, y)
    assert torch.equal(emb.last_negatives, ref.last_negatives)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g1, g2 in zip(_grads(got, (h, e, b)), _grads(want, (h, e, b))):
        torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-6)
    # the same negatives through the functional separated form
    sep = separated_infonce(h @ e.T + b, y, emb.last_negatives, q, 1.3)
    torch.testing.assert_close(got, sep, rtol=1e-6, atol=1e-6)


def test_hard_infonce_module_requires_labels():
    gen, h, e, b = _problem(4, 3, 8, seed=41)
    crit = InfoNCE(temperature=0.5)
    y = torch.randint(8, (4,), generator=gen)
    torch.testing.assert_close(embedded_infonce(crit, h, e, y, b), crit(h @ e.T + b, y))
    with pytest.raises(TypeError, match="integer class labels"):
        embedded_infonce(crit, h, e, SoftTargets.from_labels(y, 8), b)


# ------------------------------------------------------------ cost structure of the path
def test_mean_row_is_only_computed_for_uniform_mass():
    gen, h, e, b = _problem(6, 4, 20, seed=51)
    for form, needs_mean in (("labels", False), ("mix", False), ("smooth", True),
                             ("mix_smooth", True)):
        y = _targets(form, 6, 20, gen)
        y = SoftTargets.from_labels(y, 20, dtype=F64) if form == "labels" else y
        scorer = EmbeddingScorer(h, e, b)
        scorer.pairwise(y)
        assert scorer.mean_computed is needs_mean, form


def test_hard_and_mixup_targets_never_read_other_class_rows():
    """Rows of E and b outside the targets are NaN: only a path that reads all C rows (the
    mean row for label smoothing) can turn the loss into NaN."""
    gen, h, e, b = _problem(8, 5, 100, seed=52)
    y_mix = _targets("mix", 8, 100, gen)
    used = torch.unique(y_mix.indices)
    poison = torch.ones(100, dtype=torch.bool)
    poison[used] = False
    e_bad = e.detach().clone()
    e_bad[poison] = float("nan")
    b_bad = b.detach().clone()
    b_bad[poison] = float("nan")
    e_bad.requires_grad_()
    loss = soft_target_infonce_embedded(h, e_bad, y_mix, b_bad)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.all(e_bad.grad[poison] == 0)
    smooth = SoftTargets(y_mix.indices, y_mix.weights * 0.9, torch.full((8,), 0.1, dtype=F64),
                         100)
    assert torch.isnan(soft_target_infonce_embedded(h, e_bad, smooth, b_bad))


def test_sparse_grad_matches_dense_grad():
    gen, h, e, b = _problem(6, 4, 30, seed=53)
    for form in ("mix", "mix_smooth"):
        y = _targets(form, 6, 30, gen)
        e.grad = None
        soft_target_infonce_embedded(h, e, y, b, sparse_grad=True).backward()
        sparse = e.grad
        e.grad = None
        soft_target_infonce_embedded(h, e, y, b).backward()
        assert sparse.is_sparse is (form == "mix")
        dense = sparse.to_dense() if sparse.is_sparse else sparse
        _assert_close(dense, e.grad)


# ------------------------------------------------------------------------ input checks
def test_bad_inputs_raise_clear_errors():
    gen, h, e, b = _problem(4, 3, 6, seed=61)
    y = torch.randint(6, (4,), generator=gen)
    with pytest.raises(ValueError, match="features must have D=3"):
        soft_target_infonce_embedded(torch.randn(4, 5, dtype=F64), e, y)
    with pytest.raises(ValueError, match=r"class_bias must have shape \(6,\)"):
        soft_target_infonce_embedded(h, e, y, torch.zeros(5, dtype=F64))
    with pytest.raises(TypeError, match="features must be floating point"):
        soft_target_infonce_embedded(torch.ones(4, 3, dtype=torch.long), e, y)
    with pytest.raises(ValueError, match="class_embeddings must be a 2-D"):
        soft_target_infonce_embedded(h, torch.zeros(6, dtype=F64), y)
    with pytest.raises(ValueError, match=r"must hold class indices in \[0, 5\]"):
        soft_target_infonce_embedded(h, e, torch.tensor([0, 1, 2, 6]))
    with pytest.raises(ValueError, match="num_classes=7"):
        soft_target_infonce_embedded(h, e, SoftTargets.from_labels(y, 7))
    with pytest.raises(ValueError, match="features must be finite"):
        soft_target_infonce_embedded(torch.full((4, 3), float("nan"), dtype=F64), e, y)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_target_infonce_embedded(h, e, y, temperature=0.0)
    with pytest.raises(TypeError, match="criterion must be a SoftTargetInfoNCE"):
        embedded_infonce(SoftTargetCrossEntropy(), h, e, y)
    with pytest.raises(ValueError, match="labels must be an int64 tensor of shape"):
        chunked_softmax_stats(h, e, torch.zeros(4))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        chunked_softmax_stats(h, e, y, chunk_size=0)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        LabelEmbeddingHead(3, 0)


# -------------------------------------------------------------------- chunked evaluation
def _full_stats(h, e, b, labels, tau, ks):
    logits = (h @ e.T + (b if b is not None else 0.0)) / tau
    p = torch.softmax(logits, dim=1)
    conf, pred = p.max(dim=1)
    onehot = torch.nn.functional.one_hot(labels, e.shape[0]).to(p.dtype)
    top = logits.topk(min(max(ks), e.shape[0]), dim=1).indices
    return {
        "confidences": conf, "predictions": pred, "accuracies": (pred == labels).to(p.dtype),
        "nll": -torch.log_softmax(logits, 1).gather(1, labels[:, None]).squeeze(1),
        "brier": ((p - onehot) ** 2).sum(1),
        "topk_correct": {k: (top[:, :k] == labels[:, None]).any(1).to(p.dtype) for k in ks},
    }


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000, None])
@pytest.mark.parametrize("tau,bias", [(1.0, True), (0.25, False), (3.0, True)])
def test_chunked_stats_equal_full_matrix(chunk, tau, bias):
    gen, h, e, b = _problem(23, 6, 64, seed=71, bias=bias)
    h, e = h.detach() * 2, e.detach()
    b = b.detach() if b is not None else None
    labels = torch.randint(64, (23,), generator=gen)
    got = chunked_softmax_stats(h, e, labels, b, tau, topk=(1, 3, 5), chunk_size=chunk)
    want = _full_stats(h, e, b, labels, tau, (1, 3, 5))
    for key in ("confidences", "accuracies", "nll", "brier"):
        _assert_close(got[key], want[key], tol=1e-12)
    assert torch.equal(got["predictions"], want["predictions"])
    for k in (1, 3, 5):
        assert torch.equal(got["topk_correct"][k], want["topk_correct"][k])


def test_chunked_stats_with_fewer_classes_than_k_and_float32():
    gen, h, e, b = _problem(5, 3, 3, seed=72, dtype=torch.float32)
    labels = torch.randint(3, (5,), generator=gen)
    got = chunked_softmax_stats(h.detach(), e.detach(), labels, b.detach(), 1.0, chunk_size=2)
    assert torch.all(got["topk_correct"][5] == 1)
    want = _full_stats(h.detach(), e.detach(), b.detach(), labels, 1.0, (1, 5))
    torch.testing.assert_close(got["nll"], want["nll"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["brier"], want["brier"], rtol=1e-5, atol=1e-6)


def test_head_eval_stats_feed_the_calibration_meter_like_full_logits():
    from softnce.metrics import CalibrationMeter

    torch.manual_seed(0)
    head = LabelEmbeddingHead(8, 300, eval_chunk_size=37).double()
    with torch.no_grad():
        head.weight.mul_(8.0)
    h = torch.randn(120, 8, dtype=F64)
    labels = torch.randint(300, (120,))
    mask = torch.rand(120) < 0.8
    chunked = CalibrationMeter(n_bins=15, inputs="logits", temperature=0.7, topk=(1, 5))
    full = CalibrationMeter(n_bins=15, inputs="logits", temperature=0.7, topk=(1, 5))
    for sl in (slice(0, 50), slice(50, 120)):
        chunked.update_stats(**head.eval_stats(h[sl], labels[sl], 0.7, mask=mask[sl]))
        with torch.no_grad():
            full.update(head(h[sl])[mask[sl]], labels[sl][mask[sl]])
    got, want = chunked.compute(), full.compute()
    for key in ("top1", "top5", "ece", "mce", "ace", "nll", "brier"):
        assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key


def test_predict_topk_matches_softmax():
    torch.manual_seed(1)
    head = LabelEmbeddingHead(5, 97, eval_chunk_size=10).double()
    h = torch.randn(11, 5, dtype=F64) * 3
    idx, prob = head.predict_topk(h, k=4, temperature=0.5)
    p = torch.softmax(head(h) / 0.5, dim=1)
    ref_p, ref_i = p.topk(4, dim=1)
    assert torch.equal(idx, ref_i)
    _assert_close(prob, ref_p, tol=1e-12)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            head.predict_topk(h, k=4, temperature=bad)


# ----------------------------------------------------------------------------- head
def test_head_compute_loss_matches_criterion_on_full_logits():
    torch.manual_seed(2)
    head = LabelEmbeddingHead(6, 40).double()
    h = torch.randn(10, 6, dtype=F64)
    mask = torch.tensor([True, False] * 5)
    labels = torch.randint(40, (5,))
    soft = SoftTargets.mix(labels, labels.flip(0), 0.3, 40, smoothing=0.1, dtype=F64)
    cases = [
        (SoftTargetInfoNCE(temperature=0.5), soft),
        (InfoNCE(), labels),
        (SoftTargetCrossEntropy(temperature=0.5), soft),
        (torch.nn.CrossEntropyLoss(), labels),
    ]
    for crit, y in cases:
        got = head.compute_loss(h, y, crit, mask=mask)
        want = crit(head(h)[mask], y)
        got_g = torch.autograd.grad(got, list(head.parameters()))
        want_g = torch.autograd.grad(want, list(head.parameters()))
        _assert_close(got, want)
        for g1, g2 in zip(got_g, want_g):
            _assert_close(g1, g2)


def test_head_registered_and_used_by_feature_classifier():
    from types import SimpleNamespace

    from softnce.models import build_model
    from softnce.models.basic import HEADS

    assert "embedding" in HEADS
    bundle = SimpleNamespace(input_shape=(12,), num_classes=500, extra={})
    cfg = SimpleNamespace(head="embedding", model_options={}, drop_path=0.0, input_size=None)
    for name in ("mlp", "head-only"):
        model = build_model(name, bundle, cfg)
        assert hasattr(model, "compute_loss") and hasattr(model, "eval_stats")
        x = torch.randn(8, 12)
        loss = model.compute_loss(x, torch.randint(500, (8,)), SoftTargetInfoNCE())
        loss.backward()
        stats = model.eval_stats(x, torch.randint(500, (8,)), 1.0)
        assert stats["confidences"].shape == (8,) and set(stats["topk_correct"]) == {1, 5}
    cfg.head = "linear"
    assert not hasattr(build_model("head-only", bundle, cfg), "compute_loss")
    with pytest.raises(ValueError, match="takes no model_options"):
        build_model("head-only", bundle, SimpleNamespace(head="embedding",
                                                         model_options={"hidden": [3]}))


# ------------------------------------------------------------------- two-process gloo DDP
DDP_SIZES = (3, 6)  # uneven local batches
DDP_C, DDP_D = 30, 5


def _ddp_data(step: int):
    n = sum(DDP_SIZES)
    gen, h, e, b = _problem(n, DDP_D, DDP_C, seed=100 + step)
    forms = ("labels_as_soft", "mix_smooth", "smooth")
    a = torch.randint(DDP_C, (n,), generator=gen)
    c = torch.randint(DDP_C, (n,), generator=gen)
    form = forms[step % 3]
    if form == "labels_as_soft":
        y = SoftTargets.from_labels(a, DDP_C, dtype=F64)
    elif form == "mix_smooth":
        y = SoftTargets.mix(a, c, 0.3, DDP_C, smoothing=0.1, dtype=F64)
    else:
        y = SoftTargets.label_smoothing(a, DDP_C, 0.2, dtype=F64)
    return h, e, b, y


def _ddp_worker(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        lo = sum(DDP_SIZES[:rank])
        sl = slice(lo, lo + DDP_SIZES[rank])
        q = _noise("prior", DDP_C, torch.Generator().manual_seed(7))
        for mode in ("batch", "queue", "sampled"):
            kw = {"noise_probs": q, "temperature": 0.7, "negatives": mode, "queue_size": 12,
                  "num_negatives": 9, "reduction": "none"}
            dist_crit, dense_dist_crit = SoftTargetInfoNCE(**kw), SoftTargetInfoNCE(**kw)
            ref_crit = SoftTargetInfoNCE(gather_distributed=False, **kw)  # sees the full batch
            for step in range(3):
                h, e, b, y = _ddp_data(step)
                y_local = y[torch.arange(sl.start, sl.stop)]
                if rank == 0 and step == 2:  # different k per rank: the gather pads
                    y_local = y_local.pad_to(3)
                h_local = h[sl].detach().requires_grad_()
                torch.manual_seed(1000 + step)
                got = embedded_infonce(dist_crit, h_local, e, y_local, b)
                torch.manual_seed(1000 + step)
                dense_local = dense_dist_crit(h_local @ e.T + b, y_local)
                torch.testing.assert_close(got, dense_local, rtol=1e-6, atol=1e-6)
                g_h, g_e, g_b = torch.autograd.grad(got.sum(), (h_local, e, b))
                g_e, g_b = g_e.clone(), g_b.clone()
                dist.all_reduce(g_e)
                dist.all_reduce(g_b)
                # single-process reference on the full (concatenated) batch
                if mode == "sampled":
                    full = separated_infonce(h @ e.T + b, y, dist_crit.last_negatives, q, 0.7,
                                             reduction="none")
                else:
                    full = ref_crit(h @ e.T + b, y)
                r_h, r_e, r_b = torch.autograd.grad(full.sum(), (h, e, b))
                torch.testing.assert_close(got, full[sl], rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(g_h, r_h[sl], rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(g_e, r_e, rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(g_b, r_b, rtol=1e-6, atol=1e-6)
                if mode == "queue" and step == 0:
                    assert torch.all(got == 0)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_single_process_full_batch():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_workers(_ddp_worker, (2, _free_port()), nprocs=2, timeout=300)
