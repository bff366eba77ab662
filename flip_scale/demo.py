"""`flip-scale demo` / `make demo`: the tiny recipe end to end on the built-in synthetic data."""
from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

from .config import load_recipe
from .metrics import read_jsonl

TINY_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "test" / "tiny.yaml"


DEMO_MARKER = ".flip_scale_demo"


def claim_demo_dir(output: str) -> bool:
    """Empty `output` for a new demo: a directory an earlier demo made (it holds DEMO_MARKER) is
    replaced; any other non-empty one is refused with one line (False)."""
    out = Path(output)
    if out.exists() and any(out.iterdir()):
        if not (out / DEMO_MARKER).is_file():
            print(f"demo: {output} exists and is not a demo directory; choose another --output", file=sys.stderr)
            return False
        shutil.rmtree(out)  # a previous demo: the demo always starts fresh
    return True


def run_demo(output: str = "runs/demo", steps: int = 300) -> int:
    from .train.trainer import run_training

    if steps < 2:
        print("demo: --steps must be at least 2", file=sys.stderr)
        return 2
    if not claim_demo_dir(output):
        return 2
    out = Path(output)
    recipe = TINY_RECIPE
    if not recipe.is_file():  # installed without the recipes folder: use the packaged copy
        recipe = Path(__file__).resolve().parent / "assets" / "tiny.yaml"
    log_every = max(1, min(10, steps // 10))  # at least two logged losses to compare
    overrides = [f"train.out_dir={output}", f"train.samples={64 * steps}", "checkpoint.every_steps=0",
                 f"train.log_every_steps={log_every}"]
    cfg = load_recipe(recipe, overrides)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("made by `flip-scale demo`; a later demo may replace this directory\n")
    summary = run_training(cfg)
    records = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    first, last = records[0], records[-1]
    print(f"demo: loss fell from {first['loss']:.3f} (step {first['step']}) to {last['loss']:.3f} "
          f"(step {last['step']}); chance level is ln({cfg.train.global_batch_size}) = "
          f"{math.log(cfg.train.global_batch_size):.3f}")
    print(f"demo: run directory {output} (config.yaml, metrics.jsonl, tb/, checkpoints/, summary.json, "
          f"heldout_zeroshot/)")
    zeroshot_demo(output, cfg.data.image_size)
    if last["loss"] >= first["loss"]:
        print(f"demo: the loss did not fall in {summary['steps']} steps; try more --steps", file=sys.stderr)
        return 1
    return 0


def zeroshot_demo(run_dir: str, image_size: int) -> dict:
    """Zero-shot classification of held-out synthetic images (colour + shape classes), as
    `flip-scale eval RUN_DIR --zeroshot DIR` would do it."""
    from . import load_checkpoint
    from .data.synthetic import CLASSNAMES, write_synthetic_zeroshot
    from .eval import evaluate_zeroshot

    data = write_synthetic_zeroshot(str(Path(run_dir) / "heldout_zeroshot"), 480, image_size=image_size)
    model, tokenizer, transform = load_checkpoint(run_dir)
    result = evaluate_zeroshot(model, tokenizer, transform, data, "cpu")
    chance = 1 / len(CLASSNAMES)
    print(f"demo: zero-shot on {result['n']} held-out images of {len(CLASSNAMES)} classes: top-1 {result['acc1']:.3f}, "
          f"top-5 {result['acc5']:.3f} (chance {chance:.3f} / {5 * chance:.3f})")
    return result
