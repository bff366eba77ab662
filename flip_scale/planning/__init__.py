"""Compute / memory / wall-clock planning of a recipe on a cluster (`flip-scale plan`).

hardware.py: the GPUs; memory.py: bytes per GPU; compute.py: FLOPs and wall-clock;
paper.py: the paper's cost story recomputed with the same functions.
"""
from .compute import ComputePlan, plan_compute
from .hardware import GPUS, GpuSpec, get_gpu
from .memory import MemoryPlan, activation_bytes_per_sample, plan_memory

__all__ = ["ComputePlan", "plan_compute", "GPUS", "GpuSpec", "get_gpu", "MemoryPlan",
           "activation_bytes_per_sample", "plan_memory"]
