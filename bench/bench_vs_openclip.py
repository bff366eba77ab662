"""Our training step against open_clip's on the same architecture, alternating in one process.

    python bench/bench_vs_openclip.py [--threads all,1] [--trials 5] [--steps 1] [--json] [--write]

Ours: the trainer's step through the `single` backend (bench/engine_loop.py's Engine, the
trainer's TrainStep: masks from the data positions, forward, losses, backward, gradient norm and
the device-side non-finite skip, fused AdamW, logit-scale clamp). open_clip: its CLIP with
PatchDropout, ClipLoss, and AdamW built and stepped as open_clip_train builds them (main.py's two
decay groups, train.py's step: zero_grad, forward, loss, backward, clip_grad_norm_ when clipping,
step, logit-scale clamp), clipping like ours (train.grad_clip; FLIP's default 0: neither clips).

Same architecture on both sides: vit_b16 towers (ViT-B/16 image, 12x512 text), 112 px (49
patches), batch 32, text length 32, our vocabulary (30523), fp32, CPU. open_clip is set up as
close to FLIP as its config allows: bidirectional text with first-token pooling, fixed sin-cos
image positions, no pre-LayerNorm, average pooling. The two engines alternate (order flipped
every trial) at each mask ratio, step by step, so load from other jobs hits both alike.

One table per intra-op thread count, in one invocation: by default every available core (what
users train with), then one thread. With one thread the ratios use the process's CPU
time per step (on a shared machine wall time mostly measures the scheduler); with several, wall
time (what a user waits for: CPU time would add up every thread's work and spin-waiting, and
would hide an op that leaves the other cores idle). The other measure is printed beside it. The
reported ratio is the median over trials of open_clip's step time / ours (> 1: ours is faster).
Each masked row also gives FLIP's speed-up against both unmasked steps of the same table, ours
and open_clip's: a speed-up against a slow baseline of one's own would flatter it.
The process runs with the trainer's CPU host-malloc setting (train.host_malloc auto: freed memory
kept for the next step instead of trimmed and page-faulted in again; flip_scale/host_memory.py).
It is process-wide, so open_clip's step gets it too; `--host-malloc default` measures both
under glibc's own trimming instead.
`--json` prints only one JSON line (a table per thread count under "tables"; "speed_ratio" by
thread count, then by mask); `--profile MASK` instead times both engines' steps op by op at each
thread count, side by side (bench/op_times.py: by phase, then by op); `--optimizers` instead
times torch's AdamW implementations (loop, foreach, fused) on our parameters.
`--write` replaces the "## Ours vs open_clip (CPU)" section of BENCHMARKS.md with this run.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_loop import Engine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Ours vs open_clip (CPU)"


def our_engine(image_size: int, batch: int, text_length: int, host_malloc: str = "auto", device: str = "cpu",
               precision: str = "fp32", compile: bool = False, model: str = "vit_b16") -> Engine:
    """`model`: vit_b16 in every measurement; the tests use tiny."""
    return Engine([f"train.host_malloc={host_malloc}", f"model.name={model}", f"data.image_size={image_size}",
                   f"model.text_length={text_length}",
                   f"train.global_batch_size={batch}", "parallel.backend=single", f"parallel.precision={precision}",
                   f"parallel.compile={str(compile).lower()}", "parallel.activation_checkpointing=false",
                   f"train.device={device}", "model.mask_ratio=0.0"])


class OpenClipEngine:
    """open_clip's CLIP + PatchDropout + ClipLoss + AdamW, stepped as open_clip_train's train.py does."""

    def __init__(self, ours: Engine, precision: str = "fp32", compile: bool = False):
        import open_clip
        from open_clip.loss import ClipLoss

        cfg, size = ours.cfg, ours.model.size
        t = cfg.train
        vision = open_clip.CLIPVisionCfg(layers=size.vision_layers, width=size.vision_width,
                                         head_width=size.vision_width // size.vision_heads, mlp_ratio=size.mlp_ratio,
                                         patch_size=size.patch_size, image_size=size.image_size,
                                         pos_embed_type="sin_cos_2d", no_ln_pre=True, pool_type="avg")
        text = open_clip.CLIPTextCfg(context_length=size.text_length, vocab_size=size.vocab_size,
                                     width=size.text_width, heads=size.text_heads, layers=size.text_layers,
                                     mlp_ratio=size.mlp_ratio, no_causal_mask=True, pool_type="first")
        torch.manual_seed(t.seed)
        self.model = open_clip.CLIP(size.embed_dim, vision, text, output_dict=True).to(ours.device)
        self.model.train()
        # open_clip_train's --precision amp_bf16: fp32 weights, bf16 autocast; --torchcompile.
        self.autocast = (torch.autocast(ours.device.type, dtype=torch.bfloat16) if precision == "bf16"
                         else contextlib.nullcontext())
        self.forward = torch.compile(self.model) if compile else self.model
        self.loss = ClipLoss()
        # open_clip_train/main.py's optimizer, verbatim apart from names.
        exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
        named = list(self.model.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
             {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": t.weight_decay}],
            lr=1e-5, betas=(t.beta1, t.beta2), eps=t.eps)
        self.grad_clip = t.grad_clip
        self.images, self.tokens = ours.batch["images"], ours.batch["tokens"]
        self.mask_ratio = 0.0

    def set_mask_ratio(self, ratio: float) -> None:
        from open_clip.transformer import PatchDropout

        self.mask_ratio = ratio
        self.model.visual.patch_dropout = PatchDropout(ratio) if ratio > 0 else nn.Identity()

    def step(self):
        self.optimizer.zero_grad()
        with self.autocast:
            out = self.forward(self.images, self.tokens)
            losses = self.loss(**out, output_dict=True)
        total = sum(losses.values())
        total.backward()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, norm_type=2.0)
        self.optimizer.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))
        return total


def timed(step, n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per step."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        loss = step()
    float(loss.detach())
    return (time.perf_counter() - w0) / n, (time.process_time() - c0) / n


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which a Slurm or container limit sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parse_threads(spec: str) -> list[int]:
    """'all,1' -> [available cores, 1] (duplicates dropped: on one core, one table)."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part == "all":
            n = available_cores()
        else:
            try:
                n = int(part)
            except ValueError:
                raise SystemExit(f"--threads: {part!r} is neither 'all' nor a thread count") from None
            if n < 1:
                raise SystemExit(f"--threads: {n} threads; give 1 or more, or 'all'")
        if n not in out:
            out.append(n)
    return out


