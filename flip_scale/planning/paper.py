"""The paper's cost story, recomputed with the planner's own functions (`flip-scale plan --paper`).

Assumption throughout: the same utilisation for every run being compared, so time ratios are
FLOPs ratios. Where the paper's measured times differ from that, the tolerance says by how much.
"""
from __future__ import annotations

from ..models.flops import flops_per_sample
from ..models.sizes import get_size
from .compute import TRAIN_MULTIPLIER, gpu_days

# FLIP_FACTS.md, Table 1a (ViT-L/16, 6.4 epochs): mask -> (batch, image FLOPs, wall time, acc).
# Its "image FLOPs" column (0.52x / 0.28x) equals the TOTAL (image + text) ratios of FLIP_FACTS.md's
# compute table; image-tower-only ratios are 0.50x / 0.25x. So the total is what is compared.
TABLE_1A = {0.0: (16384, 1.00, 1.00, 68.6), 0.5: (32768, 0.52, 0.50, 69.6), 0.75: (65536, 0.28, 0.33, 68.2)}
# The planner assumes equal utilisation at every mask ratio, so it predicts wall time = FLOPs.
# The paper's TPU times were a little better at 50% (0.50x) and worse at 75% (0.33x: 50-token
# sequences use the hardware less well); planned ratios stay within this of Table 1a.
TABLE_1A_WALL_TOLERANCE = 0.05
# FLIP_FACTS.md "Hardware": unmasked L/16 CLIP took about 2,500 TPU-days; FLIP (75%) saves ~1,800.
L16_UNMASKED_TPU_DAYS = 2500
L16_FLIP_SAVED_TPU_DAYS = 1800
L16_FLIP_SPEEDUP = 3.7
# The planner's 75% FLOPs ratio (0.282) gives 3.5x and ~1,800 saved; the paper's "3.7x" and
# "about 1,800" are rounded figures of measured TPU time (2,500 / 3.7 = 676 days, 1,824 saved).
# Planned speed-up within this of the paper's:
L16_SPEEDUP_TOLERANCE = 0.05
# FLIP_FACTS.md "The scaling study": OpenCLIP H/14, unmasked, 32B samples, about 5,600 GPU-days
# (A100); the joint FLIP H/14 run (LAION-2B, 25.6B samples, 50% mask) is about 2.5x faster and
# saves about 3,360 GPU-days.
OPENCLIP_H14_SAMPLES = 32_000_000_000
OPENCLIP_H14_GPU_DAYS = 5600
OPENCLIP_TEXT_LENGTH = 77  # OpenCLIP's tokenizer context (FLIP uses 32)
FLIP_H14_JOINT_SAMPLES = 25_600_000_000
PAPER_H14_SPEEDUP = 2.5
PAPER_H14_SAVED_GPU_DAYS = 3360
A100_BF16_PEAK = 312e12


def table_1a() -> list[dict]:
    """Planned FLOPs and wall-time ratios of Table 1a's three L/16 settings, beside the paper's."""
    size = get_size("vit_l16")
    base = flops_per_sample(size, 0.0, 32)["total"]
    rows = []
    for mask, (batch, paper_flops, paper_wall, acc) in TABLE_1A.items():
        ratio = flops_per_sample(size, mask, 32)["total"] / base
        rows.append({"mask_ratio": mask, "batch": batch, "flops_ratio": ratio, "paper_image_flops": paper_flops,
                     "planned_wall_ratio": ratio, "paper_wall_ratio": paper_wall, "paper_acc": acc})
    return rows


def l16_tpu_days() -> dict:
    ratio = table_1a()[-1]["flops_ratio"]
    flip = L16_UNMASKED_TPU_DAYS * ratio
    return {"unmasked_tpu_days": L16_UNMASKED_TPU_DAYS, "flip75_tpu_days": flip,
            "saved_tpu_days": L16_UNMASKED_TPU_DAYS - flip, "paper_saved_tpu_days": L16_FLIP_SAVED_TPU_DAYS,
            "speedup": 1 / ratio, "paper_speedup": L16_FLIP_SPEEDUP}


def h14_vs_openclip() -> dict:
    """The joint H/14 run against OpenCLIP H/14, both at the utilisation implied by OpenCLIP's
    5,600 A100-days (which lands in the 12-26% band FLIP_FACTS.md derives for OpenCLIP)."""
    size = get_size("vit_h14")
    openclip_fps = TRAIN_MULTIPLIER * flops_per_sample(size, 0.0, OPENCLIP_TEXT_LENGTH)["total"]
    flip_fps = TRAIN_MULTIPLIER * flops_per_sample(size, 0.5, 32)["total"]
    openclip_flops = OPENCLIP_H14_SAMPLES * openclip_fps
    mfu = openclip_flops / (OPENCLIP_H14_GPU_DAYS * 86400 * A100_BF16_PEAK)
    flip_days = gpu_days(FLIP_H14_JOINT_SAMPLES * flip_fps, A100_BF16_PEAK, mfu)
    return {"openclip_gpu_days": OPENCLIP_H14_GPU_DAYS, "implied_a100_mfu": mfu, "flip_gpu_days": flip_days,
            "speedup": OPENCLIP_H14_GPU_DAYS / flip_days, "paper_speedup": PAPER_H14_SPEEDUP,
            "saved_gpu_days": OPENCLIP_H14_GPU_DAYS - flip_days, "paper_saved_gpu_days": PAPER_H14_SAVED_GPU_DAYS}


def format_story() -> str:
    lines = ["The paper's cost story (same utilisation for every run; FLIP_FACTS.md):",
             "  Table 1a, ViT-L/16 at fixed epochs:  mask  FLOPs (paper)   wall time planned (paper)"]
    for r in table_1a():
        lines.append(f"    {r['mask_ratio']:>4.0%}  {r['flops_ratio']:.2f}x ({r['paper_image_flops']:.2f}x)   "
                     f"{r['planned_wall_ratio']:.2f}x ({r['paper_wall_ratio']:.2f}x)")
    t = l16_tpu_days()
    lines.append(f"  L/16 unmasked {t['unmasked_tpu_days']:,} TPU-days -> FLIP 75% {t['flip75_tpu_days']:,.0f} "
                 f"({t['speedup']:.1f}x; paper {t['paper_speedup']}x), saves {t['saved_tpu_days']:,.0f} "
                 f"(paper: about {t['paper_saved_tpu_days']:,})")
    h = h14_vs_openclip()
    lines.append(f"  H/14 joint run (LAION-2B, 25.6B samples, 50%) vs OpenCLIP H/14 (32B, unmasked, "
                 f"{h['openclip_gpu_days']:,} A100-days, implied MFU {h['implied_a100_mfu']:.0%}):")
    lines.append(f"    FLIP {h['flip_gpu_days']:,.0f} GPU-days, {h['speedup']:.2f}x faster (paper ~{h['paper_speedup']}x), "
                 f"saves {h['saved_gpu_days']:,.0f} (paper ~{h['paper_saved_gpu_days']:,})")
    return "\n".join(lines)
