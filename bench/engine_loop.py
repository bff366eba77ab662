"""One engine measurement: the trainer's step (forward, contrastive loss, backward, clip, step,
clamp) through a Backend on ONE process, on a fixed batch already on the device.

The data loader is left out on purpose: this measures the engine (backend, precision, compile,
masking), not data decoding (bench_loader.py covers that; the synthetic generator is far slower
than a GPU at 224 px and would hide everything). Prints one JSON line:
    python bench/engine_loop.py --steps 30 --warmup 5 model.name=tiny parallel.backend=fsdp
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flip_scale.config import load_recipe  # noqa: E402
from flip_scale.distributed.backends import get_backend_class  # noqa: E402
from flip_scale.host_memory import apply_host_malloc  # noqa: E402
from flip_scale.distributed.env import DistEnv, cleanup, select_device  # noqa: E402
from flip_scale.metrics import device_peak_flops  # noqa: E402
from flip_scale.models import train_flops_per_sample  # noqa: E402
from flip_scale.train.build import build_model_from_config, parallelize_and_build_optimizer  # noqa: E402
from flip_scale.train.step import TrainStep  # noqa: E402

TINY = Path(__file__).resolve().parent.parent / "recipes" / "test" / "tiny.yaml"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Engine:
    """The trainer's model, backend and a fixed batch, built from recipe overrides; `step()` is one
    training step exactly as the trainer takes it (also used by bench_vs_openclip.py)."""

    def __init__(self, overrides: list[str]):
        cfg = self.cfg = load_recipe(TINY, overrides)
        self.denv = DistEnv()
        device = self.device = select_device(cfg.train.device, self.denv)
        # The trainer's host-malloc set-up (train.host_malloc). Process-wide: in
        # bench_vs_openclip.py open_clip's step, run in the same process, gets it too.
        self.host_malloc_kept = apply_host_malloc(cfg.train.host_malloc, device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.train.seed)
        model = self.model = build_model_from_config(cfg)
        self.n_patches = model.visual.num_patches
        backend = self.backend = get_backend_class(cfg.parallel.backend)(cfg, self.denv, device)
        parallelize_and_build_optimizer(backend, model, cfg)
        B, S, L = cfg.train.global_batch_size, cfg.data.image_size, cfg.model.text_length
        g = torch.Generator().manual_seed(0)
        self.batch = {"images": torch.randn(B, 3, S, S, generator=g).to(device),
                      "tokens": torch.randint(1, model.size.vocab_size, (B, L), generator=g).to(device)}
        # The trainer's own step: masks from the data positions, named outputs, *_loss terms,
        # backward, the device-side non-finite skip, the fused update and the logit-scale clamp.
        self.train_step = TrainStep(backend, cfg, self.n_patches, B, 0, device)
        self.module = backend.module
        self.module.train()
        self.steps_taken = 0

    def set_mask_ratio(self, ratio: float) -> None:
        """Another mask ratio on the same model (the step's noise follows the config)."""
        self.model.mask_ratio = self.cfg.model.mask_ratio = ratio
        self.train_step = TrainStep(self.backend, self.cfg, self.n_patches, self.cfg.train.global_batch_size, 0,
                                    self.device)

    def step(self):
        loss, _ = self.train_step(self.batch, self.steps_taken, 1e-5)
        self.steps_taken += 1
        return loss


def measure(overrides: list[str], steps: int, warmup: int) -> dict:
    engine = Engine(overrides)
    cfg, model, device, one_step = engine.cfg, engine.model, engine.device, engine.step
    B, S, L = cfg.train.global_batch_size, cfg.data.image_size, cfg.model.text_length
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    t0 = time.perf_counter()
    for _ in range(warmup):  # includes compilation and first allocations
        one_step()
    _sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    final_loss = float(loss)  # also synchronises
    _sync(device)
    t2 = time.perf_counter()
    sps = steps * B / (t2 - t1)
    peak = device_peak_flops(device, cfg.parallel.precision)
    flops = train_flops_per_sample(model.size, cfg.model.mask_ratio, L)
    result = {
        "model": cfg.model.name, "backend": cfg.parallel.backend, "zero_stage": cfg.parallel.zero_stage,
        "precision": cfg.parallel.precision, "compile": cfg.parallel.compile, "mask_ratio": cfg.model.mask_ratio,
        "activation_checkpointing": cfg.parallel.activation_checkpointing, "batch": B, "image_size": S,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": steps, "warmup_s": t1 - t0, "step_s": (t2 - t1) / steps, "samples_per_sec": sps,
        "mfu": flops * sps / peak if peak else None,
        "max_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "final_loss": final_loss,
    }
    cleanup()
    return result


def engine_args(description: str, steps: int, warmup: int, argv=None) -> argparse.Namespace:
    """--steps, --warmup and recipe overrides: the command line of the one-engine benchmarks."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("overrides", nargs="*", help="recipe key=value over recipes/test/tiny.yaml")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = engine_args(__doc__.splitlines()[0], 20, 3, argv)
    print(json.dumps(measure(args.overrides, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