def timing_key(device: torch.device, threads: int) -> str:
    """What the ratios use. One thread on the CPU: the process's CPU time, the step's own work
    (on a shared machine wall time mostly measures the scheduler). Several threads: wall time,
    what a user waits for; CPU time would add up every thread's work and spin-waiting, and not
    show an op that leaves the other cores idle. On a GPU: wall time (the loss read at the end
    of each timed step waits for the device)."""
    return "cpu" if device.type == "cpu" and threads == 1 else "wall"


def measure(ours: Engine, theirs: OpenClipEngine, masks: list[float], trials: int, steps: int, warmup: int,
            log=print) -> dict:
    """One table at the current thread count: per mask, both engines' step times and ratios."""
    threads = torch.get_num_threads()
    key = timing_key(ours.device, threads)

    def set_mask(m: float) -> None:
        ours.set_mask_ratio(m)
        theirs.set_mask_ratio(m)

    times = {m: {k: [] for k in ("ours_cpu", "open_clip_cpu", "ours_wall", "open_clip_wall")} for m in masks}
    # One mask ratio at a time, as a run trains at one: warm-up steps first (first allocations,
    # and the kept heap reaching its high-water mark for these shapes), then the trials.
    for m in masks:
        set_mask(m)
        timed(ours.step, warmup)
        timed(theirs.step, warmup)
        for trial in range(trials):
            # Step by step, A B A B..., the order flipped every trial: a burst of load from other
            # jobs lands on both engines alike.
            pair = [("ours", ours.step), ("open_clip", theirs.step)]
            spent = {k: 0.0 for k in times[m]}
            for _ in range(steps):
                for name, step in (pair if trial % 2 == 0 else pair[::-1]):
                    wall, cpu = timed(step, 1)
                    spent[name + "_cpu"] += cpu
                    spent[name + "_wall"] += wall
            for name in spent:
                times[m][name].append(spent[name] / steps)
            t = {k: v[-1] for k, v in times[m].items()}
            log(f"{threads} thread(s), trial {trial + 1}/{trials} mask {m}: s/step ({key}) ours {t['ours_' + key]:.3f}, "
                f"open_clip {t['open_clip_' + key]:.3f}, ratio {t['open_clip_' + key] / t['ours_' + key]:.3f} "
                f"(cpu {t['ours_cpu']:.3f}, {t['open_clip_cpu']:.3f}; wall {t['ours_wall']:.3f}, "
                f"{t['open_clip_wall']:.3f})")
    rows = []
    for m in masks:
        tm = times[m]
        ratios = [o / u for u, o in zip(tm["ours_" + key], tm["open_clip_" + key])]
        other = "wall" if key == "cpu" else "cpu"
        other_ratios = [o / u for u, o in zip(tm["ours_" + other], tm["open_clip_" + other])]
        rows.append({"mask_ratio": m, "ours_step_s": statistics.median(tm["ours_" + key]),
                     "open_clip_step_s": statistics.median(tm["open_clip_" + key]),
                     "speed_ratio": statistics.median(ratios), "speed_ratio_min": min(ratios),
                     "speed_ratio_max": max(ratios),
                     "ours_cpu_s": statistics.median(tm["ours_cpu"]),
                     "open_clip_cpu_s": statistics.median(tm["open_clip_cpu"]),
                     "ours_wall_s": statistics.median(tm["ours_wall"]),
                     "open_clip_wall_s": statistics.median(tm["open_clip_wall"]),
                     f"{other}_speed_ratio": statistics.median(other_ratios)})
    add_speedups(rows)
    return {"threads": threads, "timing": "process CPU time" if key == "cpu" else "wall time"
            + (" (device synced)" if ours.device.type != "cpu" else ""), "rows": rows}


