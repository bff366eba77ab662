"""`flip-scale plan RECIPE --nodes N --gpus-per-node G --gpu h100|a100|h200`: what a run costs.

FLOPs, wall-clock and GPU-days at a stated utilisation, memory per GPU with and without
activation checkpointing, whether it fits and the largest micro batch that does; then what
the layout costs besides compute: communication per step (bytes, exposed time), the data
loader's CPU cores, checkpoint size / files / write time and the Young/Daly interval, and the
total wall-clock that adds them up. The numbers
come from flip_scale/planning/; this module only loads the recipe, calls them and prints.
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, load_recipe, site_path
from .config.schema import Config
from .models.masking import num_text_kept
from .models.sizes import get_size
from .planning.comm import Layout, Link, gbps_to_bytes, plan_comm
from .planning.compute import DEFAULT_MFU, plan_compute
from .planning.hardware import GPUS, get_gpu
from .planning.memory import param_counts, plan_memory, resolve_reshard
from .planning.paper import format_story
from .planning.runtime import (DEFAULT_FAILURES_PER_NODE_DAY, DEFAULT_RESTART_MIN, DEVICE_DECODE_IMAGES_PER_S,
                               checkpoint_cost, cores_per_gpu, loader_images_per_core, loader_samples_per_s,
                               plan_runtime)

DEFAULT_LINK_GBPS = 400.0   # one 400 Gb/s NIC per GPU (H100 clusters: ConnectX-7 / NDR InfiniBand)
DEFAULT_CPUS_PER_GPU = 14   # what slurm/*.sh request per GPU task: a DGX H100's 112 cores / 8
DEFAULT_FS_GBPS = 100.0     # aggregate filesystem write bandwidth for the job


def load_plan_config(path: str, overrides: list[str], world_size: int, site: str | None = None) -> Config:
    """The recipe as `train` would see it (site file included), except that files it names
    (tokenizer, eval set, init_from) need not exist here: plans are made on laptops, far from the data."""
    return load_recipe(path, overrides, world_size=world_size, check_files=False, site=site)


def layout_of(cfg: Config, world: int, gpus_per_node: int, capacity_gb: float | None = None) -> Layout:
    """The recipe's parallel section as the communication model sees it."""
    p = cfg.parallel
    shard = p.shard_group_size
    # auto: decided against the card's memory, as the backend does at start-up
    reshard = resolve_reshard(cfg, world, capacity_gb)
    bucket_mb = p.bucket_mb
    return Layout(backend=p.backend, world=world, gpus_per_node=gpus_per_node, precision=p.precision,
                  zero_stage=p.zero_stage, shard_group=shard if shard and shard < world else None,
                  reshard_after_forward=tuple(sorted(reshard.items())),
                  blocks_per_unit=p.blocks_per_unit,
                  overlap_comm=p.overlap_comm,
                  bucket_bytes=bucket_mb * 1e6 if bucket_mb else None,
                  overlap_loss_gather=bool(getattr(p, "overlap_loss_gather", False)))


def _alternative_layouts(layout: Layout) -> dict[str, Layout]:
    from dataclasses import replace

    # The recipe's own knobs (reshard, units, overlap_comm, buckets) carry over to the others.
    base = replace(layout, shard_group=None, zero_stage=None)
    out = {"ddp": replace(base, backend="ddp"), "fsdp (flat)": replace(base, backend="fsdp")}
    if layout.world > layout.gpus_per_node:
        out[f"hsdp, groups of {layout.gpus_per_node} (a node)"] = replace(base, backend="fsdp",
                                                                        shard_group=layout.gpus_per_node)
    for stage in (1, 2, 3):
        out[f"deepspeed zero{stage}"] = replace(base, backend="deepspeed", zero_stage=stage)
    out["deepspeed zero2, DeepSpeed defaults"] = replace(base, backend="deepspeed", zero_stage=2,
                                                                     overlap_comm=False, bucket_bytes=None)
    return out


