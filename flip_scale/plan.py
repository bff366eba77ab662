"""`flip-scale plan RECIPE --nodes N --gpus-per-node G --gpu h100|a100|h200`: what a run costs.

FLOPs, wall-clock and GPU-days at a stated utilisation, memory per GPU with and without
activation checkpointing, whether it fits and the largest micro batch that does. The numbers
come from flip_scale/planning/; this module only loads the recipe, calls them and prints.
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, load_recipe
from .config.schema import Config
from .models.masking import num_text_kept
from .models.sizes import get_size
from .planning.compute import DEFAULT_MFU, plan_compute
from .planning.hardware import GPUS, get_gpu
from .planning.memory import param_counts, plan_memory
from .planning.paper import format_story


def load_plan_config(path: str, overrides: list[str], world_size: int) -> Config:
    """The recipe as `train` would see it, except that files it names (tokenizer, eval set,
    init_from) need not exist here: plans are made on laptops, far from the data."""
    return load_recipe(path, overrides, world_size=world_size, check_files=False)


def make_plan(cfg: Config, nodes: int, gpus_per_node: int, gpu: str, mfu: float = DEFAULT_MFU,
              gpu_memory_gb: float | None = None, flash_attention: bool = True) -> dict:
    m, t, p = cfg.model, cfg.train, cfg.parallel
    world = nodes * gpus_per_node
    spec = get_gpu(gpu, gpu_memory_gb)
    size = get_size(m.name, image_size=cfg.data.image_size, text_length=m.text_length)
    peak = spec.peak_flops[p.precision]
    compute = {ck: plan_compute(size, mask_ratio=m.mask_ratio, text_length=m.text_length, samples=t.samples,
                                gpus=world, peak_flops_per_gpu=peak, mfu=mfu, checkpointing=ck,
                                text_mask_ratio=m.text_mask_ratio)
               for ck in (False, True)}
    memory = {ck: plan_memory(size, mask_ratio=m.mask_ratio, text_length=m.text_length, precision=p.precision,
                              text_mask_ratio=m.text_mask_ratio, backend=p.backend, zero_stage=p.zero_stage, checkpointing=ck, world_size=world,
                              global_batch=t.global_batch_size, capacity_gb=spec.memory_gb,
                              flash_attention=flash_attention)
              for ck in (False, True)}
    return {
        "recipe": getattr(cfg, "_recipe", None), "model": m.name, "mask_ratio": m.mask_ratio,
        "text_length": m.text_length, "text_mask_ratio": m.text_mask_ratio, "image_size": cfg.data.image_size,
        "params": param_counts(size),
        "samples": t.samples, "global_batch_size": t.global_batch_size, "nodes": nodes,
        "gpus_per_node": gpus_per_node, "world_size": world, "gpu": spec.name, "gpu_memory_gb": spec.memory_gb,
        "precision": p.precision, "backend": p.backend, "zero_stage": p.zero_stage,
        "activation_checkpointing": p.activation_checkpointing, "flash_attention": flash_attention,
        "mfu": mfu, "peak_flops_per_gpu": peak,
        "compute": compute[p.activation_checkpointing].as_dict(),
        "compute_other_checkpointing": compute[not p.activation_checkpointing].as_dict(),
        "memory": {"no_checkpointing": memory[False].as_dict(), "checkpointing": memory[True].as_dict()},
    }


def _duration(seconds: float) -> str:
    days, rem = divmod(seconds, 86400)
    return f"{int(days)}d {rem / 3600:04.1f}h" if days else f"{rem / 3600:.1f}h"


def format_plan(plan: dict) -> str:
    c, mem = plan["compute"], plan["memory"]
    pc = plan["params"]
    ck = plan["activation_checkpointing"]
    gf = c["forward_gflops"]
    lines = [
        f"plan: {plan['recipe']} on {plan['nodes']} x {plan['gpus_per_node']} {plan['gpu']} = {plan['world_size']} GPUs, "
        f"{plan['backend']}{'' if plan['zero_stage'] is None else ' ZeRO-' + str(plan['zero_stage'])}, "
        f"{plan['precision']}, activation checkpointing {'on' if ck else 'off'}",
        f"model {plan['model']}: {pc['total'] / 1e6:.1f}M params (image {pc['image'] / 1e6:.1f}M, text "
        f"{pc['text'] / 1e6:.1f}M), mask {plan['mask_ratio']:.2f}, {plan['image_size']} px, text length {plan['text_length']}"
        + (f" ({plan['text_mask_ratio']:.0%} text masking: {num_text_kept(plan['text_length'], plan['text_mask_ratio'])} "
           f"tokens in training)" if plan.get("text_mask_ratio") else ""),
        f"forward GFLOPs per sample: image {gf['image']:.1f} + text {gf['text']:.1f} = {gf['total']:.1f} "
        f"({c['flops_ratio_vs_unmasked']:.2f}x of unmasked {c['unmasked_forward_gflops']:.1f})",
        f"training: {plan['samples'] / 1e9:.3g}B samples x {c['model_flops_per_sample'] / 1e9:.0f} GFLOPs (3x forward) "
        f"= {c['total_model_flops']:.3g} model FLOPs"
        + (f"; {c['total_hardware_flops']:.3g} hardware FLOPs with recomputation (4x)" if ck else ""),
        f"at {c['mfu']:.0%} of {plan['peak_flops_per_gpu'] / 1e12:.0f} TFLOP/s ({plan['precision']}) per GPU "
        f"[assumed; --mfu]: {_duration(c['wall_s'])} wall-clock, {c['gpu_days']:,.0f} GPU-days, "
        f"{c['samples_per_sec_per_gpu']:,.0f} samples/s per GPU",
        f"FLIP speedup over the same run unmasked: {c['speedup_vs_unmasked']:.2f}x "
        f"(unmasked: {c['unmasked_gpu_days']:,.0f} GPU-days)",
        f"  (with checkpointing {'off' if ck else 'on'}: {plan['compute_other_checkpointing']['gpu_days']:,.0f} GPU-days)",
        "",
        f"memory per GPU (GB), micro batch {mem['checkpointing']['micro_batch']} = "
        f"{plan['global_batch_size']} / {plan['world_size']} GPUs, partitioning {mem['checkpointing']['scheme']}:",
        f"  {'':34s}{'no ckpt':>10s}{'ckpt':>10s}",
    ]
    rows = [("weights", "weights_gb"), ("gradients", "grads_gb"), ("fp32 master weights", "master_gb"),
            ("AdamW moments (fp32 m, v)", "moments_gb"), ("gathered / cast working copies", "working_copies_gb"),
            ("activations", "activations_gb"), ("contrastive loss (fp32 logits)", "loss_gb"),
            ("backward workspace", "workspace_gb"), ("total", "total_gb")]
    a, b = mem["no_checkpointing"], mem["checkpointing"]
    for label, key in rows:
        lines.append(f"  {label:34s}{a[key]:10.2f}{b[key]:10.2f}")
    lines.append(f"  {'activations per sample':34s}{a['activation_gb_per_sample'] * 1e3:8.1f}MB{b['activation_gb_per_sample'] * 1e3:8.1f}MB")
    fits_label = f"fits in {a['usable_gb']:.0f} usable of {a['capacity_gb']:g} GB"
    lines.append(f"  {fits_label:34s}"
                 f"{'yes' if a['fits'] else 'NO':>10s}{'yes' if b['fits'] else 'NO':>10s}")
    lines.append(f"  {'largest micro batch that fits':34s}{a['max_micro_batch']:10d}{b['max_micro_batch']:10d}")
    if not (a["fits"] if not ck else b["fits"]):
        hint = ("turn on parallel.activation_checkpointing" if not ck and b["fits"]
                else "use more GPUs (a contrastive batch must not be split by gradient accumulation)")
        lines.append(f"  does NOT fit as configured: {hint}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flip-scale plan", description=__doc__.splitlines()[0])
    ap.add_argument("recipe", help="recipe YAML")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for train")
    ap.add_argument("--nodes", type=int, required=True)
    ap.add_argument("--gpus-per-node", type=int, required=True)
    ap.add_argument("--gpu", required=True, choices=sorted(GPUS), help="a100 = 80 GB; a100-40gb or --gpu-memory-gb 40")
    ap.add_argument("--gpu-memory-gb", type=float, default=None, help="override the card's memory (A100 40 GB)")
    ap.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                    help=f"assumed utilisation of the dense peak (default {DEFAULT_MFU})")
    ap.add_argument("--attention", choices=("flash", "math"), default="flash",
                    help="fused attention (no N^2 activations; the default on GPUs) or the math kernel")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON instead of text")
    ap.add_argument("--paper", action="store_true", help="also print the paper's cost story, recomputed")
    return ap


def main_plan(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        print("flip-scale plan: error: --nodes and --gpus-per-node must be positive", file=sys.stderr)
        return 2
    try:
        cfg = load_plan_config(args.recipe, args.overrides, args.nodes * args.gpus_per_node)
        plan = make_plan(cfg, args.nodes, args.gpus_per_node, args.gpu, args.mfu, args.gpu_memory_gb,
                         args.attention == "flash")
    except (ConfigError, ValueError) as e:
        print(f"flip-scale plan: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan, indent=1))
    else:
        print(format_plan(plan))
        if args.paper:
            print()
            print(format_story())
    return 0