def add_speedups(rows: list[dict]) -> None:
    """FLIP's speed-up of each masked step, against two unmasked baselines measured in the same
    table: our own unmasked step (what the paper's Table 1a compares) and open_clip's (CLIP as
    people train it). The second is the honest one when ours is the slower of the two."""
    base = next((r for r in rows if r["mask_ratio"] == 0), None)
    for r in rows:
        r["speedup_vs_ours_unmasked"] = base["ours_step_s"] / r["ours_step_s"] if base else None
        r["speedup_vs_open_clip_unmasked"] = base["open_clip_step_s"] / r["ours_step_s"] if base else None
        r["open_clip_speedup_vs_its_unmasked"] = base["open_clip_step_s"] / r["open_clip_step_s"] if base else None


def run(masks: list[float], trials: int, steps: int, warmup: int, image_size: int, batch: int,
        text_length: int, log=print, host_malloc: str = "auto", device: str = "cpu", precision: str = "fp32",
        compile: bool = False, threads: tuple[int, ...] = (1,), model: str = "vit_b16") -> dict:
    """One table per thread count (in the order given), both engines built once and shared."""
    ours = our_engine(image_size, batch, text_length, host_malloc, device, precision, compile, model)
    theirs = OpenClipEngine(ours, precision, compile)
    params = {"ours": sum(p.numel() for p in ours.model.parameters()),
              "open_clip": sum(p.numel() for p in theirs.model.parameters())}
    log(f"parameters: ours {params['ours'] / 1e6:.1f}M, open_clip {params['open_clip'] / 1e6:.1f}M")
    tables = []
    for n in threads:
        torch.set_num_threads(n)
        tables.append(measure(ours, theirs, masks, trials, steps, warmup, log))
    return {"model": model, "image_size": image_size, "batch": batch, "text_length": text_length,
            "precision": precision, "compile": compile, "device": str(ours.device),
            "device_name": torch.cuda.get_device_name(ours.device) if ours.device.type == "cuda" else "cpu",
            "available_cores": available_cores(), "trials": trials, "steps_per_trial": steps,
            "grad_clip": ours.cfg.train.grad_clip, "host_malloc": host_malloc,
            "host_malloc_kept": ours.host_malloc_kept, "params": params, "tables": tables}


# Ops suspected of not scaling with threads: always listed in --profile.
WATCHED_OPS = ("_fused_adamw_", "_foreach_norm", "linalg_vector_norm", "_foreach_mul_", "isfinite", "gelu",
               "gelu_backward", "native_layer_norm", "native_layer_norm_backward", "argsort", "gather", "cat")


