"""A trained model for inference (eval, export, `flip_scale.load_checkpoint`), built beside the
training builders it shares (train/build.py) rather than in the run directory's layout module.

Given a run directory, the newest complete checkpoint whose files load is used: one that fails
to load (truncated after a crash, corrupt) is reported in one line and the next older one is
tried, as a resuming run does, but nothing is renamed: evaluation never changes a run directory.
A checkpoint refused as unsafe (safe_load.UnsafeCheckpoint) stops the load: a tampered run is
an error, not something to quietly step past. Given one checkpoint folder, only it is tried.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import checkpoint_candidates, read_full_weights
from .config import read_run_config
from .run_dir import run_dir_of_checkpoint
from .safe_load import UnsafeCheckpoint


@dataclass
class Loaded:
    """A model in eval mode with its tokenizer and eval transform, and the checkpoint it came from."""

    model: object
    tokenizer: object
    transform: object
    checkpoint: Path


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def load_inference(path: str | os.PathLike, device="cpu", log=_stderr) -> Loaded:
    """Loaded model from a run directory, its checkpoints/ folder or one checkpoint folder."""
    from .data.tokenizer import load_tokenizer
    from .data.transforms import eval_transform
    from .train.build import build_model_from_config, tokenizer_spec_for_run

    candidates = list(checkpoint_candidates(path))
    run_dir = run_dir_of_checkpoint(candidates[0]).root
    cfg = read_run_config(run_dir)
    tokenizer = load_tokenizer(tokenizer_spec_for_run(cfg, run_dir), cfg.model.text_length, cfg.data.text_cls_token)
    model = build_model_from_config(cfg, tokenizer.vocab_size)
    failures = []
    for ckpt in candidates:
        try:
            weights = read_full_weights(ckpt)
        except UnsafeCheckpoint:
            raise
        except Exception as e:  # noqa: BLE001 - torch.load, DCP and DeepSpeed raise many types
            failures.append(f"{ckpt.name}: {_first_line(e)}")
            if ckpt is not candidates[-1]:
                log(f"checkpoint {ckpt} cannot be loaded ({_first_line(e)}); skipping it, trying an earlier one")
            continue
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:  # a shape or key mismatch: the run's config and weights disagree
            raise ValueError(f"{ckpt}: weights do not fit the model of {run_dir / 'config.yaml'} "
                             f"({str(e).strip().splitlines()[0]})") from None
        model.to(device).eval()
        return Loaded(model, tokenizer, eval_transform(cfg.data.image_size), ckpt)
    raise ValueError(f"{path}: no checkpoint could be loaded ({'; '.join(failures)})")


def load_for_inference(path, device="cpu"):
    """(model in eval mode, tokenizer, eval transform) from a run dir or a checkpoint."""
    loaded = load_inference(path, device)
    return loaded.model, loaded.tokenizer, loaded.transform
