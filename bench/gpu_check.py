"""GPU engine check for a lent H100/H200: tiny and vit_b16 on 1 GPU, fsdp (and deepspeed when it
imports), bf16, compile off and on, mask 0.5; samples/s, MFU and max memory per run.
First, the measurements still open (no GPU was lent to the tasks that built them):
- issue 13 item 4: data.decode=device, images/s per GPU of the step-side decode (nvJPEG batched
  decode_jpeg + crop/resize/flip) at 224 px from 480 px photo-like JPEGs, and the loader
  workers' rate when they only parse headers (bench/bench_loader.py --decode device --device cuda);
- issue 11 item 4: host syncs per training step under torch.cuda.set_sync_debug_mode("warn")
  (bench/sync_count.py, vit_b16 bf16 at 50% masking);
- issue 11 item 5: ours (bf16, fused AdamW, compile) against open_clip (amp_bf16, compiled) on
  the same towers at 224 px, batch 256 (bench/bench_vs_openclip.py --device cuda; goal >= 1.25x).
  Needs open_clip importable on the GPU host: pip download its wheels for the host's Python
  into wheels/ (git-ignored) and carry them; skipped with one line otherwise.

Each run is its own process (bench/engine_loop.py) with a timeout, in priority order, under a
global deadline so the whole check stays inside its time box; a run that does not fit is
recorded as skipped, a failing run as failed, and the rest go on.
    python bench/gpu_check.py --out DIR [--budget-s 450] [--dry-run]
--dry-run: CPU, tiny only, 2 steps, fp32, no compile (checks the script itself anywhere).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODELS = {
    # batch: comfortably inside 80 GB at bf16 with 50% masking, no activation checkpointing.
    "vit_b16": ["model.name=vit_b16", "data.image_size=224", "model.text_length=32", "train.global_batch_size=256"],
    "tiny": ["model.name=tiny", "data.image_size=32", "train.global_batch_size=1024"],
}


def deepspeed_importable() -> bool:
    r = subprocess.run([sys.executable, "-c", "import deepspeed"], capture_output=True, text=True)
    return r.returncode == 0


def plan(dry_run: bool, with_deepspeed: bool) -> list[tuple[str, list[str]]]:
    """(label, overrides) in priority order: what matters most runs first."""
    backends = {"fsdp": ["parallel.backend=fsdp"]}
    if with_deepspeed:
        backends["deepspeed-z2"] = ["parallel.backend=deepspeed", "parallel.zero_stage=2"]
    if dry_run:
        return [(f"tiny/{b}/eager", MODELS["tiny"] + o + ["train.device=cpu", "train.global_batch_size=64"])
                for b, o in backends.items()]
    common = ["train.device=cuda", "parallel.precision=bf16", "model.mask_ratio=0.5"]
    order = [("vit_b16", "fsdp", False), ("vit_b16", "fsdp", True), ("vit_b16", "deepspeed-z2", False),
             ("tiny", "fsdp", False), ("tiny", "deepspeed-z2", False), ("tiny", "fsdp", True),
             ("vit_b16", "deepspeed-z2", True), ("tiny", "deepspeed-z2", True)]
    runs = []
    for model, backend, compiled in order:
        if backend in backends:
            label = f"{model}/{backend}/{'compile' if compiled else 'eager'}"
            runs.append((label, MODELS[model] + backends[backend] + common + [f"parallel.compile={str(compiled).lower()}"]))
    return runs


def run_json(label: str, cmd: list[str], timeout_s: float, key: str | None = None) -> dict:
    """Run a benchmark command that prints one JSON line; its fields (under `key` if given), or the
    timeout / failure with the last lines of its stderr."""
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"label": label, "status": "timeout", "wall_s": time.time() - t0}
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-3:] if r.stderr.strip() else [f"exit {r.returncode}"]
        return {"label": label, "status": "failed", "error": " | ".join(tail), "wall_s": time.time() - t0}
    fields = json.loads(r.stdout.strip().splitlines()[-1])
    return {"label": label, "status": "ok", "wall_s": time.time() - t0, **({key: fields} if key else fields)}


def run(label: str, overrides: list[str], steps: int, warmup: int, timeout_s: float) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "engine_loop.py"), "--steps", str(steps), "--warmup", str(warmup),
           *overrides]
    return run_json(label, cmd, timeout_s)


DECODE_LABEL = "data.decode=device/nvjpeg"


def run_decode(dry_run: bool, timeout_s: float) -> dict:
    """bench_loader.py --decode device on the GPU: worker rates (device vs cpu decode) and the
    device-side images/s with its parity to the CPU path."""
    if dry_run:
        args = ["--device", "cpu", "--samples", "64", "--batch", "16", "--batches", "2",
                "--device-batches", "2", "--workers", "1"]
    else:
        args = ["--device", "cuda", "--samples", "1200", "--batch", "256", "--batches", "8",
                "--device-batches", "4", "--workers", "8"]
    cmd = [sys.executable, str(ROOT / "bench" / "bench_loader.py"), "--decode", "device", "--rounds", "1",
           "--no-profile", "--json", *args]
    return run_json(DECODE_LABEL, cmd, timeout_s, key="decode")


SYNC_LABEL = "sync count (vit_b16 bf16 step)"
VS_OPENCLIP_LABEL = "ours vs open_clip (bf16, compile)"


def run_sync_count(dry_run: bool, timeout_s: float) -> dict:
    """Host syncs per (non-log) training step under torch.cuda.set_sync_debug_mode("warn")."""
    over = (["train.device=cpu"] if dry_run else
            ["model.name=vit_b16", "data.image_size=224", "train.global_batch_size=256", "parallel.precision=bf16",
             "model.mask_ratio=0.5", "parallel.activation_checkpointing=false"])
    cmd = [sys.executable, str(ROOT / "bench" / "sync_count.py"), "--steps", "2" if dry_run else "5", *over]
    return run_json(SYNC_LABEL, cmd, timeout_s, key="sync")


def run_vs_openclip(dry_run: bool, timeout_s: float) -> dict:
    """Issue 11's GPU goal: ours (bf16, fused AdamW, compile) against open_clip (amp_bf16, its
    AdamW, compiled too) on the same towers; needs open_clip importable (carry its wheels)."""
    try:
        import open_clip  # noqa: F401
    except ImportError:
        return {"label": VS_OPENCLIP_LABEL, "status": "skipped (open_clip not importable: carry its wheels)"}
    args = (["--device", "cpu", "--masks", "0.5", "--trials", "1", "--warmup", "1", "--image-size", "32",
             "--batch", "8"] if dry_run else
            ["--device", "cuda", "--precision", "bf16", "--compile", "--masks", "0.0", "0.5",
             "--trials", "3", "--steps", "5", "--warmup", "3", "--image-size", "224", "--batch", "256"])
    cmd = [sys.executable, str(ROOT / "bench" / "bench_vs_openclip.py"), "--json", *args]
    return run_json(VS_OPENCLIP_LABEL, cmd, timeout_s, key="vs_openclip")


def extra_line(r: dict) -> str:
    """The sync count and the open_clip comparison, one line each."""
    if r["status"] != "ok":
        return f"{r['label']}: {r['status']} {r.get('error', '')}"
    if "sync" in r:
        s = r["sync"]
        return f"{r['label']}: {s['syncs']} syncs in {s['steps']} steps on {s['device']} {s['sites']}"
    v = r["vs_openclip"]
    return f"{r['label']}: speed ratio ours/open_clip {v['speed_ratio']} on {v['device_name']} ({v['timing']})"


def decode_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['label']}: {r['status']} {r.get('error', '')}"
    d = r["decode"]
    side, p = d["device_side"], d["device_side"]["parity_vs_cpu"]
    return (f"{r['label']}: device side {side['images_per_s']} images/s on {side['device']} "
            f"({side['ms_per_batch']} ms per batch of {side['batch']}); workers {d['images_per_s']} images/s "
            f"decode=device vs {d['cpu_decode_images_per_s']} decode=cpu with {d['workers']} workers; "
            f"parity mean {p['mean_abs']} max {p['max_abs']} uint8 levels")


def table(results: list[dict]) -> str:
    lines = ["| run | status | samples/s | MFU | max mem GB | step ms | warm-up s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if r["label"] in (DECODE_LABEL, SYNC_LABEL, VS_OPENCLIP_LABEL):
            continue  # their own lines (decode_line, extra_line)
        if r["status"] == "ok":
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
            mem = f"{r['max_memory_gb']:.1f}" if r.get("max_memory_gb") is not None else "-"
            lines.append(f"| {r['label']} | ok | {r['samples_per_sec']:.0f} | {mfu} | {mem} | "
                         f"{1000 * r['step_s']:.1f} | {r['warmup_s']:.0f} |")
        else:
            lines.append(f"| {r['label']} | {r['status']} {r.get('error', '')[:60]} | | | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting runs after this (whole check < 8 min)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    start = time.time()
    steps, warmup = (2, 1) if args.dry_run else (args.steps, args.warmup)
    with_ds = deepspeed_importable()
    if not with_ds:
        print("deepspeed does not import here: deepspeed runs skipped", file=sys.stderr)
    # The measurements still open come first (nvJPEG decode, sync count, ours vs open_clip); the
    # engine matrix, measured on an H200 before (BENCHMARKS.md), gets what the budget leaves.
    results = [run_decode(args.dry_run, timeout_s=min(args.budget_s, 90))]
    print(decode_line(results[0]), file=sys.stderr, flush=True)
    for extra, cap in ((run_sync_count, 90), (run_vs_openclip, 240)):
        left = args.budget_s - (time.time() - start)
        results.append(extra(args.dry_run, timeout_s=max(min(left, cap), 1)))
        print(extra_line(results[-1]), file=sys.stderr, flush=True)
    for label, overrides in plan(args.dry_run, with_ds):
        left = args.budget_s - (time.time() - start)
        # A compiled vit_b16 run needs ~1-2 min; don't start what cannot finish.
        if left < (90 if "compile" in label else 30):
            results.append({"label": label, "status": "skipped (time)"})
            continue
        print(f"running {label} ...", file=sys.stderr, flush=True)
        results.append(run(label, overrides, steps, warmup, timeout_s=min(left, 240)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"deepspeed": with_ds, "dry_run": args.dry_run, "total_s": time.time() - start, "runs": results}
    (out / "gpu_results.json").write_text(json.dumps(doc, indent=1))
    print(decode_line(results[0]))
    for r in results[1:3]:
        print(extra_line(r))
    print(table(results))
    print(f"total {doc['total_s']:.0f}s; results in {out / 'gpu_results.json'}")


if __name__ == "__main__":
    main()
