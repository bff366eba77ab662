"""Every collective of a simulated step, logged from the dispatcher with the phase it runs in.

Sizes are what the communication model (planning/comm.py) counts: S = the all-gather's output,
the reduce-scatter's input, the all-reduce's tensor, each as numel x element size. (A tensor's
storage size would be wrong: FSDP's all-gather output and the loss's gathered rows are views of
larger buffers, so storage counts one buffer many times.)

Phases, as the planner names them: the loss's feature gather and its gradient's reduce-scatter
are the functional collectives with autograd (flip_scale/loss.py), `loss_forward` / `loss_backward`;
the backend's collectives (FSDP's c10d all-gathers, reduce-scatters, HSDP's all-reduce) are
`forward` before the step's backward, `backward` inside it; anything after backward (the
gradient norm's all-reduce) is `step`.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_c10d = torch.ops.c10d
_func = torch.ops._c10d_functional


def _nbytes(t) -> int:
    if isinstance(t, (list, tuple)):
        return sum(_nbytes(x) for x in t)
    return t.numel() * t.element_size()


def _pg_size(boxed) -> int:
    from torch._C._distributed_c10d import ProcessGroup

    return ProcessGroup.unbox(boxed).size()


def _group_size_by_name(name) -> int:
    from torch.distributed.distributed_c10d import _resolve_process_group

    return _resolve_process_group(name).size()


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


# op -> (kind, family, (args) -> (S bytes, group size)). family "loss" = the functional
# collectives the loss uses; "backend" = c10d's in-place collectives (FSDP, HSDP) and DTensor's.
_OPS = {
    _c10d._allgather_base_.default: ("all_gather", "backend", lambda a: (_nbytes(a[0]), _pg_size(a[2]))),
    _c10d._reduce_scatter_base_.default: ("reduce_scatter", "backend", lambda a: (_nbytes(a[1]), _pg_size(a[2]))),
    _c10d.allreduce_.default: ("all_reduce", "backend", lambda a: (_nbytes(a[0]), _pg_size(a[1]))),
    _c10d.allgather_into_tensor_coalesced_.default: ("all_gather", "backend",
                                                     lambda a: (_nbytes(a[0]), _pg_size(a[2]))),
    _c10d.reduce_scatter_tensor_coalesced_.default: ("reduce_scatter", "backend",
                                                     lambda a: (_nbytes(a[1]), _pg_size(a[2]))),
    _func.all_gather_into_tensor.default: ("all_gather", "loss", lambda a: (_nbytes(a[0]) * a[1], a[1])),
    _func.reduce_scatter_tensor.default: ("reduce_scatter", "loss", lambda a: (_nbytes(a[0]), a[2])),
    _func.all_reduce.default: ("all_reduce", "backend", lambda a: (_nbytes(a[0]), _group_size_by_name(a[2]))),
    _func.all_reduce_coalesced.default: ("all_reduce", "backend",
                                         lambda a: (_nbytes(a[0]), _group_size_by_name(a[2]))),
}


class CollectiveLog(TorchDispatchMode):
    """Counts calls and bytes per (phase, kind, group size). `new_step()` starts a step (the
    phase goes back to forward); `rows()` gives the planner's row format."""

    def __init__(self):
        super().__init__()
        self.calls: dict = defaultdict(int)
        self.bytes: dict = defaultdict(int)
        self._after_backward = False
        self.enabled = True

    def new_step(self) -> None:
        self.calls.clear()
        self.bytes.clear()
        self._after_backward = False

    def _phase(self, family: str, kind: str) -> str:
        backward = _in_backward()
        if backward:
            self._after_backward = True
        if family == "loss" and kind in ("all_gather", "reduce_scatter"):
            return "loss_backward" if backward else "loss_forward"
        if backward:
            return "backward"
        return "step" if self._after_backward else "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.distributed.tensor import DTensor

        # Let DTensor turn itself into local ops first: those are the collectives that run.
        if any(t is DTensor or (isinstance(t, type) and issubclass(t, DTensor)) for t in types):
            return NotImplemented
        spec = _OPS.get(func)
        if spec is not None and self.enabled:
            kind, family, size = spec
            nbytes, group = size(args)
            key = (self._phase(family, kind), kind, group)
            self.calls[key] += 1
            self.bytes[key] += nbytes
        elif _in_backward():
            self._after_backward = True
        return func(*args, **(kwargs or {}))

    def rows(self) -> list[dict]:
        """[{phase, kind, group, calls, total_bytes, bytes_per_rank}] with the planner's ring
        factors: (n-1)/n x S for all-gather / reduce-scatter, twice that for all-reduce."""
        out = []
        for (phase, kind, group), calls in sorted(self.calls.items()):
            total = self.bytes[(phase, kind, group)]
            ring = (group - 1) / group if group > 1 else 0.0
            factor = 2 * ring if kind == "all_reduce" else ring
            out.append({"phase": phase, "kind": kind, "group": group, "calls": calls, "total_bytes": total,
                        "bytes_per_rank": factor * total})
        return out
