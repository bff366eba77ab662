"""The run directory's layout, in one place: file names, reading a run's config, loading a
trained model for inference. Everything else asks this module instead of spelling names.

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


def read_run_config(run_dir: str | os.PathLike):
    """The Config a run was trained with (its config.yaml)."""
    import yaml

    from .config import config_from_dict

    path = RunDir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # a hand-edited or truncated file: one line, not a traceback
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ValueError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a resolved config (a mapping of sections), got {type(data).__name__}")
    return config_from_dict(data, str(path))


def load_for_inference(path, device="cpu"):
    """(model in eval mode, tokenizer, eval transform) from a run dir or a checkpoint."""
    from .checkpoint import read_full_weights, resolve_checkpoint
    from .data.tokenizer import load_tokenizer
    from .data.transforms import eval_transform
    from .train.build import build_model_from_config, tokenizer_spec_for_run

    ckpt = resolve_checkpoint(path)
    run_dir = run_dir_of_checkpoint(ckpt).root
    cfg = read_run_config(run_dir)
    tokenizer = load_tokenizer(tokenizer_spec_for_run(cfg, run_dir), cfg.model.text_length, cfg.data.text_cls_token)
    model = build_model_from_config(cfg, tokenizer.vocab_size)
    model.load_state_dict(read_full_weights(ckpt))
    model.to(device).eval()
    return model, tokenizer, eval_transform(cfg.data.image_size)
