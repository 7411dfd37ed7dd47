"""Gathering targets across ranks with uneven batch sizes (torch only).

Targets carry no gradient, so gathering them is a plain ``all_gather``; logits are never gathered.
All functions are no-ops (world size 1) when ``torch.distributed`` is not initialised.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from softnce.targets import SoftTargets


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _all_gather_int(values: list[int], device: torch.device) -> torch.Tensor:
    """Gather a short list of ints from every rank: returns (world, len(values))."""
    _, world = rank_and_world()
    local = torch.tensor(values, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(out, local)
    return torch.stack(out)


def _gather_padded(t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """all_gather tensors whose first dimension differs per rank (``sizes``)."""
    max_n = max(sizes)
    pad = t.new_zeros((max_n - t.shape[0], *t.shape[1:]))
    local = torch.cat([t, pad]) if pad.shape[0] else t.contiguous()
    out = [torch.empty_like(local) for _ in sizes]
    dist.all_gather(out, local)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


def gather_targets(
    targets: torch.Tensor | SoftTargets,
) -> tuple[torch.Tensor | SoftTargets, int]:
    """Gather targets from all ranks in rank order; returns ``(global_targets, offset)``.

    ``offset`` is the global row index of this rank's first target, so the positive of local row
    ``i`` is ``offset + i``. Ranks may hold different batch sizes. If any rank holds dense
    targets, all are gathered dense; ``SoftTargets`` with different ``k`` are zero-padded.
    Integer labels (N,) are gathered as they are.
    """
    if not is_distributed():
        return targets, 0
    rank, _ = rank_and_world()
    device = targets.device
    # last field: 1 if this rank's target values are float64. all_gather needs the same dtype on
    # every rank, so values are gathered in float64 if any rank has float64, else in float32.
    if isinstance(targets, SoftTargets):
        info = [len(targets), 0, targets.k, targets.num_classes,
                int(targets.dtype == torch.float64)]
    elif targets.dim() == 1:
        info = [targets.shape[0], 2, 1, 0, 0]
    else:
        info = [targets.shape[0], 1, 0, targets.shape[1], int(targets.dtype == torch.float64)]
    meta = _all_gather_int(info, device).cpu()
    sizes = meta[:, 0].tolist()
    offset = int(sum(sizes[:rank]))
    kinds = set(meta[:, 1].tolist())
    dtype = torch.float64 if int(meta[:, 4].max()) else torch.float32
    classes = sorted(set(meta[:, 3].tolist()) - {0})
    if len(classes) > 1:
        raise ValueError(f"gather_targets: the ranks hold targets over different numbers of "
                         f"classes {classes}")
    if len(kinds) > 1 and 2 in kinds:
        raise ValueError(
            "gather_targets: integer labels on some ranks and soft targets on others; use the same "
            "target form on every rank"
        )
    if kinds == {2}:
        return _gather_padded(targets.long(), sizes), offset
    if 1 in kinds:  # at least one rank is dense: gather everything dense
        dense = targets.to_dense(dtype) if isinstance(targets, SoftTargets) else targets.to(dtype)
        return _gather_padded(dense, sizes), offset
    k = int(meta[:, 2].max())
    st = targets.pad_to(k)
    return (
        SoftTargets(
            _gather_padded(st.indices, sizes),
            _gather_padded(st.weights.to(dtype), sizes),
            _gather_padded(st.uniform.to(dtype), sizes),
            st.num_classes,
            validate_args=False,
        ),
        offset,
    )


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast from ``src`` (no-op without a process group)."""
    if is_distributed():
        dist.broadcast(t, src)
    return t
