"""Helpers for the fault-tolerance tests: launch real training processes, watch, kill."""
import os
import subprocess
import sys
import time
from pathlib import Path

from flip_scale.metrics import read_jsonl

from conftest import ROOT, TINY, free_port


def read_metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir)]


def train_args(run_dir, *overrides):
    return [sys.executable, "-m", "flip_scale", "train", str(TINY), f"train.out_dir={run_dir}", *overrides]


def launch_ranks(run_dir, world: int, overrides=(), env_extra=None, port=None) -> list[subprocess.Popen]:
    """World processes joined through RANK/WORLD_SIZE, as srun or torchrun would start them."""
    port = port or free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), **(env_extra or {})}
        procs.append(subprocess.Popen(train_args(run_dir, *overrides), cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_for(pred, timeout=120.0, poll=0.02, procs=()):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        for p in procs:
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"process exited early ({p.returncode}): {p.stderr.read()[-3000:]}")
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def finish(procs, timeout=300):
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        outs.append((p.returncode, err))
    return outs
