"""Distributed losses: two gloo processes on CPU with UNEVEN local batches must reproduce, row by
row, one process on the concatenated batch (loss and logit gradients); queues and sampled
negatives must be identical on both ranks.

All cases run inside ONE pair of processes started by ``torch.multiprocessing.start_processes``
(starting processes is slow). A failing assertion
in a worker makes ``spawn`` raise in the parent with the worker's traceback; each worker also
writes the names of the cases it completed, which the parent checks.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist

from _helpers import free_port as _free_port
from _helpers import run_workers
from reference import ref_batch_infonce, ref_separated_infonce
from softnce import SoftTargetInfoNCE, SoftTargets, soft_target_infonce
from softnce.distributed import gather_targets

WORLD = 2
C = 6
TAU = 0.7
CASES = ("batch-dense", "batch-int", "batch-soft-k1-k2", "batch-dense-and-soft", "batch-mean",
         "batch-local-only", "gather-int", "gather-mixed-error", "gather-dtypes",
         "gather-classes-error", "queue", "sampled", "step-candidates")


def _split(sizes: list[int], rank: int) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _global_targets(kind: str, sizes: list[int], gen: torch.Generator):
    """(per-rank targets list, global targets for the single-process run)."""
    n = sum(sizes)
    labels = torch.randint(C, (n,), generator=gen)
    other = torch.randint(C, (n,), generator=gen)
    if kind == "dense":
        raw = torch.rand(n, C, generator=gen, dtype=torch.float64) + 0.01
        y = raw / raw.sum(dim=1, keepdim=True)
        return [y[_split(sizes, r)] for r in range(WORLD)], y
    if kind == "int":
        return [labels[_split(sizes, r)] for r in range(WORLD)], labels
    # rank 0: label smoothing (k = 1); rank 1: MixUp of smoothed labels (k = 2)
    s0, s1 = _split(sizes, 0), _split(sizes, 1)
    parts = [SoftTargets.label_smoothing(labels[s0], C, 0.1),
             SoftTargets.mix(labels[s1], other[s1], torch.rand(sizes[1], generator=gen), C, 0.2)]
    if kind == "soft":
        return parts, SoftTargets.cat(parts)
    if kind == "dense-and-soft":  # rank 0 dense, rank 1 sparse: gathered densely
        d0 = parts[0].to_dense(torch.float64)
        return [d0, parts[1]], torch.cat([d0, parts[1].to_dense(torch.float64)])
    raise ValueError(kind)


def _check_rows(rank, sizes, loss_fn, targets_local, z_global, expected_fn):
    """Local rows of the distributed loss (and their logit gradients) equal the global rows."""
    sl = _split(sizes, rank)
    z = z_global[sl].detach().clone().requires_grad_()
    out = loss_fn(z, targets_local)
    assert out.shape == (sizes[rank],)
    out.sum().backward()
    zg = z_global.detach().clone().requires_grad_()
    ref = expected_fn(zg)
    ref.sum().backward()
    torch.testing.assert_close(out.detach(), ref.detach()[sl])
    torch.testing.assert_close(z.grad, zg.grad[sl])


def _all_equal(t: torch.Tensor) -> bool:
    """True when ``t`` is the same on every rank."""
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t.contiguous())
    return all(torch.equal(o, out[0]) for o in out)


def _run_cases(rank: int) -> list[str]:
    done = []
    gen = torch.Generator().manual_seed(1234)  # the same global data on both ranks
    q = torch.rand(C, generator=gen) + 0.1
    q = q / q.sum()
    sizes = [3, 5]  # uneven local batches

    # --- batch mode: dense, int, SoftTargets with k differing across ranks, dense + sparse
    for kind in ("dense", "int", "soft", "dense-and-soft"):
        local, glob = _global_targets(kind, sizes, gen)
        z_global = torch.randn(sum(sizes), C, generator=gen, dtype=torch.float64) * 2
        module = SoftTargetInfoNCE(q, TAU, reduction="none")
        _check_rows(rank, sizes, module, local[rank], z_global,
                    lambda zg, glob=glob: soft_target_infonce(zg, glob, q, TAU, reduction="none"))
        _check_rows(rank, sizes, module, local[rank], z_global,
                    lambda zg, glob=glob: ref_batch_infonce(zg, glob, q, TAU, reduction="none"))
        done.append(f"batch-{kind}" if kind != "soft" else "batch-soft-k1-k2")

    # --- mean reduction is over the local rows
    local, glob = _global_targets("soft", sizes, gen)
    z_global = torch.randn(sum(sizes), C, generator=gen, dtype=torch.float64)
    sl = _split(sizes, rank)
    mean = SoftTargetInfoNCE(q, TAU)(z_global[sl], local[rank])
    torch.testing.assert_close(mean, soft_target_infonce(z_global, glob, q, TAU, "none")[sl].mean())
    done.append("batch-mean")

    # --- gather_distributed=False: candidates are the local batch only
    local_only = SoftTargetInfoNCE(q, TAU, gather_distributed=False, reduction="none")
    torch.testing.assert_close(local_only(z_global[sl], local[rank]),
                               soft_target_infonce(z_global[sl], local[rank], q, TAU, "none"))
    done.append("batch-local-only")

    # --- gather_targets itself: int labels in rank order with the right offset
    labels_local = torch.arange(sizes[rank]) + 10 * rank
    gathered, offset = gather_targets(labels_local)
    assert offset == sum(sizes[:rank])
    assert gathered.tolist() == [0, 1, 2, 10, 11, 12, 13, 14]
    done.append("gather-int")
    mixed = torch.tensor([0, 1]) if rank == 0 else SoftTargets.from_labels(torch.tensor([1]), C)
    with pytest.raises(ValueError, match=r"integer labels on some ranks and soft targets"):
        gather_targets(mixed)
    done.append("gather-mixed-error")
    # float32 on one rank, float64 / int32 on the other: gathered in a common dtype
    dense = torch.full((sizes[rank], C), 1.0 / C, dtype=torch.float32 if rank else torch.float64)
    gathered, _ = gather_targets(dense)
    assert gathered.dtype == torch.float64 and gathered.shape == (sum(sizes), C)
    st = SoftTargets.from_labels(torch.tensor([rank]), C, dtype=torch.float64 if rank else
                                 torch.float32)
    gathered, _ = gather_targets(st)
    assert gathered.dtype == torch.float64 and gathered.indices.tolist() == [[0], [1]]
    gathered, _ = gather_targets(torch.tensor([rank], dtype=torch.int32 if rank else torch.long))
    assert gathered.tolist() == [0, 1]
    done.append("gather-dtypes")
    with pytest.raises(ValueError, match=r"different numbers of classes \[6, 7\]"):
        gather_targets(torch.full((2, C + rank), 1.0 / (C + rank)))
    done.append("gather-classes-error")

    # --- queue: identical on both ranks and equal to one process fed the concatenated batches
    dist_q = SoftTargetInfoNCE(q, TAU, negatives="queue", queue_size=7, reduction="none")
    single = SoftTargetInfoNCE(q, TAU, negatives="queue", queue_size=7, reduction="none",
                               gather_distributed=False)
    plan = [([2, 3], "soft"), ([1, 2], "int"), ([3, 1], "soft"), ([2, 2], "dense"),
            ([4, 3], "soft")]
    for step_sizes, kind in plan:
        local, glob = _global_targets(kind, step_sizes, gen)
        z_global = torch.randn(sum(step_sizes), C, generator=gen, dtype=torch.float64)
        sl = _split(step_sizes, rank)
        z = z_global[sl].clone().requires_grad_()
        out = dist_q(z, local[rank])
        zg = z_global.clone().requires_grad_()
        ref = single(zg, glob)
        torch.testing.assert_close(out, ref[sl])
        out.sum().backward()
        ref.sum().backward()
        torch.testing.assert_close(z.grad, zg.grad[sl])
        for name in ("queue_indices", "queue_weights", "queue_uniform", "queue_dense",
                     "queue_ptr", "queue_len"):
            buf = getattr(dist_q, name)
            assert _all_equal(buf), name
            assert torch.equal(buf, getattr(single, name)), name
    assert int(dist_q.queue_len) == 7  # wrapped around
    done.append("queue")

    # --- sampled: the same negatives on both ranks although the local RNGs differ
    sampler = SoftTargetInfoNCE(q, TAU, negatives="sampled", num_negatives=11, reduction="none")
    torch.manual_seed(100 + rank)
    local, glob = _global_targets("soft", sizes, gen)
    z_global = torch.randn(sum(sizes), C, generator=gen, dtype=torch.float64)
    sl = _split(sizes, rank)
    for _ in range(2):
        out = sampler(z_global[sl], local[rank])
        negs = sampler.last_negatives
        assert negs.shape == (11,)
        assert _all_equal(negs)
        torch.testing.assert_close(out, ref_separated_infonce(z_global[sl], local[rank], negs, q,
                                                              TAU, "none"))
    done.append("sampled")

    # --- step candidates: local steps of 3 and 5 rows split into micro-batches; every micro-batch
    # row is scored against the global step (both ranks); the weighted micro losses and their
    # gradients equal the rows of one process on the concatenated step
    local, glob = _global_targets("soft", sizes, gen)
    z_global = torch.randn(sum(sizes), C, generator=gen, dtype=torch.float64)
    sl = _split(sizes, rank)
    step_fn = SoftTargetInfoNCE(q, TAU, reduction="sum")
    z = z_global[sl].detach().clone().requires_grad_()
    splits = [[1, 2], [2, 2, 1]][rank]  # different numbers of micro-batches per rank
    total = torch.zeros((), dtype=torch.float64)
    with step_fn.step_candidates(local[rank]):
        start = 0
        for nb in splits:
            part = step_fn(z[start:start + nb], local[rank][start:start + nb])
            part.backward()
            total = total + part.detach()
            start += nb
    zg = z_global.detach().clone().requires_grad_()
    ref = ref_batch_infonce(zg, glob, q, TAU, reduction="none")
    ref[sl].sum().backward()
    torch.testing.assert_close(total, ref.detach()[sl].sum())
    torch.testing.assert_close(z.grad, zg.grad[sl])
    done.append("step-candidates")
    return done


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    try:
        done = _run_cases(rank)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(done))


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_match_single_process(tmp_path):
    # each child runs with one intra-op thread, as DataLoader workers do
    run_workers(_worker, (_free_port(), str(tmp_path)), nprocs=WORLD, timeout=300)
    for rank in range(WORLD):
        done = (tmp_path / f"rank{rank}.txt").read_text().split("\n")
        assert tuple(done) == CASES, (rank, done)
