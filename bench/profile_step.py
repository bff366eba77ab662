"""Where a GPU step's time goes: MFU against micro batch and backend, plus a profiler table.

    python bench/profile_step.py --out DIR     (GPU; runs in ~2 min)

Uses bench/engine_loop.measure (fixed on-device batch, no data loading) for vit_b16 bf16 50% mask
at several micro batches on `single` and `fsdp`, then profiles three fsdp steps and writes the
top CUDA ops to DIR/profile_top_ops.txt.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_loop import measure  # noqa: E402

BASE = ["model.name=vit_b16", "data.image_size=224", "model.text_length=32", "train.device=cuda",
        "parallel.precision=bf16", "model.mask_ratio=0.5"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    out = Path(a.out)
    rows = []
    for backend, batch in (("single", 256), ("fsdp", 256), ("single", 1024), ("fsdp", 1024), ("fsdp", 2048)):
        r = measure(BASE + [f"parallel.backend={backend}", f"train.global_batch_size={batch}"], steps=15, warmup=3)
        rows.append(r)
        print(f"{backend:7s} batch {batch:5d}: {r['samples_per_sec']:8.0f} samples/s  MFU {100 * r['mfu']:5.1f}%  "
              f"step {1000 * r['step_s']:7.1f} ms  mem {r['max_memory_gb']:.1f} GB", flush=True)
    (out / "mfu_vs_batch.json").write_text(json.dumps(rows, indent=1))
    # Profile: the same step as engine_loop, fsdp, batch 256.
    from torch.profiler import ProfilerActivity, profile

    import engine_loop

    captured = {}
    orig = engine_loop.measure

    def prof_measure(overrides, steps, warmup):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            res = orig(overrides, steps, warmup)
        captured["table"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        return res

    prof_measure(BASE + ["parallel.backend=fsdp", "train.global_batch_size=256"], steps=3, warmup=2)
    (out / "profile_top_ops.txt").write_text(captured["table"])
    print(captured["table"][:6000])


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = True
    main()
