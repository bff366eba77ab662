"""GPUs the planner knows: memory and dense peak FLOP/s (FLIP_FACTS.md "Throughput anchors")."""
from __future__ import annotations

from dataclasses import dataclass

from ..metrics import PEAK_FLOPS


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_gb: float          # decimal GB as vendors quote them (80 GB = 80e9 bytes)
    peak_flops: dict          # precision -> dense FLOP/s (no sparsity)
    nvlink_gbps: float = 3600  # NVLink per GPU and direction, Gb/s (H100/H200: 18 links x 25 GB/s)

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9


# Same peaks as the MFU the trainer logs (metrics.PEAK_FLOPS), so a plan's MFU and a run's
# measured MFU are the same quantity. fp32 runs use TF32 tensor cores (the trainer enables TF32).
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("H100 SXM 80GB", 80, PEAK_FLOPS["h100"]),
    "h200": GpuSpec("H200 SXM 141GB", 141, PEAK_FLOPS["h200"]),
    # A100: NVLink 3, 12 links x 25 GB/s per direction = 300 GB/s.
    "a100": GpuSpec("A100 80GB", 80, PEAK_FLOPS["a100"], 2400),
    "a100-40gb": GpuSpec("A100 40GB", 40, PEAK_FLOPS["a100"], 2400),
}


def get_gpu(name: str, memory_gb: float | None = None) -> GpuSpec:
    key = name.lower()
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; choose one of {', '.join(GPUS)}")
    spec = GPUS[key]
    if memory_gb is not None:  # e.g. `--gpu a100 --gpu-memory-gb 40`
        spec = GpuSpec(f"{spec.name.rsplit(' ', 1)[0]} {memory_gb:g}GB", memory_gb, spec.peak_flops,
                       spec.nvlink_gbps)
    return spec


def nominal_memory_gb(total_bytes: int) -> float:
    """The card's memory as the planner counts it: the largest known card's nominal size that the
    device's total memory holds (an H100 reports 85.0e9 bytes, planned as 80 GB), so that
    `parallel.reshard_after_forward: auto` decides on a GPU as `flip-scale plan --gpu` does;
    an unknown, smaller card: its own size."""
    gb = total_bytes / 1e9
    known = [g.memory_gb for g in GPUS.values() if g.memory_gb <= gb]
    return max(known) if known else gb