def make_plan(cfg: Config, nodes: int, gpus_per_node: int, gpu: str, mfu: float = DEFAULT_MFU,
              gpu_memory_gb: float | None = None, flash_attention: bool = True,
              link_gbps: float = DEFAULT_LINK_GBPS, nvlink_gbps: float | None = None,
              cpus_per_gpu: int = DEFAULT_CPUS_PER_GPU, fs_gbps: float = DEFAULT_FS_GBPS,
              failures_per_node_day: float = DEFAULT_FAILURES_PER_NODE_DAY,
              restart_min: float = DEFAULT_RESTART_MIN) -> dict:
    m, t, p = cfg.model, cfg.train, cfg.parallel
    world = nodes * gpus_per_node
    spec = get_gpu(gpu, gpu_memory_gb)
    size = get_size(m.name, image_size=cfg.data.image_size, text_length=m.text_length)
    peak = spec.peak_flops[p.precision]
    compute = {ck: plan_compute(size, mask_ratio=m.mask_ratio, text_length=m.text_length, samples=t.samples,
                                gpus=world, peak_flops_per_gpu=peak, mfu=mfu, checkpointing=ck,
                                text_mask_ratio=m.text_mask_ratio)
               for ck in (False, True)}
    layout = layout_of(cfg, world, gpus_per_node, spec.memory_gb)
    counts = param_counts(size)
    kept = 0 if p.backend != "fsdp" else sum(counts[f"{t}_block"] * counts[f"{t}_layers"]
                                             for t in ("image", "text") if not layout.reshards(t))
    # TrainStep overlaps the text gather only with several ranks and no contrastive micro-batching.
    local_batch = t.global_batch_size // world
    overlap_gather = (layout.overlap_loss_gather and world > 1
                      and not (t.micro_batch_size and t.micro_batch_size < local_batch))
    memory = {ck: plan_memory(size, mask_ratio=m.mask_ratio, text_length=m.text_length, precision=p.precision,
                              text_mask_ratio=m.text_mask_ratio, backend=p.backend, zero_stage=p.zero_stage, checkpointing=ck, world_size=world,
                              global_batch=t.global_batch_size, capacity_gb=spec.memory_gb,
                              flash_attention=flash_attention, shard_group=layout.shard_group,
                              kept_gathered_params=kept, micro_batch=t.micro_batch_size,
                              overlap_loss_gather=overlap_gather)
              for ck in (False, True)}
    # One step's compute at the assumed utilisation, split into the phases communication hides under.
    c = compute[p.activation_checkpointing]
    micro = t.global_batch_size // world
    rate = peak * mfu
    compute_s = micro * c.hardware_flops_per_sample / rate
    forward_s = micro * c.forward_gflops["total"] * 1e9 / rate
    if t.micro_batch_size and t.micro_batch_size < micro:
        # Contrastive micro-batching: a no-grad forward caches the features, then each micro
        # batch is re-forwarded with gradient: one extra forward (about 1.33x compute).
        compute_s += forward_s
    image_forward_s = micro * c.forward_gflops["image"] * 1e9 / rate
    link = Link(gbps_to_bytes(link_gbps), gbps_to_bytes(nvlink_gbps or spec.nvlink_gbps))
    comm = plan_comm(layout, counts, t.global_batch_size, size.embed_dim, link, forward_s, compute_s - forward_s,
                     image_forward_s)
    # The same step under the other layouts, for comparison (same hardware, same batch).
    alternatives = {}
    for name, alt in _alternative_layouts(layout).items():
        a = plan_comm(alt, counts, t.global_batch_size, size.embed_dim, link, forward_s, compute_s - forward_s,
                      image_forward_s)
        alternatives[name] = {"bytes_per_rank": a.bytes_per_rank, "network_bytes_per_rank": a.network_bytes_per_rank,
                              "exposed_s": a.exposed_s}
    # data.decode=device: the JPEG decode moves from the loader's cores into the step (assumed rate).
    decode_s = micro / DEVICE_DECODE_IMAGES_PER_S if cfg.data.decode == "device" else 0.0
    gpu_step_s = compute_s + decode_s + comm.exposed_s
    # The loader runs in its own processes beside the step: it limits the step only if slower.
    images_per_core = loader_images_per_core(cfg.data.decode)
    feed = loader_samples_per_s(cpus_per_gpu, images_per_core)
    data_s = micro / feed if feed > 0 else float("inf")
    step_s = max(gpu_step_s, data_s)
    steps = t.samples // t.global_batch_size
    ckpt = checkpoint_cost(p.backend, p.zero_stage, p.precision, counts["total"], world, gbps_to_bytes(fs_gbps),
                           async_save=cfg.checkpoint.async_save)
    run = plan_runtime(step_s, steps, cfg.checkpoint.every_steps, ckpt.blocked_s, nodes, failures_per_node_day,
                       restart_min * 60, every_minutes=cfg.checkpoint.every_minutes)
    step = {"compute_s": compute_s, "forward_s": forward_s, "image_forward_s": image_forward_s,
            "comm_exposed_s": comm.exposed_s, "decode_s": decode_s, "gpu_step_s": gpu_step_s, "data_s": data_s,
            "step_s": step_s,
            "data_bound": data_s > gpu_step_s, "micro_batch": micro}
    loader = {"decode": cfg.data.decode, "images_per_core": images_per_core, "samples_per_s_per_gpu": micro / gpu_step_s,
              "cores_per_gpu_needed": cores_per_gpu(micro / gpu_step_s, images_per_core), "cpus_per_gpu": cpus_per_gpu,
              "loader_samples_per_s_per_gpu": feed}
    loader["fix"] = loader_fix(loader, cfg.data.decode, micro / gpu_step_s)
    total = {"wall_s": run.total_s, "gpu_days": run.total_s * world / 86400,
             "vs_compute": run.total_s / c.wall_s}
    return {
        "recipe": getattr(cfg, "_recipe", None), "model": m.name, "mask_ratio": m.mask_ratio,
        "text_length": m.text_length, "text_mask_ratio": m.text_mask_ratio, "image_size": cfg.data.image_size,
        "params": {k: v for k, v in counts.items() if k != "shapes"},
        "samples": t.samples, "global_batch_size": t.global_batch_size, "nodes": nodes,
        "gpus_per_node": gpus_per_node, "world_size": world, "gpu": spec.name, "gpu_memory_gb": spec.memory_gb,
        "precision": p.precision, "backend": p.backend, "zero_stage": p.zero_stage,
        "activation_checkpointing": p.activation_checkpointing, "flash_attention": flash_attention,
        "mfu": mfu, "peak_flops_per_gpu": peak,
        "compute": compute[p.activation_checkpointing].as_dict(),
        "compute_other_checkpointing": compute[not p.activation_checkpointing].as_dict(),
        "memory": {"no_checkpointing": memory[False].as_dict(), "checkpointing": memory[True].as_dict()},
        "link": {"link_gbps": link_gbps, "nvlink_gbps": nvlink_gbps or spec.nvlink_gbps},
        "layout": {"scheme": layout.scheme, "shard_group": layout.shard_group,
                   "reshard_after_forward": dict(layout.reshard_after_forward), "blocks_per_unit": layout.blocks_per_unit,
                   "overlap_comm": layout.overlap_comm, "overlap_loss_gather": layout.overlap_loss_gather},
        "reshard_setting": str(p.reshard_after_forward).lower(),
        "comm": comm.as_dict(), "comm_alternatives": alternatives, "step": step, "loader": loader,
        "checkpoint": {**ckpt.as_dict(), "fs_gbps": fs_gbps, "every_steps": cfg.checkpoint.every_steps,
                       "every_minutes": cfg.checkpoint.every_minutes},
        "runtime": {**run.as_dict(), "failures_per_node_day": failures_per_node_day, "restart_min": restart_min},
        "total": total,
    }


