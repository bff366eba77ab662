"""Step-time jitter from Python's automatic garbage collector, against GcControl (issue 14 item 4).

    python bench/bench_gc.py --steps 300 --heap 1000000 --every 50

Runs the tiny FLIP model's training step (forward, CLIP loss, backward, AdamW) on CPU twice in
the same invocation: (a) Python's automatic GC, (b) GcControl (automatic GC off, gen-1 collection
every --every steps, heap frozen at start). Each step also builds per-sample Python objects the
way a loader/collate and metrics bookkeeping do (--per-step dicts, some with reference cycles).
--heap long-lived objects stand for what a real trainer process holds (shard lists, sample
indices, module/optimizer state): automatic full collections scan them all, which is the pause.

Prints median / p99 / max step time, the p99 - median jitter, time spent in collections, the
collections by generation, and a derived number: the mean per-step delay GC adds to a synchronous
step over --ranks ranks (each step waits for the rank with the longest pause; automatic pauses fall
on unrelated steps per rank, GcControl's on the same step everywhere).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch

from flip_scale.loss import clip_loss
from flip_scale.models import create_model
from flip_scale.train.gc_control import GcControl


def per_step_objects(n: int, step: int) -> list:
    """Batch metadata the way a collate builds it; one in ten holds a cycle (parent <-> child)."""
    out = []
    for i in range(n):
        d = {"key": f"{step:08d}-{i:05d}", "caption": "a photo of a thing", "shard": i % 7}
        if i % 10 == 0:
            d["self"] = d  # freed only by the cyclic GC
        out.append(d)
    return out


def run(mode: str, steps: int, heap_n: int, per_step: int, every: int, batch: int, survivors: int = 5,
        seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create_model("tiny", image_size=32, text_length=16).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, 32, 32)
    tokens = torch.randint(1, 100, (batch, 16))
    heap = [{"sample": i, "url": "s3://bucket/shard", "size": i} for i in range(heap_n)]
    gc.collect()
    gcc = GcControl(every if mode == "gc_control" else 0).start()
    gc_time = [0.0]
    gens = [0, 0, 0]

    def timer(phase, info, _t=[0.0]):
        if phase == "start":
            _t[0] = time.perf_counter()
            gens[info["generation"]] += 1
        else:
            gc_time[0] += time.perf_counter() - _t[0]

    gc.callbacks.append(timer)  # times the automatic collections (and GcControl's, which are gc.collect)
    times, gc_per_step = [], []
    keep = []
    try:
        for step in range(1, steps + 1):
            t0, g0 = time.perf_counter(), gc_time[0]
            meta = per_step_objects(per_step, step)
            keep.append(meta[:survivors])  # some survive (logged records, caches), as in a real loop
            out = model(images, tokens)
            loss = clip_loss(*out[:3])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            del meta
            gcc.step(step)
            times.append(time.perf_counter() - t0)
            gc_per_step.append(gc_time[0] - g0)
    finally:
        gc.callbacks.remove(timer)
        gcc.stop()
    del heap
    warm = times[5:]  # first steps: allocator warm-up, same for both modes
    gcs = gc_per_step[5:]
    warm_sorted = sorted(warm)
    med = statistics.median(warm)
    p99 = warm_sorted[min(len(warm_sorted) - 1, int(0.99 * len(warm_sorted)))]
    return {"mode": mode, "median_ms": med * 1e3, "p99_ms": p99 * 1e3, "max_ms": max(warm) * 1e3,
            "jitter_p99_ms": (p99 - med) * 1e3, "stdev_ms": statistics.pstdev(warm) * 1e3,
            "gc_total_ms": gc_time[0] * 1e3, "steps": len(warm), "gens": gens,
            "gc_max_ms": max(gcs) * 1e3, "gc_per_step": gcs}


def ranks_wait_ms(gc_per_step: list, ranks: int, aligned: bool, draws: int = 2000, seed: int = 0) -> float:
    """Mean per-step delay that GC adds to a synchronous step over `ranks` ranks: each step waits for
    the rank with the longest pause. Automatic GC: each rank's pauses fall on unrelated steps
    (ranks draw independently from the measured per-step GC times). GcControl: every rank pauses
    at the same step, so the job waits for one pause (the measured per-step mean)."""
    import random

    if aligned:
        return statistics.fmean(gc_per_step) * 1e3
    rng = random.Random(seed)
    return statistics.fmean(max(rng.choice(gc_per_step) for _ in range(ranks)) for _ in range(draws)) * 1e3


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--heap", type=int, default=1_000_000, help="long-lived objects held by the process")
    p.add_argument("--per-step", type=int, default=2000, help="Python objects built per step")
    p.add_argument("--every", type=int, default=50, help="GcControl collection interval (steps)")
    p.add_argument("--survivors", type=int, default=5, help="of those, kept alive for the rest of the run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--ranks", type=int, default=512, help="ranks for the derived synchronous-step GC wait")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"tiny model step on CPU, batch {a.batch}, {a.steps} steps, heap {a.heap} objects, "
          f"{a.per_step} objects/step ({a.survivors} kept); GcControl every {a.every} steps")
    print(f"{'mode':>11} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} {'p99-med':>8} {'stdev':>7} "
          f"{'in GC ms':>9} {'longest GC':>10} {'gen0/1/2':>12} {'GC wait/step @' + str(a.ranks) + ' ranks':>24}")
    for mode in ("automatic", "gc_control"):
        r = run(mode, a.steps, a.heap, a.per_step, a.every, a.batch, a.survivors)
        wait = ranks_wait_ms(r["gc_per_step"], a.ranks, aligned=mode == "gc_control")
        print(f"{r['mode']:>11} {r['median_ms']:>10.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} "
              f"{r['jitter_p99_ms']:>8.2f} {r['stdev_ms']:>7.2f} {r['gc_total_ms']:>9.1f} {r['gc_max_ms']:>10.2f} "
              f"{'/'.join(map(str, r['gens'])):>12} {wait:>21.2f} ms")


if __name__ == "__main__":
    main()
