"""`python -m flip_scale.simulation RECIPE [key=value ...] --nodes N --gpus-per-node G --gpu X`:
the simulation as a JSON object on stdout's last line (plan.py runs this in a subprocess); the
lines before it say what is not simulated. Exit 2 with one line on bad input."""
from __future__ import annotations

import argparse
import json
import sys
import warnings


def main(argv: list[str] | None = None) -> int:
    from ..config import ConfigError
    from ..plan import load_plan_config
    from ..planning.hardware import GPUS, get_gpu
    from .run import not_simulated, simulate, torch_version_note

    ap = argparse.ArgumentParser(prog="python -m flip_scale.simulation")
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--gpus-per-node", type=int, required=True)
    ap.add_argument("--gpu", required=True, choices=sorted(GPUS))
    ap.add_argument("--gpu-memory-gb", type=float, default=None)
    args = ap.parse_intermixed_args(argv)
    try:
        cfg = load_plan_config(args.recipe, args.overrides, args.nodes * args.gpus_per_node)
        spec = get_gpu(args.gpu, args.gpu_memory_gb)
    except (ConfigError, ValueError) as e:
        print(f"flip-scale plan --simulate: error: {e}", file=sys.stderr)
        return 2
    notes = not_simulated(cfg)
    version = torch_version_note()
    if version:
        notes.append(version)
    if any(n.startswith("skip:") for n in notes):
        print(json.dumps({"skipped": True, "notes": notes}))
        return 0
    cfg.parallel.compile = False  # said in notes: the blocks run eagerly
    # The fake process group and fake tensors trip a few "not supported"/deprecation warnings
    # once per run; they say nothing about the recipe.
    warnings.filterwarnings("ignore")
    result = simulate(cfg, args.nodes, args.gpus_per_node, spec.memory_gb)
    result["notes"] = notes
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
