"""`flip-scale demo` / `make demo`: the tiny recipe end to end on the built-in synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

from .config import load_recipe

TINY_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "test" / "tiny.yaml"


def run_demo(output: str = "runs/demo", steps: int = 300) -> int:
    from .train.trainer import run_training

    recipe = TINY_RECIPE
    if not recipe.is_file():  # installed without the recipes folder: use the packaged copy
        recipe = Path(__file__).resolve().parent / "assets" / "tiny.yaml"
    overrides = [f"train.out_dir={output}", f"train.samples={64 * steps}", "checkpoint.every_steps=0"]
    cfg = load_recipe(recipe, overrides)
    if (Path(output) / "config.yaml").is_file():  # the demo always starts fresh
        import shutil

        shutil.rmtree(output)
    summary = run_training(cfg)
    lines = [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in lines if r["step"] <= summary["steps"]][-max(steps // cfg.train.log_every_steps, 1):]
    print(f"demo: loss fell from {losses[0]:.3f} (step {cfg.train.log_every_steps}) to {losses[-1]:.3f} "
          f"(step {summary['steps']}); chance level is ln({cfg.train.global_batch_size}) = "
          f"{__import__('math').log(cfg.train.global_batch_size):.3f}")
    print(f"demo: run directory {output} (config.yaml, metrics.jsonl, tb/, checkpoints/, summary.json)")
    zeroshot_demo(output, cfg.data.image_size)
    return 0 if losses[-1] < losses[0] else 1


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
