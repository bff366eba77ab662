"""Run metrics as files: metrics.jsonl (one object per logged step) and TensorBoard scalars.

Only rank 0 writes. Values are reduced across ranks on log steps only, so ordinary steps never
wait on a host sync.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .run_dir import RunDir

# Dense bf16 peak by datasheet (FLIP_FACTS.md "Throughput anchors"); fp32 runs use TF32 peaks.
PEAK_FLOPS = {
    "h100": {"bf16": 989e12, "fp32": 494e12},
    "h200": {"bf16": 989e12, "fp32": 494e12},
    "a100": {"bf16": 312e12, "fp32": 156e12},
}


def device_peak_flops(device: torch.device, precision: str) -> float | None:
    """Peak FLOP/s of the local accelerator, or None where unknown (CPUs: no MFU is reported)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks[precision]
    return None


class MetricsWriter:
    def __init__(self, out_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._tb = None
        if enabled:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(RunDir(self.out_dir).metrics, "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(RunDir(self.out_dir).tensorboard))
            except ImportError:  # tensorboard is a core dependency; degrade rather than die
                self._tb = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {"time": time.time(), **record}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            step = int(record.get("samples_seen", record.get("step", 0)))
            for key, value in record.items():
                if key in ("time", "step", "samples_seen") or not isinstance(value, (int, float)):
                    continue
                # x axis = samples seen: runs with different batch sizes line up (paper's Fig. 5).
                self._tb.add_scalar(key, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a metrics.jsonl; a last line cut by a kill (live or killed run) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def max_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, host peak
    except ImportError:
        return 0.0
