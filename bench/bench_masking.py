"""Masking speed-up: image-tower forward+backward time at mask 0 / 0.5 / 0.75, same invocation.

    python bench/bench_masking.py --model vit_b16 --batch 8 --steps 3            # CPU
    python bench/bench_masking.py --model vit_l16 --batch 256 --steps 20 --bf16  # GPU

Prints, per mask ratio, the FLOPs counter's image-tower ratio and the measured time ratio
(a ratio survives a noisy machine; absolute times only mean something on a GPU).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from flip_scale.models import create_model, flops_per_sample


def time_image_tower(model, images, ratio, steps, warmup, device):
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        emb = model.encode_image(images, mask_ratio=ratio)
        emb.float().sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vit_b16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(a.model).to(device).train()
    images = torch.randn(a.batch, 3, model.size.image_size, model.size.image_size, device=device)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if a.bf16 else torch.autocast(device.type, enabled=False)
    rows = []
    with ctx:
        for ratio in (0.0, 0.5, 0.75):
            rows.append({"mask_ratio": ratio, "sec_per_step": time_image_tower(model, images, ratio, a.steps, a.warmup, device),
                         "image_gflops": flops_per_sample(model.size, ratio)["image"] / 1e9})
    base = rows[0]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{a.model} image tower fwd+bwd, batch {a.batch}, {'bf16' if a.bf16 else 'fp32'}, {name}")
    print(f"{'mask':>5} {'s/step':>9} {'img/s':>9} {'time ratio':>10} {'FLOPs ratio':>11}")
    for r in rows:
        r["time_ratio"] = r["sec_per_step"] / base["sec_per_step"]
        r["flops_ratio"] = r["image_gflops"] / base["image_gflops"]
        r["images_per_sec"] = a.batch / r["sec_per_step"]
        print(f"{r['mask_ratio']:>5.2f} {r['sec_per_step']:>9.4f} {r['images_per_sec']:>9.1f} {r['time_ratio']:>10.2f} "
              f"{r['flops_ratio']:>11.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "batch": a.batch, "device": name, "bf16": a.bf16, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
