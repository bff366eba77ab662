"""The run directory's layout, in one place: its file names. Everything else asks this module
instead of spelling names. It imports nothing of the package: reading a run's config lives in
config/load.py, loading a trained model for inference in inference.py.

    RUN/config.yaml          the resolved recipe (written once, at start)
    RUN/metrics.jsonl        one JSON object per logged step (rank 0)
    RUN/tb/                  TensorBoard scalars (x axis: samples seen)
    RUN/checkpoints/         step_NNNNNNNN/ folders + `latest` (flip_scale/checkpoint.py)
    RUN/eval/<dataset>.json  evaluation results
    RUN/summary.json         written when the run finishes
    RUN/hangs/, RUN/logs/    hang stack dumps, per-rank verbose logs
"""
from __future__ import annotations

import os
from pathlib import Path

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
TENSORBOARD = "tb"
CHECKPOINTS = "checkpoints"
EVAL = "eval"
HANGS = "hangs"
LOGS = "logs"


class RunDir:
    """Paths of one run directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    config = property(lambda self: self.root / CONFIG)
    metrics = property(lambda self: self.root / METRICS)
    summary = property(lambda self: self.root / SUMMARY)
    tensorboard = property(lambda self: self.root / TENSORBOARD)
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    eval = property(lambda self: self.root / EVAL)
    hangs = property(lambda self: self.root / HANGS)
    logs = property(lambda self: self.root / LOGS)

    def eval_result(self, name: str) -> Path:
        return self.root / EVAL / f"{name}.json"


def run_dir_of_checkpoint(ckpt: str | os.PathLike) -> RunDir:
    """RUN/checkpoints/step_N -> RUN."""
    return RunDir(Path(ckpt).parent.parent)
