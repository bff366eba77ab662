"""Loader throughput: decoded + augmented + tokenised images/s, per worker count.

Writes LAION-like shards (synthetic pictures stored as 480 px JPEGs, FLIP's stored size) to a
temporary folder, then times TrainLoader over them at the training resolution, for each worker
count, after a warm-up. Prints a table and, with --write, replaces the "## Data loader" section
of BENCHMARKS.md (machine, date, command, results).

    python bench/bench_loader.py --workers 0 1 2 --image-size 224 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flip_scale.data.loader import build_train_loader  # noqa: E402
from flip_scale.data.synthetic import write_synthetic_shards  # noqa: E402


def measure(shards: str, workers: int, image_size: int, batch: int, batches: int) -> float:
    cfg = types.SimpleNamespace(train_shards=shards, tokenizer="builtin", image_size=image_size,
                                workers=workers, resampled=True, shuffle_buffer=500)
    loader = build_train_loader(cfg, text_length=32, global_batch_size=batch, seed=0, rank=0,
                                world_size=1)
    it = iter(loader)
    next(it)  # warm-up: worker start, shuffle-buffer fill
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - t0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The load average says whether other work shared the cores during the measurement.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {load:.1f} at start")


def write_section(path: str, text: str) -> None:
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    section = "## Data loader\n\n" + text.strip() + "\n"
    pat = re.compile(r"^## Data loader\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(section + "\n", old) if pat.search(old) else old.rstrip() + "\n\n" + section
    with open(path, "w") as f:
        f.write(new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--stored-size", type=int, default=480, help="stored JPEG side (FLIP: 480)")
    p.add_argument("--samples", type=int, default=1200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = p.parse_args()
    host = machine()
    with tempfile.TemporaryDirectory() as d:
        write_synthetic_shards(d, args.samples, 200, seed=0, image_size=args.stored_size)
        rows = []
        for w in args.workers:
            ips = measure(d, w, args.image_size, args.batch, args.batches)
            per = ips / max(1, w)
            rows.append((w, ips, per))
            print(f"workers {w}: {ips:7.1f} images/s  ({per:6.1f} per worker)", flush=True)
    cmd = "python bench/bench_loader.py " + " ".join(sys.argv[1:])
    table = ["| workers | images/s | images/s per worker |", "|---|---|---|"]
    table += [f"| {w} (in-process) | {i:.1f} | {q:.1f} |" if w == 0 else
              f"| {w} | {i:.1f} | {q:.1f} |" for w, i, q in rows]
    text = "\n".join([
        f"- machine: {host}",
        f"- date: {datetime.date.today().isoformat()}",
        f"- command: `{cmd}`",
        f"- what: {args.stored_size} px JPEG shards (FLIP's stored size) -> decode, "
        f"RandomResizedCrop + flip to {args.image_size} px, normalise, tokenise to 32; "
        f"batch {args.batch}, resampled shards, shuffle buffer 500",
        "",
        *table,
        "",
        "Reading the numbers: a GPU step consumes global_batch / n_gpus images; the loader keeps "
        "up when workers x images/s per worker exceeds the GPU's samples/s (e.g. ~70-120 "
        "samples/s per GPU for L/14-H/14 class models, FLIP_FACTS.md), so budget "
        "ceil(gpu_samples_per_s / per_worker_rate) + 1 workers per GPU.",
    ])
    if args.write:
        write_section(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   "BENCHMARKS.md"), text)
    print(text)


if __name__ == "__main__":
    main()
