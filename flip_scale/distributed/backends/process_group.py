"""A process group for backends that need one even when the job is a single process.

FSDP2 (a DeviceMesh), DeepSpeed (its comm layer) and DDP all require torch.distributed to be
initialised. A plain `flip-scale train` with parallel.backend ddp/fsdp/deepspeed (or a Slurm
job of one task) runs alone, so these backends join a private 1-process group. A TCPStore on port 0 binds a free port, so two
such runs on one machine never collide (no MASTER_PORT guessing). The trainer's `cleanup()`
destroys it at the end like any other group.
"""
from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from ..env import process_group_args


def ensure_process_group(device: torch.device) -> None:
    if dist.is_initialized():
        return
    store = dist.TCPStore("127.0.0.1", 0, world_size=1, is_master=True)
    backend, kwargs = process_group_args(device)
    dist.init_process_group(backend, store=store, rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=1800), **kwargs)