def _duration(seconds: float) -> str:
    days, rem = divmod(seconds, 86400)
    return f"{int(days)}d {rem / 3600:04.1f}h" if days else f"{rem / 3600:.1f}h"


def format_plan(plan: dict) -> str:
    c, mem = plan["compute"], plan["memory"]
    local = plan["global_batch_size"] // plan["world_size"]
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
        # A speed-up is only as honest as its baseline. This one is a FLOPs ratio at one
        # assumed MFU; a slow unmasked step would flatter a measured one.
        "  (baseline: this recipe at mask 0, same engine and MFU: a FLOPs ratio; measured against"
        " open_clip's unmasked step: BENCHMARKS.md)",
        f"  (with checkpointing {'off' if ck else 'on'}: {plan['compute_other_checkpointing']['gpu_days']:,.0f} GPU-days)",
        "",
        f"memory per GPU (GB), {local} samples per GPU = {plan['global_batch_size']} / {plan['world_size']} GPUs"
        + (f" in micro batches of {mem['checkpointing']['micro_batch']}" if mem['checkpointing']['micro_batch'] < local
           else "") + f", partitioning {mem['checkpointing']['scheme']}:",
        f"  {'':34s}{'no ckpt':>10s}{'ckpt':>10s}",
    ]
    rows = [("weights", "weights_gb"), ("gradients", "grads_gb"), ("fp32 master weights", "master_gb"),
            ("AdamW moments (fp32 m, v)", "moments_gb"), ("gathered / cast working copies", "working_copies_gb"),
            ("activations", "activations_gb"), ("contrastive loss (saved, fp32)", "loss_gb"),
            ("temporaries", "workspace_gb"), ("total (at the step's peak)", "total_gb")]
    a, b = mem["no_checkpointing"], mem["checkpointing"]
    for label, key in rows:
        lines.append(f"  {label:34s}{a[key]:10.2f}{b[key]:10.2f}")
    lines.append(f"  peak at: {a['peak_at']} (no ckpt), {b['peak_at']} (ckpt)")
    lines.append(f"  {'activations per sample':34s}{a['activation_gb_per_sample'] * 1e3:8.1f}MB{b['activation_gb_per_sample'] * 1e3:8.1f}MB")
    fits_label = f"fits in {a['usable_gb']:.0f} usable of {a['capacity_gb']:g} GB"
    lines.append(f"  {fits_label:34s}"
                 f"{'yes' if a['fits'] else 'NO':>10s}{'yes' if b['fits'] else 'NO':>10s}")
    lines.append(f"  {'largest micro batch that fits':34s}{a['max_micro_batch']:10d}{b['max_micro_batch']:10d}")
    if not (a["fits"] if not ck else b["fits"]):
        hint = ("turn on parallel.activation_checkpointing" if not ck and b["fits"]
                else _micro_batch_hint(b if ck else a, local))
        lines.append(f"  does NOT fit as configured: {hint}")
    if "comm" in plan:
        lines += [""] + format_costs(plan)
    return "\n".join(lines)


