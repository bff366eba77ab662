"""Run several training jobs in the SAME pair of real gloo processes (spawned once).

Importing torch + DeepSpeed costs seconds per process on the 2-core CI machines, so the backend
tests start two processes once and run their jobs one after another, each job in a fresh
process group (own MASTER_PORT) exactly as torchrun would set it up (RANK/WORLD_SIZE/...).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from conftest import free_port


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir) -> list[float]:
    return [r["loss"] for r in metrics(run_dir)]


def probe_inputs(image_size: int = 32, text_length: int = 16, n: int = 4):
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 3, image_size, image_size, generator=g), torch.randint(1, 60, (n, text_length), generator=g)


def truncate_run(src, dst, step: int) -> None:
    """dst = src as if the run had been killed right after its checkpoint at `step`: later
    checkpoints, metrics and the summary gone, the `latest` pointer back at `step`."""
    import shutil

    from flip_scale.checkpoint import step_name

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").glob("step_*"):
        if int(ckpt.name.split("_")[1]) > step:
            shutil.rmtree(ckpt)
    (dst / "checkpoints" / "latest").write_text(step_name(step))
    kept = [line for line in (dst / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    (dst / "summary.json").unlink(missing_ok=True)
    shutil.rmtree(dst / "tb", ignore_errors=True)


def save_probe(trainer, rank: int, job: dict) -> None:
    """Embeddings from the still-sharded model (encode_* are FSDP forward methods) and the gathered
    full state dict, saved to job["probe"]; both collective, so every rank runs them."""
    model = trainer.backend.model
    model.eval()
    images, tokens = probe_inputs()
    with torch.no_grad():
        out = {"image": model.encode_image(images).cpu(), "text": model.encode_text(tokens).cpu(),
               "state_dict": trainer.backend.full_state_dict()}
    if rank == 0:
        torch.save(out, job["probe"])


def _worker(rank: int, world: int, jobs: list[dict]) -> None:
    from flip_scale.config import load_recipe
    from flip_scale.distributed.env import cleanup
    from flip_scale.train.trainer import Trainer

    torch.set_num_threads(1)
    for job in jobs:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
        if rank == 0 and job.get("truncate"):
            # Before joining the group: the other rank waits in the rendezvous meanwhile.
            truncate_run(*job["truncate"])
        trainer = Trainer(load_recipe(job["recipe"], job["overrides"]))
        try:
            trainer.setup()
            trainer.train()
            after = job.get("after") or (save_probe if job.get("probe") else None)
            if after is not None:  # a module-level function: spawn pickles it by name
                after(trainer, rank, job)
        finally:
            cleanup()
            trainer.close()


def run_jobs(jobs: list[dict], world: int = 2) -> None:
    """jobs: {"recipe": path, "overrides": [...], "probe": optional output .pt,
    "truncate": optional (src, dst, step) done by rank 0 first, "after": optional
    f(trainer, rank, job) every rank runs after training}; ports are added."""
    jobs = [{**job, "port": free_port()} for job in jobs]
    mp.start_processes(_worker, args=(world, jobs), nprocs=world, start_method="spawn")
