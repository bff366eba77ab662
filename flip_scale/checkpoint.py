"""Checkpoints: atomic publish, a `latest` pointer, keep-last-k, resume, inference loading.

Layout of train.out_dir/checkpoints/:
    step_00000100/          one complete checkpoint: backend files, train_state_rank*.pt, meta.json
    latest                  text file naming the newest complete checkpoint (written last)
    .tmp_step_00000200/     a save in progress; never read, removed on the next save

A checkpoint is complete when its meta.json exists; meta.json is written after every rank's
files and before the rename, and `latest` moves only after the rename. So a kill at any moment
leaves the previous checkpoint and pointer usable.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from .distributed.env import barrier
from .fileio import write_text_atomic

META = "meta.json"
LATEST = "latest"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(ckpt: Path) -> bool:
    try:
        json.loads((ckpt / META).read_text())
        return True
    except (OSError, ValueError):
        return False


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Published checkpoint folders, oldest first (complete or not)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def complete_checkpoints(ckpt_root: Path, log=print) -> Iterator[Path]:
    """Complete checkpoints, newest first, lazily; an incomplete one is reported when reached.

    Found by scanning rather than by reading `latest`: the pointer always names the newest
    complete folder (it moves last), so the scan agrees with it, and also copes when it is gone."""
    for ckpt in reversed(list_checkpoints(Path(ckpt_root))):
        if is_complete(ckpt):
            yield ckpt
        else:
            log(f"checkpoint {ckpt} is incomplete or unreadable; falling back to an earlier one")


def set_aside(ckpt: Path) -> Path:
    """Move a checkpoint whose files cannot be read out of the way (kept for inspection, never
    resumed from or counted by keep-last-k again): step_N -> unreadable_step_N."""
    target = ckpt.with_name(f"unreadable_{ckpt.name}")
    if target.exists():
        shutil.rmtree(target)
    os.rename(ckpt, target)
    return target


def find_latest(ckpt_root: Path, log=print) -> Path | None:
    """The newest complete checkpoint; an incomplete newer one is reported and passed over."""
    return next(complete_checkpoints(ckpt_root, log), None)


def save_checkpoint(ckpt_root: Path, step: int, backend, rank_state: dict, meta: dict, keep: int,
                    test_delay_s: float = 0.0) -> Path:
    """Collective: every rank calls it. rank_state is this rank's train state (data position, RNG).

    test_delay_s pauses between writing the files and publishing them (fault-injection tests)."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / step_name(step)
    tmp = ckpt_root / f".tmp_{step_name(step)}"
    if _rank() == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    backend.save(tmp)
    torch.save(rank_state, tmp / f"train_state_rank{_rank()}.pt")
    # meta.json is written durably below; make this node's payload durable first, so a crash of
    # the machine cannot leave a complete-looking checkpoint over truncated files.
    os.sync()
    if test_delay_s:
        import time

        time.sleep(test_delay_s)
    barrier()
    if _rank() == 0:
        write_text_atomic(tmp / META, json.dumps({**meta, "step": step}, indent=1), durable=True)
        if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        write_text_atomic(ckpt_root / LATEST, final.name, durable=True)
        prune_checkpoints(ckpt_root, keep)
    barrier()
    return final


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; never delete the only complete one."""
    complete = [c for c in list_checkpoints(ckpt_root) if is_complete(c)]
    for old in complete[: max(len(complete) - max(keep, 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_rank_state(ckpt: Path, rank: int) -> dict | None:
    path = Path(ckpt) / f"train_state_rank{rank}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def read_meta(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / META).read_text())


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory, a checkpoints/ folder, or one checkpoint -> one complete checkpoint folder."""
    p = Path(path)
    if (p / META).is_file():
        return p
    for root in (p / "checkpoints", p):
        found = find_latest(root, log=lambda m: print(m, file=sys.stderr)) if root.is_dir() else None
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no complete checkpoint found (expected RUN_DIR/checkpoints/step_*/meta.json)")


def read_full_weights(ckpt: Path) -> dict:
    """Unsharded model weights from any backend's checkpoint, on one process."""
    from .distributed.backends import get_backend_class

    meta = read_meta(ckpt)
    return get_backend_class(meta.get("backend", "single")).read_full_weights(Path(ckpt))


def load_for_inference(path, device="cpu"):
    """(model in eval mode, tokenizer, eval transform) from a run dir or a checkpoint."""
    import yaml

    from .config import config_from_dict
    from .data.tokenizer import load_tokenizer
    from .data.transforms import eval_transform
    from .train.build import build_model_from_config, tokenizer_spec_for_run

    ckpt = resolve_checkpoint(path)
    run_dir = ckpt.parent.parent
    cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    tokenizer = load_tokenizer(tokenizer_spec_for_run(cfg, run_dir), cfg.model.text_length)
    model = build_model_from_config(cfg, tokenizer.vocab_size)
    model.load_state_dict(read_full_weights(ckpt))
    model.to(device).eval()
    return model, tokenizer, eval_transform(cfg.data.image_size)
