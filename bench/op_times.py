"""Per-op times of a training step, robust to a shared machine: where the threads go.

torch.profiler's key_averages sum each op's wall time over the profiled steps, so one burst of
load from another job lands in whichever op it hit. Here every aten op call of a step is timed
on its own (a TorchDispatchMode: below autograd, so backward's kernels are seen too, and a fused
kernel is one call), the same step is taken several times, and each call keeps its MINIMUM over
the steps: the same work every step, so the minimum is the call's time with the least
interference. Each call also records the process's CPU time (every thread's), so CPU / wall says
how many threads the op really kept busy.

Each call is tagged with the phase of the step it ran in: forward (model and loss), backward,
norm/clip (between backward and the optimizer: the global gradient norm, clipping, the
non-finite test), optimizer (inside Optimizer.step), after (clamp, zero_grad).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode

PHASES = ("forward", "backward", "norm/clip", "optimizer", "after")


@dataclass
class OpCall:
    name: str
    phase: str
    wall_s: float
    cpu_s: float


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls: list[OpCall] = []
        self.phase = "forward"

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Inside backward the autograd engine is evaluating a node on this thread (CPU backward
        # runs on the calling thread); the first op after backward without one is the norm.
        in_backward = torch._C._current_autograd_node() is not None
        if in_backward and self.phase == "forward":
            self.phase = "backward"
        elif not in_backward and self.phase == "backward":
            self.phase = "norm/clip"
        phase = "backward" if in_backward else self.phase
        c0, w0 = time.process_time(), time.perf_counter()
        out = func(*args, **(kwargs or {}))
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        self.calls.append(OpCall(str(func.overloadpacket).removeprefix("aten."), phase, wall, cpu))
        return out


def record_step(step) -> list[OpCall]:
    """Every aten op call of one `step()`, in order, with its phase, wall and CPU seconds."""
    rec = _Recorder()
    pre = register_optimizer_step_pre_hook(lambda *_: rec.set_phase("optimizer"))
    post = register_optimizer_step_post_hook(lambda *_: rec.set_phase("after"))
    try:
        with rec:
            step()
    finally:
        pre.remove()
        post.remove()
    return rec.calls


def min_over_steps(step, steps: int) -> list[OpCall]:
    """`steps` recordings of the same step; each call's minimum wall (and CPU) time over them.
    The op sequence must repeat exactly (the same work each step), else the minimum would mix
    different calls."""
    runs = [record_step(step) for _ in range(steps)]
    first = runs[0]
    for other in runs[1:]:
        if [c.name for c in other] != [c.name for c in first]:
            raise RuntimeError(f"the step's op sequence changed between steps ({len(first)} vs {len(other)} "
                               "calls): take warm-up steps first")
    return [OpCall(c.name, c.phase, min(r[i].wall_s for r in runs), min(r[i].cpu_s for r in runs))
            for i, c in enumerate(first)]


def by_key(calls: list[OpCall], key: str) -> dict[str, dict]:
    """Sums per op name (key="name") or per phase (key="phase"): wall, cpu, count."""
    out: dict[str, dict] = defaultdict(lambda: {"wall_s": 0.0, "cpu_s": 0.0, "count": 0})
    for c in calls:
        row = out[getattr(c, key)]
        row["wall_s"] += c.wall_s
        row["cpu_s"] += c.cpu_s
        row["count"] += 1
    return dict(out)


def side_by_side(results: dict[tuple[str, int], list[OpCall]], key: str, top: int = 0,
                 always: tuple[str, ...] = ()) -> str:
    """A Markdown table: per op (or phase), each (engine, threads) column's summed minimum wall
    time, each engine's speed-up from its fewest to its most threads, and the share of the step.

    results: {(engine, threads): calls}. Ops are ranked by their time in the first engine's
    most-threads column; `top` keeps that many (0: all) plus the names in `always`."""
    cols = list(results)
    sums = {col: by_key(calls, key) for col, calls in results.items()}
    totals = {col: sum(c.wall_s for c in calls) for col, calls in results.items()}
    engines = list(dict.fromkeys(e for e, _ in cols))
    threads = {e: sorted(t for ee, t in cols if ee == e) for e in engines}
    lead = (engines[0], threads[engines[0]][-1])
    names = sorted({n for s in sums.values() for n in s}, key=lambda n: -sums[lead].get(n, {}).get("wall_s", 0.0))
    if key == "phase":
        names = [p for p in PHASES if p in names]
    elif top:
        names = names[:top] + [n for n in always if n in names[top:]]

    def wall(col, n):
        return sums[col].get(n, {}).get("wall_s", 0.0)

    head = [key if key != "name" else "op"]
    for e in engines:
        head += [f"{e} {t}t s" for t in threads[e]] + [f"{e} {threads[e][0]}t->{threads[e][-1]}t"]
        head += [f"{e} share {threads[e][-1]}t"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names + ["step (sum of ops)"]:
        row = [n]
        for e in engines:
            vals = [totals[(e, t)] if n == "step (sum of ops)" else wall((e, t), n) for t in threads[e]]
            row += [f"{v:.3f}" for v in vals]
            row.append(f"{vals[0] / vals[-1]:.2f}x" if vals[-1] > 0 else "-")
            most = (e, threads[e][-1])
            row.append(f"{100 * vals[-1] / totals[most]:.1f}%" if totals[most] else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