def largest_micro_batch(mem: dict, local: int) -> int:
    """The largest train.micro_batch_size that fits: the towers' activations scale with the
    micro batch, the weights, optimizer state and the loss over the local batch do not; a
    divisor of the local batch (micro batches split it evenly)."""
    per_sample = (mem["activations_gb"] + mem["workspace_gb"]) / max(mem["micro_batch"], 1)
    fixed = mem["total_gb"] - mem["activations_gb"] - mem["workspace_gb"]
    cap = int((mem["usable_gb"] - fixed) // per_sample) if per_sample > 0 else local
    return max((m for m in range(1, min(cap, local) + 1) if local % m == 0), default=0)


def _micro_batch_hint(mem: dict, local: int) -> str:
    m = largest_micro_batch(mem, local)
    if m == 0:
        return "use more GPUs (even one sample per micro batch does not fit beside the model state)"
    return (f"set train.micro_batch_size={m} (contrastive micro-batching: cached features, the same gradient as "
            f"the whole batch, about 1.33x compute), or use more GPUs")


def _gb(x: float) -> str:
    return f"{x / 1e9:.2f} GB" if x >= 1e8 else f"{x / 1e6:.1f} MB"


def _ms(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x >= 0.01 else f"{x * 1e3:.1f} ms"


def _layout_label(plan: dict) -> str:
    lay = plan["layout"]
    if lay["scheme"] == "hsdp":
        g = lay["shard_group"]
        return f"hsdp: {plan['world_size'] // g} copies x {g} ranks"
    return f"{lay['scheme']} over {plan['world_size']} ranks"


def loader_fix(loader: dict, decode: str, samples_per_s_per_gpu: float) -> str | None:
    """What makes a data-bound plan's loader keep up: the CPU cores per GPU task to request, and
    (from decode=cpu) data.decode=device with the cores that needs (an upper bound: the GPU then
    decodes too, so it asks for fewer samples/s). None when the loader is fast enough."""
    need = loader["cores_per_gpu_needed"]
    if loader["cpus_per_gpu"] >= need:
        return None
    cpus = f"request {need} CPU cores per GPU task (sbatch --cpus-per-task={need}; plan --cpus-per-gpu {need})"
    if decode == "device":
        return cpus
    device = cores_per_gpu(samples_per_s_per_gpu, loader_images_per_core("device"))
    return f"set data.decode=device (then {device} cores per GPU suffice), or {cpus}"


def format_costs(plan: dict) -> list[str]:
    """Communication, data loader, checkpoints and the total wall-clock (the plan's second half)."""
    cm, st, ld, ck, rt, tot = (plan[k] for k in ("comm", "step", "loader", "checkpoint", "runtime", "total"))
    lay, link = plan["layout"], plan["link"]
    knobs = []
    if lay["scheme"] in ("fsdp", "hsdp"):
        r = lay["reshard_after_forward"]
        knobs.append("reshard after forward: " + ", ".join(f"{t} {'yes' if r[t] else 'no'}" for t in ("image", "text"))
                     + f" [{plan['reshard_setting']}], {lay['blocks_per_unit']} text block(s) per unit")
    if lay["scheme"] in ("zero1", "zero2"):
        knobs.append(f"overlap_comm {str(lay['overlap_comm']).lower()}")
    lines = [f"communication per step and rank ({_layout_label(plan)}{'; ' + ', '.join(knobs) if knobs else ''}; "
             f"{link['link_gbps']:g} Gb/s network per GPU [--link-gbps], NVLink {link['nvlink_gbps']:g} Gb/s "
             f"[--nvlink-gbps]; NCCL ring model):"]
    for c in cm["collectives"]:
        where = f"{c['nodes']} nodes" if c["nodes"] > 1 else "NVLink"
        lines.append(f"  {c['name']:50s}{_gb(c['bytes_per_rank']):>10s}{c['calls']:5d} calls  "
                     f"group {c['group']:4d} ({where}){_ms(c['seconds']):>10s}")
    parts = ", ".join(f"{k} {_ms(v)}" for k, v in cm["exposed_parts"].items())
    lines.append(f"  total {_gb(cm['bytes_per_rank'])} ({_gb(cm['network_bytes_per_rank'])} across nodes), "
                 f"{_ms(cm['seconds'])} back to back; exposed {_ms(cm['exposed_s'])} ({parts})")
    if plan.get("comm_alternatives"):
        lines.append(f"  {'other layouts, same run:':42s}{'bytes/rank':>12s}{'across nodes':>14s}{'exposed':>10s}")
        for name, a in plan["comm_alternatives"].items():
            lines.append(f"    {name:40s}{_gb(a['bytes_per_rank']):>12s}{_gb(a['network_bytes_per_rank']):>14s}"
                         f"{_ms(a['exposed_s']):>10s}")
    decode = (f"JPEG decode on the GPU {_ms(st['decode_s'])} (data.decode=device; ASSUMED "
              f"{DEVICE_DECODE_IMAGES_PER_S:,.0f} images/s, not measured) + " if st["decode_s"] else "")
    lines.append(f"step: compute {_ms(st['compute_s'])} (micro batch {st['micro_batch']}, {plan['mfu']:.0%} MFU) + "
                 f"{decode}exposed communication {_ms(st['comm_exposed_s'])} = {_ms(st['gpu_step_s'])}"
                 + (f"; the loader needs {_ms(st['data_s'])}: DATA-BOUND" if st["data_bound"] else ""))
    enough = ld["cpus_per_gpu"] >= ld["cores_per_gpu_needed"]
    lines.append(f"data loader: {ld['samples_per_s_per_gpu']:,.0f} samples/s per GPU needs {ld['cores_per_gpu_needed']} "
                 f"CPU cores per GPU ({ld['images_per_core']:.0f} images/s per core with data.decode="
                 f"{ld['decode']}, BENCHMARKS.md, + 1 for the "
                 f"trainer); {ld['cpus_per_gpu']} available [--cpus-per-gpu]: "
                 + ("enough" if enough else f"NOT enough, the loader caps a GPU at "
                                            f"{ld['loader_samples_per_s_per_gpu']:,.0f} samples/s"))
    if ld.get("fix"):
        lines.append(f"  fix: {ld['fix']}")
    every = " or ".join([f"{ck['every_steps']} steps"] * bool(ck["every_steps"])
                        + [f"{ck['every_minutes']:g} min"] * bool(ck["every_minutes"])) or "the end only"
    blocked = (f"training blocked {_ms(ck['blocked_s'])} per save (asynchronous: the copy to host memory)"
               if ck["asynchronous"] else "training blocked for the write")
    lines.append(f"checkpoint: {_gb(ck['bytes'])}, {ck['files']:,} files, {ck['write_s']:.1f} s to write at "
                 f"{ck['fs_gbps']:g} Gb/s [--fs-gbps], {blocked}; every {every} = "
                 f"{rt['interval_s'] / 60:.1f} min, {rt['checkpoints']} in the run ({_duration(rt['checkpoint_s'])})")
    if rt["mtbf_s"] != float("inf"):
        daly_steps = rt["daly_interval_s"] / st["step_s"]
        lines.append(f"failures: job MTBF {rt['mtbf_s'] / 3600:.1f} h at {rt['failures_per_node_day']:g} failures per "
                     f"node-day [--failures-per-node-day]; expected {rt['expected_failures']:.1f} failures, "
                     f"{_duration(rt['lost_s'])} lost (half an interval + {rt['restart_min']:g} min restart each); "
                     f"Young/Daly interval {rt['daly_interval_s'] / 60:.1f} min = {daly_steps:,.0f} steps "
                     f"(total there {_duration(rt['daly_total_s'])})")
    lines.append(f"total wall-clock: {_duration(tot['wall_s'])} ({tot['gpu_days']:,.0f} GPU-days), "
                 f"{tot['vs_compute']:.2f}x the compute-only {_duration(plan['compute']['wall_s'])}")
    return lines


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
    ap.add_argument("--link-gbps", type=float, default=DEFAULT_LINK_GBPS,
                    help=f"network bandwidth per GPU, Gb/s (default {DEFAULT_LINK_GBPS:g})")
    ap.add_argument("--nvlink-gbps", type=float, default=None,
                    help="intra-node bandwidth per GPU and direction, Gb/s (default: the GPU's NVLink)")
    ap.add_argument("--cpus-per-gpu", type=int, default=DEFAULT_CPUS_PER_GPU,
                    help=f"CPU cores per GPU for the data loader (default {DEFAULT_CPUS_PER_GPU})")
    ap.add_argument("--fs-gbps", type=float, default=DEFAULT_FS_GBPS,
                    help=f"aggregate filesystem write bandwidth, Gb/s (default {DEFAULT_FS_GBPS:g})")
    ap.add_argument("--failures-per-node-day", type=float, default=DEFAULT_FAILURES_PER_NODE_DAY,
                    help=f"expected failures per node and day (default {DEFAULT_FAILURES_PER_NODE_DAY:g}, "
                         "Llama 3's rate)")
    ap.add_argument("--restart-min", type=float, default=DEFAULT_RESTART_MIN,
                    help=f"minutes from a failure to training again (default {DEFAULT_RESTART_MIN:g})")
    ap.add_argument("--site", metavar="SITE.yaml", help="site file applied as for train (default: $FLIP_SITE)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON instead of text")
    ap.add_argument("--simulate", action="store_true",
                    help="also run the real step as one rank of this layout (fake process group, fake tensors) and "
                         "print its peak memory and collectives beside the plan's (minutes; FSDP only)")
    ap.add_argument("--simulate-timeout", type=float, default=None, metavar="S",
                    help="give up on the simulation after S seconds (default 1200)")
    ap.add_argument("--paper", action="store_true", help="also print the paper's cost story, recomputed")
    return ap


def main_plan(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        print("flip-scale plan: error: --nodes and --gpus-per-node must be positive", file=sys.stderr)
        return 2
    for flag in ("link_gbps", "fs_gbps", "cpus_per_gpu"):
        if getattr(args, flag) <= 0:
            print(f"flip-scale plan: error: --{flag.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    if args.nvlink_gbps is not None and args.nvlink_gbps <= 0:
        print("flip-scale plan: error: --nvlink-gbps must be positive", file=sys.stderr)
        return 2
    try:
        cfg = load_plan_config(args.recipe, args.overrides, args.nodes * args.gpus_per_node, site_path(args.site))
        plan = make_plan(cfg, args.nodes, args.gpus_per_node, args.gpu, args.mfu, args.gpu_memory_gb,
                         args.attention == "flash", link_gbps=args.link_gbps, nvlink_gbps=args.nvlink_gbps,
                         cpus_per_gpu=args.cpus_per_gpu, fs_gbps=args.fs_gbps,
                         failures_per_node_day=args.failures_per_node_day, restart_min=args.restart_min)
        if args.simulate:
            from .simulation.compare import DEFAULT_TIMEOUT_S, public, run_simulation

            plan["simulation"] = public(run_simulation(
                args.recipe, args.overrides, args.nodes, args.gpus_per_node, args.gpu, args.gpu_memory_gb,
                args.simulate_timeout or DEFAULT_TIMEOUT_S))
    except (ConfigError, ValueError) as e:
        print(f"flip-scale plan: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan, indent=1))
    else:
        print(format_plan(plan))
        if "simulation" in plan:
            from .simulation.compare import format_simulation

            print()
            print("\n".join(format_simulation(plan)))
        if args.paper:
            print()
            print(format_story())
    return 0
