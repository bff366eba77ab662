"""Engine throughput on this machine: backends side by side, and what masking saves.

Each configuration runs in its own process (bench/engine_loop.py: one process, fixed batch,
the trainer's step through the Backend), so no state leaks between them.
    python bench/bench_engine.py [--steps 20] [--write]
`--write` replaces the "## Engine (CPU)" section of BENCHMARKS.md with this run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Engine (CPU)"

BACKENDS = [
    ("single", ["parallel.backend=single"]),
    ("fsdp", ["parallel.backend=fsdp"]),
    ("deepspeed ZeRO-1", ["parallel.backend=deepspeed", "parallel.zero_stage=1"]),
    ("deepspeed ZeRO-2", ["parallel.backend=deepspeed", "parallel.zero_stage=2"]),
    ("deepspeed ZeRO-3", ["parallel.backend=deepspeed", "parallel.zero_stage=3"]),
]
MASKS = [0.0, 0.5, 0.75]


def run_one(overrides: list[str], steps: int, warmup: int) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "engine_loop.py"), "--steps", str(steps), "--warmup", str(warmup),
           "train.device=cpu", *overrides]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def build_tables(steps: int, warmup: int, image_size: int) -> str:
    base = [f"data.image_size={image_size}"]
    lines = [f"Tiny model, {image_size} px, batch 64, fp32, 1 process, {steps} timed steps after {warmup} warm-up.", "",
             "| backend (mask 0.5) | samples/s | step ms |", "|---|---|---|"]
    for name, extra in BACKENDS:
        r = run_one(base + extra, steps, warmup)
        lines.append(f"| {name} | {r['samples_per_sec']:.1f} | {1000 * r['step_s']:.1f} |" if "error" not in r
                     else f"| {name} | failed: {r['error'][:80]} | |")
        print(lines[-1], flush=True)
    lines += ["", "| mask ratio (single) | forward+backward+step ms | samples/s | time vs our mask 0 |", "|---|---|---|---|"]
    t0 = None
    for mask in MASKS:
        r = run_one(base + [f"model.mask_ratio={mask}"], steps, warmup)
        t0 = t0 or r["step_s"]
        lines.append(f"| {mask} | {1000 * r['step_s']:.1f} | {r['samples_per_sec']:.1f} | {r['step_s'] / t0:.2f}x |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def write_section(body: str, command: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    cpu = platform.processor() or platform.machine()
    header = (f"{SECTION}\n\nWhat is measured: the trainer's step (forward with masking, contrastive loss, backward,"
              f" clipping, AdamW step, logit-scale clamp) through each Backend on one process, on a fixed batch"
              f" (no data loading), `bench/engine_loop.py`.\n\n**{os.cpu_count()}-core CPU ({cpu})**, Python"
              f" {platform.python_version()}, torch {__import__('torch').__version__},"
              f" {datetime.date.today().isoformat()}, `{command}`\n\n")
    section = header + body + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=128, help="128 px = 256 patches of the tiny model (patch 8), like B/16 at 224 px")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    body = build_tables(args.steps, args.warmup, args.image_size)
    print("\n" + body)
    if args.write:
        write_section(body, "python bench/bench_engine.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
