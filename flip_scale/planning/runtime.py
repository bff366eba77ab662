"""What besides compute and communication decides a run's wall-clock: the data loader's CPU
budget, checkpoint writes, and the work lost to failures (Young/Daly checkpoint interval).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Images per second one loader worker (one CPU core) delivers at 224 px from 480 px JPEGs:
# read, decode, RandomResizedCrop + flip, normalise, tokenise. BENCHMARKS.md "Data loader"
# measured 130-170 per worker on the device machine's 16-core host (133 at 14 workers); the
# planner takes the low end, what a busy node gets. Re-measure with bench/bench_loader.py.
LOADER_IMAGES_PER_CORE = 130.0
# data.decode=device: workers parse JPEG headers and draw crops, the GPU decodes. bench_loader.py
# --decode device measured such a worker at 4.7x the images/s of a decode=cpu worker in the same
# invocation (849 vs 180, 2-core VM; BENCHMARKS.md "Data loader", GPU-decode path); the planner
# scales its per-core rate by that.
DEVICE_DECODE_WORKER_SPEEDUP = 4.7
# The decode's cost on the GPU (batched nvJPEG through torchvision, then crop + resize + flip per
# image): ASSUMED, not measured - no GPU was lent to the task that built it; bench/gpu_check.py
# measures it. 3,000 images/s per GPU for ~480 px JPEGs is an assumption of the order published
# for nvJPEG on A100/H100-class cards (thousands per second); the plan adds it to the step and
# prints it as assumed.
DEVICE_DECODE_IMAGES_PER_S = 3000.0
# Besides its workers each GPU's training process needs a core of its own (BENCHMARKS.md:
# "plan about ceil(gpu_samples_per_s / 130) + 1 workers per GPU").
TRAINER_CORES_PER_GPU = 1
# Expected failures per node and day. Llama 3 (Dubey et al. 2024, section 3.3.4): 419 unexpected
# interruptions in 54 days on 16,384 H100s (2,048 nodes), i.e. 419 / (54 x 2048) = 0.0038.
DEFAULT_FAILURES_PER_NODE_DAY = 0.004
# Time from a failure to training again: requeue, start-up, compile, checkpoint load (minutes).
DEFAULT_RESTART_MIN = 10.0
# Checkpoint contents, bytes per parameter (see the backends' save()):
#   fsdp (DCP)           sharded fp32 parameters (the master weights) + AdamW m, v in fp32 = 12
#   deepspeed            working weights (2 in bf16, 4 in fp32) + fp32 master + m, v      = 14 / 16
#   single / ddp         fp32 weights + m, v (one torch.save by rank 0)                  = 12
CKPT_OPTIMIZER_BYTES = 8  # AdamW's two fp32 moments
CKPT_MASTER_BYTES = 4


def loader_images_per_core(decode: str) -> float:
    """Images/s one loader worker (core) delivers under data.decode (cpu | device)."""
    return LOADER_IMAGES_PER_CORE * (DEVICE_DECODE_WORKER_SPEEDUP if decode == "device" else 1.0)


def cores_per_gpu(samples_per_s_per_gpu: float, images_per_core: float = LOADER_IMAGES_PER_CORE) -> int:
    """CPU cores one GPU needs to be fed at this rate (loader workers + the trainer's own)."""
    return math.ceil(samples_per_s_per_gpu / images_per_core) + TRAINER_CORES_PER_GPU


def loader_samples_per_s(cpus_per_gpu: int, images_per_core: float = LOADER_IMAGES_PER_CORE) -> float:
    """The most samples/s one GPU's share of the node's cores can decode."""
    return max(cpus_per_gpu - TRAINER_CORES_PER_GPU, 0) * images_per_core


# Device-to-host copy rate of one GPU's checkpoint shard into pinned memory (asynchronous saves
# block training only for this copy). Assumed, not measured here (no GPU in the measuring task):
# PCIe Gen5 x16 DMA reaches ~50 GB/s one way; 10 GB/s allows for 8 GPUs sharing host links.
HOST_COPY_BYTES_PER_S = 10e9


@dataclass
class CheckpointCost:
    bytes: float
    files: int
    write_s: float
    blocked_s: float  # what training waits per save: the write, or (async) the copy to host memory
    asynchronous: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def checkpoint_cost(backend: str, zero_stage: int | None, precision: str, params: int, world: int,
                    fs_bytes_per_s: float, async_save: bool = False) -> CheckpointCost:
    """Size, files and write time of one checkpoint. Every rank writes its shard at once (DCP,
    DeepSpeed), so the time is size over the filesystem's aggregate bandwidth; single/ddp write
    from rank 0 alone, which the aggregate figure flatters."""
    moments = params * CKPT_OPTIMIZER_BYTES
    if backend == "fsdp":
        size = params * CKPT_MASTER_BYTES + moments
        backend_files = world + 1  # one .distcp per rank + .metadata
    elif backend == "deepspeed":
        working = 2 if precision == "bf16" else 4
        size = params * (working + CKPT_MASTER_BYTES) + moments
        stage = zero_stage or 2
        # stage 1/2: rank 0's model states + one optimizer partition per rank; stage 3: both per
        # rank. DeepSpeed also copies its zero_to_fp32.py recovery script into the folder.
        backend_files = (2 * world if stage == 3 else world + 1) + 1
    else:
        size = params * CKPT_MASTER_BYTES + moments
        backend_files = 1
    # The trainer's own: one train_state_rank*.pt per rank (data position, RNG) + meta.json.
    files = backend_files + world + 1
    write_s = size / fs_bytes_per_s
    # checkpoint.async (FSDP/DCP): each rank copies its shard to host memory, then writes
    # it in the background while training goes on.
    asynchronous = async_save and backend == "fsdp"
    blocked_s = size / world / HOST_COPY_BYTES_PER_S if asynchronous else write_s
    return CheckpointCost(size, files, write_s, blocked_s, asynchronous)


def daly_interval_s(write_s: float, mtbf_s: float) -> float:
    """Checkpoint interval minimising expected lost time (Daly 2006, "A higher order estimate of
    the optimum checkpoint interval for restart dumps", eq. 37); to first order Young's
    sqrt(2 delta M)."""
    if write_s >= 2 * mtbf_s:
        return mtbf_s
    r = write_s / (2 * mtbf_s)
    return math.sqrt(2 * write_s * mtbf_s) * (1 + math.sqrt(r) / 3 + r / 9) - write_s


def young_interval_s(write_s: float, mtbf_s: float) -> float:
    return math.sqrt(2 * write_s * mtbf_s)


@dataclass
class RunTime:
    """The whole run: useful work, checkpoint writes, expected rework and restarts."""

    step_s: float
    steps: int
    work_s: float
    checkpoints: int
    checkpoint_s: float
    interval_s: float           # the recipe's checkpoint interval in seconds
    mtbf_s: float               # of the whole job
    expected_failures: float
    lost_s: float               # rework (half an interval per failure) + restarts
    total_s: float
    daly_interval_s: float
    young_interval_s: float
    daly_total_s: float         # the same run checkpointing at the Daly interval

    def as_dict(self) -> dict:
        return asdict(self)


def _total(work_s: float, interval_s: float, write_s: float, mtbf_s: float, restart_s: float):
    """Expected wall-clock: work plus a write per interval, stretched by failures. Each failure
    costs the restart and on average half an interval of recomputation (first-order model)."""
    checkpoints = math.floor(work_s / interval_s) if interval_s > 0 else 0
    productive = work_s + checkpoints * write_s
    loss_per_failure = interval_s / 2 + restart_s
    if loss_per_failure >= mtbf_s:
        return checkpoints, math.inf, math.inf
    total = productive / (1 - loss_per_failure / mtbf_s)
    return checkpoints, total, total / mtbf_s


def plan_runtime(step_s: float, steps: int, every_steps: int, write_s: float, nodes: int,
                 failures_per_node_day: float = DEFAULT_FAILURES_PER_NODE_DAY,
                 restart_s: float = DEFAULT_RESTART_MIN * 60, every_minutes: float = 0.0) -> RunTime:
    """write_s: what one checkpoint costs the run (its blocking time: the write, or the copy to
    host memory of an asynchronous save). The interval is the shorter of every_steps and
    every_minutes where set (the trainer saves on whichever comes first); neither = at the end."""
    work = step_s * steps
    mtbf = math.inf if failures_per_node_day <= 0 else 86400.0 / (nodes * failures_per_node_day)
    intervals = [x for x in (step_s * every_steps if every_steps > 0 else 0.0, 60.0 * every_minutes) if x > 0]
    interval = min(intervals) if intervals else work  # neither set = only at the end
    if math.isinf(mtbf):
        checkpoints = math.floor(work / interval) if interval > 0 else 0
        total, failures = work + checkpoints * write_s, 0.0
        daly = young = math.inf
        daly_total = work
    else:
        checkpoints, total, failures = _total(work, interval, write_s, mtbf, restart_s)
        daly, young = daly_interval_s(write_s, mtbf), young_interval_s(write_s, mtbf)
        daly_total = _total(work, daly, write_s, mtbf, restart_s)[1]
    return RunTime(step_s=step_s, steps=steps, work_s=work, checkpoints=checkpoints, checkpoint_s=checkpoints * write_s,
                   interval_s=interval, mtbf_s=mtbf, expected_failures=failures,
                   lost_s=total - work - checkpoints * write_s, total_s=total, daly_interval_s=daly,
                   young_interval_s=young, daly_total_s=daly_total)
