"""Training FLOPs and wall-clock of a run at an assumed utilisation.

FLOPs per sample come from the model's counter (flip_scale/models/flops.py, which reproduces
FLIP_FACTS.md "Compute per sample"). Wall-clock = hardware FLOPs / (GPUs x peak x utilisation).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..models.flops import flops_per_sample
from ..models.sizes import ModelSize

# Assumed utilisation of the GPUs' dense peak, counted on the FLOPs they execute (equal to MFU
# without activation checkpointing). 0.35 sits between OpenCLIP's derived 12-26% and NeMo's 39%
# on A100 (FLIP_FACTS.md "Throughput anchors"); `--mfu` overrides it.
DEFAULT_MFU = 0.35
# Training = forward + backward (2x forward); full activation recomputation adds one more
# forward (FLIP_FACTS.md: "training ~3x forward, ~4x with full activation recomputation").
TRAIN_MULTIPLIER = 3.0
RECOMPUTE_MULTIPLIER = 4.0
SECONDS_PER_DAY = 86400.0
# What speedup_vs_unmasked is measured against (every stated speed-up names its baseline).
SPEEDUP_BASELINE = "the same recipe at mask 0, same engine and MFU (a FLOPs ratio, not a measurement)"


@dataclass
class ComputePlan:
    forward_gflops: dict              # per sample: image, text, total
    unmasked_forward_gflops: float    # the same model at mask 0 (FLIP's speedup baseline)
    flops_ratio_vs_unmasked: float
    model_flops_per_sample: float     # 3x forward (what MFU counts)
    hardware_flops_per_sample: float  # 4x forward with activation checkpointing
    samples: int
    total_model_flops: float
    total_hardware_flops: float
    gpus: int
    peak_flops_per_gpu: float
    mfu: float
    wall_s: float
    gpu_days: float
    samples_per_sec_per_gpu: float
    unmasked_gpu_days: float          # same run, same utilisation, mask 0

    @property
    def speedup_vs_unmasked(self) -> float:
        return self.unmasked_gpu_days / self.gpu_days

    def as_dict(self) -> dict:
        return {**asdict(self), "speedup_vs_unmasked": self.speedup_vs_unmasked, "speedup_baseline": SPEEDUP_BASELINE}


def gpu_days(hardware_flops: float, peak_flops_per_gpu: float, mfu: float) -> float:
    return hardware_flops / (peak_flops_per_gpu * mfu) / SECONDS_PER_DAY


def plan_compute(size: ModelSize, *, mask_ratio: float, text_length: int, samples: int, gpus: int,
                 peak_flops_per_gpu: float, mfu: float = DEFAULT_MFU, checkpointing: bool = False,
                 text_mask_ratio: float = 0.0) -> ComputePlan:
    """Compute and time of a run. `unmasked` is plain CLIP (no image or text masking)."""
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    fwd = flops_per_sample(size, mask_ratio, text_length, text_mask_ratio)
    unmasked = flops_per_sample(size, 0.0, text_length)["total"]
    hw_mult = RECOMPUTE_MULTIPLIER if checkpointing else TRAIN_MULTIPLIER
    model_fps, hw_fps = TRAIN_MULTIPLIER * fwd["total"], hw_mult * fwd["total"]
    days = gpu_days(samples * hw_fps, peak_flops_per_gpu, mfu)
    wall = days * SECONDS_PER_DAY / gpus
    return ComputePlan(
        forward_gflops={k: v / 1e9 for k, v in fwd.items()}, unmasked_forward_gflops=unmasked / 1e9,
        flops_ratio_vs_unmasked=fwd["total"] / unmasked, model_flops_per_sample=model_fps,
        hardware_flops_per_sample=hw_fps, samples=samples, total_model_flops=samples * model_fps,
        total_hardware_flops=samples * hw_fps, gpus=gpus, peak_flops_per_gpu=peak_flops_per_gpu, mfu=mfu,
        wall_s=wall, gpu_days=days, samples_per_sec_per_gpu=samples / wall / gpus,
        unmasked_gpu_days=gpu_days(samples * hw_mult * unmasked, peak_flops_per_gpu, mfu))
