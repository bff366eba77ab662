"""Who am I in the job: ranks from torchrun or Slurm variables, and joining the process group.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT. Under `srun` each task
gets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the rendezvous address is the first host of
the job's node list and the port is derived from the job id, so every task computes the same
pair without talking to the others (open_clip's and lingua's approach).
"""
from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str = "none"  # none | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def first_slurm_host(nodelist: str) -> str:
    """First host of a Slurm node list ('node[01-04]' -> 'node01'), via scontrol when present."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # Fallback parser for the common forms when scontrol is missing (e.g. a container).
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rng = head.split("[", 1)
        first = rng.rstrip("]").split(",")[0].split("-")[0]
        return prefix + first
    return head


def slurm_master_port(job_id: str) -> int:
    return 15000 + int(job_id) % 20000


def detect_env(environ: dict | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun")
    if "SLURM_PROCID" not in env:
        return DistEnv()
    # A job step launched by srun has SLURM_STEP_NUM_TASKS (its own task count). The batch shell
    # of a job also carries SLURM_PROCID=0 and the job's SLURM_NTASKS, but it is one process:
    # without a step, only a launcher that exports the variables itself (no SLURM_JOB_ID) counts.
    if "SLURM_STEP_NUM_TASKS" in env:
        world = int(env["SLURM_STEP_NUM_TASKS"])
    elif "SLURM_NTASKS" in env and "SLURM_JOB_ID" not in env:
        world = int(env["SLURM_NTASKS"])
    else:
        return DistEnv()
    return DistEnv(int(env["SLURM_PROCID"]), world, int(env.get("SLURM_LOCALID", 0)), "slurm")


def process_group_args(device: torch.device) -> tuple[str, dict]:
    """(backend, extra init_process_group kwargs) for a device: NCCL bound to the GPU, else gloo."""
    if device.type == "cuda":
        return "nccl", {"device_id": device}
    return "gloo", {}


def init_distributed(denv: DistEnv, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group: NCCL on GPUs, gloo on CPU."""
    if not denv.distributed or dist.is_initialized():
        return
    if denv.launcher == "slurm" and "SLURM_JOB_NODELIST" in os.environ:
        os.environ.setdefault("MASTER_ADDR", first_slurm_host(os.environ["SLURM_JOB_NODELIST"]))
    if denv.launcher == "slurm" and "SLURM_JOB_ID" in os.environ:
        os.environ.setdefault("MASTER_PORT", str(slurm_master_port(os.environ["SLURM_JOB_ID"])))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    backend, kwargs = process_group_args(device)
    dist.init_process_group(backend, rank=denv.rank, world_size=denv.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def select_device(choice: str, denv: DistEnv) -> torch.device:
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is visible")
    torch.cuda.set_device(denv.local_rank % torch.cuda.device_count())
    return torch.device("cuda", denv.local_rank % torch.cuda.device_count())


def process_groups() -> list:
    """Every process group this process is a member of: the default group, DeviceMesh sub-groups
    (HSDP's replicate/shard dimensions) and those DeepSpeed creates; all are registered with
    c10d as they are made."""
    from torch.distributed import distributed_c10d as c10d

    if not (dist.is_available() and dist.is_initialized()):
        return []
    groups = []
    for pg in list(c10d._world.pg_map):
        if pg is c10d.GroupMember.NON_GROUP_MEMBER or pg is None:
            continue
        if dist.get_rank(pg) >= 0:
            groups.append(pg)
    return groups


def set_collective_timeout(seconds: float, groups: list | None = None, sync: bool = True) -> list:
    """Switch the collective timeout of every process group (or of `groups`) to `seconds`.

    Start-up runs under parallel.init_timeout_s (compile, checkpoint loading and the first
    steps can keep one rank away for long); afterwards a dead or hung peer should end the job in
    parallel.timeout_s. sync=True first passes a barrier under the old timeout, so no rank
    tightens the limit while a slow peer is still starting up. Collective: every rank calls it.
    Returns the groups it changed."""
    if not (dist.is_available() and dist.is_initialized()):
        return []
    if sync:
        dist.barrier()
    from torch.distributed import distributed_c10d as c10d

    setter = getattr(dist, "set_timeout", None) or c10d._set_pg_timeout  # public from torch 2.14 on
    targets = process_groups() if groups is None else list(groups)
    for pg in targets:
        setter(datetime.timedelta(seconds=seconds), pg)
    return targets


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup(synchronize: bool = False) -> None:
    """Leave the process group. On a normal finish pass synchronize=True: the barrier waits for
    every rank and, on gloo, for this rank's queued async work (FSDP2 prefetches all-gathers), so
    no rank tears its group down while a peer or a worker thread still uses it; tearing down
    under in-flight gloo work can abort the process ("terminate called without an active
    exception"). After an error skip it: a dead peer would make the barrier hang."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()
