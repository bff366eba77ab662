"""Seconds training is blocked per checkpoint save: synchronous vs asynchronous, one invocation.

Two real gloo processes shard a model of >= 100M parameters with FSDP2 (vit_b16 towers at a
small image size: the parameter count is the model's, the activations are tiny), take one
AdamW step so the optimizer holds its two moments, then save through the trainer's own
Checkpointer `--saves` times in each mode, alternating sync and async. Blocked time = from
calling save() until training may continue (async: until the state is copied to host memory;
the background write is timed separately as `async_write_s`).

    python bench/bench_checkpoint.py                  # table
    python bench/bench_checkpoint.py --json           # {"sync_blocked_s": ..., "async_blocked_s": ..., "params": ...}

Goal (issue 11): async_blocked_s <= 0.2 x sync_blocked_s in the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Position:
    """The data position a TrainState saves; this bench has no loader, so it is empty."""

    def state_dict(self) -> dict:
        return {}


def _worker(rank: int, world: int, port: int, args, out_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from flip_scale.checkpoint import Checkpointer
    from flip_scale.config import load_recipe
    from flip_scale.distributed.backends import get_backend_class
    from flip_scale.distributed.env import detect_env
    from flip_scale.loss import total_loss
    from flip_scale.models import count_params
    from flip_scale.train.build import build_model_from_config, parallelize_and_build_optimizer
    from flip_scale.train.state import TrainState

    dist.init_process_group("gloo", rank=rank, world_size=world)
    root = Path(__file__).resolve().parent.parent
    cfg = load_recipe(root / "recipes" / "test" / "tiny.yaml",
                      ["model.name=vit_b16", f"data.image_size={args.image_size}", "model.text_length=32",
                       "model.vocab_size=30523", "parallel.backend=fsdp", "train.global_batch_size=4",
                       f"checkpoint.keep={args.saves + 1}"])
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    params = count_params(model)
    denv = detect_env()
    backend = get_backend_class("fsdp")(cfg, denv, torch.device("cpu"))
    parallelize_and_build_optimizer(backend, model, cfg)
    images = torch.randn(2, 3, args.image_size, args.image_size)
    tokens = torch.randint(1, 1000, (2, 32))
    loss, _ = total_loss(backend.module(images, tokens))
    backend.backward(loss)
    backend.step(1e-5)  # AdamW now holds exp_avg and exp_avg_sq: the state a real save writes
    state = TrainState(loader=_Position())
    meta = {"world_size": world, "backend": "fsdp", "global_batch_size": 4}
    results = {"sync": [], "async": [], "async_write": []}
    for mode in ("sync", "async"):
        cfg.checkpoint.async_save = mode == "async"
        ckpt_dir = Path(args.dir) / mode / "checkpoints"
        checkpointer = Checkpointer(ckpt_dir, backend, state, cfg, meta, log=lambda _: None)
        for i in range(args.saves):
            state.step = i + 1
            dist.barrier()
            t0 = time.perf_counter()
            checkpointer.save(state.step)
            blocked = time.perf_counter() - t0
            checkpointer.wait()  # the next "steps" would run here; time the write it overlaps
            results[mode].append(blocked)
            if mode == "async":
                results["async_write"].append(time.perf_counter() - t0)
        checkpointer.finalize()
        dist.barrier()
    if rank == 0:
        Path(out_file).write_text(json.dumps({"params": params, **results}))
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=3, help="saves per mode (the first includes planning)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder, removed)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_ckpt_")
    args.dir = args.dir or tmp
    out_file = os.path.join(tmp, "result.json")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        mp.start_processes(_worker, args=(2, port, args, out_file), nprocs=2, start_method="spawn")
        r = json.loads(Path(out_file).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # The first save of each mode also plans (and, async, allocates the staging buffers): the
    # median over the saves is the steady state a long run sees every interval.
    sync_s, async_s = statistics.median(r["sync"]), statistics.median(r["async"])
    result = {"sync_blocked_s": round(sync_s, 4), "async_blocked_s": round(async_s, 4), "params": r["params"],
              "ratio": round(async_s / sync_s, 4), "async_write_s": round(statistics.median(r["async_write"]), 4),
              "saves": args.saves, "sync_each_s": [round(x, 3) for x in r["sync"]],
              "async_each_s": [round(x, 3) for x in r["async"]]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"model {r['params'] / 1e6:.1f}M parameters, FSDP over 2 gloo processes, {args.saves} saves per mode")
        print(f"  synchronous : training blocked {sync_s:.3f} s per save (each: {result['sync_each_s']})")
        print(f"  asynchronous: training blocked {async_s:.3f} s per save (each: {result['async_each_s']}); "
              f"the background write took {result['async_write_s']:.3f} s")
        print(f"  async / sync blocked time: {result['ratio']:.3f} (goal <= 0.2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
