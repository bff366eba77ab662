"""Small collectives the trainer, evaluation and checkpointing share.

Each is a no-op (identity) without a process group, so single-process code calls them freely.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flags: torch.Tensor) -> list[bool]:
    """Which of these 0/1 flags is set on at least one rank (one all-reduce, one host sync)."""
    flags = flags.detach().float().clone()
    if is_distributed():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [f > 0 for f in flags.tolist()]


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over ranks, on the device, in the tensor's own dtype (integer counts stay
    exact); no host sync: the caller decides when to read."""
    values = values.detach().clone()
    if is_distributed():
        dist.all_reduce(values)
    return values


def gather_ragged_rows(values: torch.Tensor) -> torch.Tensor:
    """Every rank's rows concatenated in rank order, where the row counts may differ (evaluation
    shards): counts first, then one all-gather padded to the longest, cut after."""
    if not is_distributed():
        return values
    n = torch.tensor([values.shape[0]], device=values.device)
    counts = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(counts, n)
    counts = [int(c.item()) for c in counts]
    pad = values.new_zeros((max(counts), *values.shape[1:]))
    pad[: values.shape[0]] = values
    out = [torch.zeros_like(pad) for _ in range(world_size())]
    dist.all_gather(out, pad)
    return torch.cat([o[:c] for o, c in zip(out, counts)])


def broadcast_object(obj, src: int = 0):
    """rank `src`'s Python object on every rank (pickled; for small things like shard lists)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Every rank's copy of a small 1-D tensor, stacked [world, k], on the host (one all-gather
    and one host sync: log steps). Sums, maxima and medians over ranks all come from it."""
    values = values.detach().float().reshape(1, -1)
    if is_distributed():
        out = values.new_empty((world_size(), values.shape[1]))
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in 2.14
        gather(out, values.contiguous())
        values = out
    return values.cpu()
