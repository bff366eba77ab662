"""Host syncs inside the training step on a GPU (issue 11 item 4): the trainer's TrainStep
(bench/engine_loop.py's Engine) run for N steps under torch.cuda.set_sync_debug_mode("warn")
after warm-up; every synchronising CUDA call warns, and the warnings are counted and located.

    python bench/sync_count.py --steps 5 [recipe overrides over recipes/test/tiny.yaml]

Prints one JSON line: {"device", "steps", "syncs", "syncs_per_step", "sites": {"file:line": n}}.
What it covers: the step (forward, loss, backward, gradient norm, device-side skip, fused
update, logit-scale clamp), i.e. a step that is not a log step. Log/checkpoint/eval steps sync
by design (trainer.py's docstring lists them). Without CUDA there is no sync debug mode: the
line says so (`"syncs": null`) after running the steps, so the script still checks itself.
"""
from __future__ import annotations

import json
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_loop import Engine, engine_args  # noqa: E402


def count_syncs(overrides: list[str], steps: int, warmup: int) -> dict:
    engine = Engine(overrides)
    for _ in range(warmup):  # compilation and first allocations sync freely
        engine.step()
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(engine.device)
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for _ in range(steps):
                loss = engine.step()
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    final = float(loss)  # the one read the caller makes; outside the counted window
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"device": torch.cuda.get_device_name(engine.device) if cuda else "cpu", "steps": steps,
            "syncs": len(syncs) if cuda else None, "syncs_per_step": len(syncs) / steps if cuda else None,
            "sites": dict(sites.most_common()), "final_loss": final,
            "overrides": overrides}


def main(argv=None) -> None:
    args = engine_args(__doc__.splitlines()[0], 5, 3, argv)
    print(json.dumps(count_syncs(args.overrides, args.steps, args.warmup)), flush=True)


if __name__ == "__main__":
    main()