def profile(mask: float, image_size: int, batch: int, text_length: int, threads: list[int], steps: int = 3,
            rows: int = 20, model: str = "vit_b16", log=print) -> str:
    """Both engines' step at each thread count, op by op (bench/op_times.py: every aten call's
    minimum wall time over `steps` recorded steps), side by side: by phase, then by op."""
    from op_times import min_over_steps, side_by_side

    ours = our_engine(image_size, batch, text_length, model=model)
    theirs = OpenClipEngine(ours)
    ours.set_mask_ratio(mask)
    theirs.set_mask_ratio(mask)
    results = {}
    for n in sorted(threads):
        torch.set_num_threads(n)
        for name, step in (("ours", ours.step), ("open_clip", theirs.step)):
            step()  # first allocations at this thread count
            results[(name, n)] = min_over_steps(step, steps)
            log(f"profiled {name} at {n} thread(s)")
    return (f"mask {mask}, {model} at {image_size} px, batch {batch}; seconds = sum over the step's aten calls of "
            f"each call's minimum wall time over {steps} steps\n\n" + side_by_side(results, "phase") + "\n\n"
            + side_by_side(results, "name", top=rows, always=WATCHED_OPS))


def optimizers(trials: int, image_size: int, text_length: int, log=print) -> str:
    """CPU time of one AdamW step over our vit_b16's parameters: torch's three implementations
    (the per-tensor loop, open_clip_train's default on CPU; foreach; fused), alternating."""
    from flip_scale.models import create_model
    from flip_scale.train.optim import param_groups

    model = create_model("vit_b16", image_size=image_size, text_length=text_length)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    kinds = {"loop (foreach=False)": {"foreach": False}, "foreach=True": {"foreach": True},
             "fused=True": {"fused": True}}
    opts = {k: torch.optim.AdamW(param_groups(model, 0.2), lr=1e-5, betas=(0.9, 0.95), **kw)
            for k, kw in kinds.items()}
    for opt in opts.values():
        opt.step()  # allocates the moments
    times = {k: [] for k in kinds}
    for trial in range(trials):
        for k in (list(kinds) if trial % 2 == 0 else list(kinds)[::-1]):
            c0 = time.process_time()
            opts[k].step()
            times[k].append(time.process_time() - c0)
        log(f"trial {trial + 1}/{trials}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()))
    n = sum(p.numel() for p in model.parameters())
    lines = [f"AdamW step over {n / 1e6:.1f}M parameters (vit_b16 at {image_size} px), CPU s, median of {trials}:",
             "", "| implementation | CPU s/step | vs fused |", "|---|---|---|"]
    fused = statistics.median(times["fused=True"])
    for k, v in times.items():
        lines.append(f"| {k} | {statistics.median(v):.3f} | {statistics.median(v) / fused:.1f}x |")
    return "\n".join(lines)


def table(result: dict) -> str:
    """One Markdown table per thread count."""
    return "\n\n".join(thread_table(t) for t in result["tables"])


def thread_table(t: dict) -> str:
    rows = t["rows"]
    unit = "CPU" if t["timing"].startswith("process CPU") else "wall"
    other = "wall" if unit == "CPU" else "cpu"
    base = rows[0]["speedup_vs_ours_unmasked"] is not None
    lines = [f"**{t['threads']} thread(s)**, {t['timing']}:", "",
             f"| mask | ours {unit} s/step | open_clip {unit} s/step | ours speed / open_clip's (median, min-max) |"
             f" {other} ratio |" + (" speed-up vs ours unmasked | vs open_clip unmasked | open_clip's own |" if base else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if base else "")]
    for r in rows:
        line = (f"| {r['mask_ratio']} | {r['ours_step_s']:.2f} | {r['open_clip_step_s']:.2f} | "
                f"**{r['speed_ratio']:.3f}x** ({r['speed_ratio_min']:.3f}-{r['speed_ratio_max']:.3f}) | "
                f"{r[other + '_speed_ratio']:.3f}x |")
        if base:
            line += (f" {r['speedup_vs_ours_unmasked']:.2f}x | {r['speedup_vs_open_clip_unmasked']:.2f}x | "
                     f"{r['open_clip_speedup_vs_its_unmasked']:.2f}x |")
        lines.append(line)
    return "\n".join(lines)


def write_section(result: dict, body: str, command: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    import open_clip

    cpu = platform.processor() or platform.machine()
    threads = " and ".join(f"{t['threads']} ({t['timing']})" for t in result["tables"])
    header = (f"{SECTION}\n\nWhat is measured: one training step of ours (`single` backend, the trainer's step) and"
              f" of open_clip {open_clip.__version__} (CLIP + PatchDropout + ClipLoss + AdamW as open_clip_train"
              f" builds them, grad clip {result.get('grad_clip', 0.0)} like ours) on the same architecture: "
              f"{result['model']} towers at {result['image_size']} px, batch {result['batch']}, text length"
              f" {result['text_length']}, {result['precision']}, one process; one table per intra-op thread count:"
              f" {threads}; alternating in one invocation, {result['trials']} trials of {result['steps_per_trial']}"
              f" steps per engine and mask, medians. Speed-ups of the masked steps are given against both"
              f" unmasked steps of the same table: ours and open_clip's.\n\n"
              f"**{os.cpu_count()}-core CPU ({cpu}, {result['available_cores']} available), no GPU**, Python"
              f" {platform.python_version()}, torch {torch.__version__},"
              f" {datetime.date.today().isoformat()}, `{command}`\n\n")
    section = header + body + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        # Up to the next heading of any level: hand-written ### notes below the table survive.
        nxt = min((i for i in (text.find("\n## ", start + len(SECTION)), text.find("\n### ", start + len(SECTION)))
                   if i != -1), default=-1)
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=float, nargs="+", default=[0.0, 0.5, 0.75])
    ap.add_argument("--trials", type=int, default=5, help="alternating rounds; ratios are medians over them")
    ap.add_argument("--steps", type=int, default=1, help="timed steps per engine, mask and trial (interleaved)")
    ap.add_argument("--warmup", type=int, default=4,
                    help="untimed steps per engine and mask before the trials (a kept heap settles in 3-4)")
    ap.add_argument("--host-malloc", choices=["auto", "default"], default="auto",
                    help="train.host_malloc for the process (both engines share it): auto = the trainer's "
                         "CPU setting (freed memory kept), default = glibc's own trimming")
    ap.add_argument("--threads", default=None,
                    help="comma-separated torch intra-op thread counts, one table each; 'all' = the available "
                         "cores (default: all,1 on the CPU, all on a GPU)")
    ap.add_argument("--model", default="vit_b16", help="model size of both engines (tiny: a smoke test)")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-length", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (on a GPU: wall time, both engines on the device)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="ours: parallel.precision; open_clip: fp32 or amp_bf16 autocast as open_clip_train")
    ap.add_argument("--compile", action="store_true", help="torch.compile both (ours: parallel.compile)")
    ap.add_argument("--json", action="store_true", help="print only one JSON line with the ratios")
    ap.add_argument("--write", action="store_true", help="replace the BENCHMARKS.md section with this run")
    ap.add_argument("--optimizers", action="store_true", help="instead: time torch's AdamW variants on these parameters")
    ap.add_argument("--profile", type=float, metavar="MASK",
                    help="instead: both engines' steps op by op at each thread count, side by side")
    args = ap.parse_args(argv)
    threads = parse_threads(args.threads or ("all" if args.device.startswith("cuda") else "all,1"))
    log = (lambda *_: None) if args.json else (lambda s: print(s, flush=True))
    if args.profile is not None:
        print(profile(args.profile, args.image_size, args.batch, args.text_length, threads, max(args.trials, 2),
                      model=args.model, log=log))
        return
    torch.set_num_threads(threads[0])
    if args.optimizers:
        print(optimizers(max(args.trials, 3), args.image_size, args.text_length, log))
        return
    result = run(args.masks, args.trials, args.steps, args.warmup, args.image_size, args.batch, args.text_length, log,
                 args.host_malloc, args.device, args.precision, args.compile, threads, args.model)
    body = table(result)
    if args.json:
        # speed_ratio and timing keyed by thread count, then (speed_ratio) by mask ratio.
        print(json.dumps({**result, "speed_ratio": {str(t["threads"]): {str(r["mask_ratio"]): round(r["speed_ratio"], 4)
                                                                        for r in t["rows"]} for t in result["tables"]},
                          "timing": {str(t["threads"]): t["timing"] for t in result["tables"]}}), flush=True)
    else:
        print("\n" + body)
    if args.write:
        write_section(result, body, "python bench/bench_vs_openclip.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
