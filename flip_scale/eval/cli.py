"""`flip-scale eval RUN_DIR|CKPT --zeroshot DIR | --retrieval DIR [--json OUT] ...`

Prints progress on stderr and the result JSON as stdout's last line. Given a run directory it
also writes RUN_DIR/eval/<dataset>.json (what `flip-scale report` reads). Under torchrun or
srun each rank evaluates a slice and rank 0 writes the outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..fileio import write_text_atomic


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flip-scale eval",
                                description="Zero-shot classification or retrieval of a run or checkpoint.")
    p.add_argument("checkpoint", help="run directory, its checkpoints/ folder, or one checkpoint folder")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--zeroshot", metavar="DIR", help="classification set (CLIP_benchmark layout or ImageFolder)")
    what.add_argument("--retrieval", metavar="DIR", help="retrieval set (CLIP_benchmark layout, dataset_type retrieval)")
    p.add_argument("--site", metavar="SITE.yaml",
                   help="site file (default: $FLIP_SITE): --zeroshot/--retrieval may then name a set by its "
                        "result name (imagenet1k, flickr30k, mscoco_captions) instead of its folder")
    p.add_argument("--json", metavar="OUT.json", help="also write the result object here")
    p.add_argument("--templates", default=None,
                   help="7 or 80 (OpenAI's ImageNet templates; FLIP used 7) or a template file; "
                        "default: the dataset's templates file, else the 7")
    p.add_argument("--batch-size", type=int, default=256, help="images (and texts) per encoder call per rank")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="mask this fraction of image patches at inference (Table 1d ablation); "
                        "default: the run's model.eval_mask_ratio (0 = full image, FLIP's way)")
    p.add_argument("--mask-ensemble", action="store_true",
                   help="with a mask: average the embeddings of complementary masked views that together "
                        "cover every patch (2 at 50%%, 4 at 75%%; Table 1d's mask ensemble)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a DeepSpeed checkpoint this project did not write with DeepSpeed's own, "
                        "unrestricted loader (it can run code: only for files from a trusted source)")
    return p


def _error(msg: str) -> int:
    print(f"flip-scale eval: error: {msg}", file=sys.stderr)
    return 2


def site_eval_set(site, name: str) -> str | None:
    """The folder of the site file's eval.zeroshot / eval.retrieval set whose result name is `name`."""
    from ..data.eval_datasets import dataset_name

    eval_section = site.common.get("eval") or {}
    retrieval = eval_section.get("retrieval") or []
    sets = [eval_section.get("zeroshot"), *(retrieval if isinstance(retrieval, list) else [retrieval])]
    return next((d for d in sets if d and dataset_name(d) in (name, dataset_name(name))), None)


def _resolve_site_sets(args) -> str | None:
    """--zeroshot/--retrieval NAME (not a folder) -> the site file's folder of that name."""
    from ..config import ConfigError, load_site, site_path

    path = site_path(args.site)
    data = args.zeroshot or args.retrieval
    if not path or os.path.isdir(data):
        return None
    try:
        site = load_site(path)
    except ConfigError as e:
        return str(e)
    found = site_eval_set(site, data)
    if found is None:
        return f"{data!r} is neither a dataset directory nor an eval set of site file {site.path}"
    if args.zeroshot:
        args.zeroshot = found
    else:
        args.retrieval = found
    return None


def _check_inputs(args) -> str | None:
    """One clear line for bad input, before loading anything."""
    from ..checkpoint import resolve_checkpoint
    from ..data.eval_datasets import missing_shards

    problem = _resolve_site_sets(args)
    if problem:
        return problem
    data = args.zeroshot or args.retrieval
    if not os.path.isdir(data):
        return f"dataset directory {data!r} does not exist"
    if args.mask_ratio is not None and not 0.0 <= args.mask_ratio < 1.0:
        return f"--mask-ratio must be in [0, 1), got {args.mask_ratio}"
    if args.batch_size <= 0:
        return f"--batch-size must be positive, got {args.batch_size}"
    if args.templates not in (None, "7", "80") and not os.path.isfile(args.templates):
        return f"--templates must be 7, 80 or a template file; {args.templates!r} is none of these"
    try:
        resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as e:
        return str(e)
    missing = missing_shards(data)
    if missing:
        return f"evaluation set {data}: {len(missing)} shard(s) listed by test/nshards.txt are missing, first: {missing[0]}"
    return None


def _variant(args, mask: float, recipe_mask: float) -> str:
    """'' for the run's standard evaluation; else a file-name-safe tag of what differs."""
    parts = []
    if args.templates is not None:
        parts.append(f"templates{Path(args.templates).stem if os.path.isfile(args.templates) else args.templates}")
    if args.mask_ratio is not None and mask != recipe_mask:
        parts.append(f"mask{mask:g}")
    if args.mask_ensemble and mask:
        parts.append("ensemble")
    return "_".join(parts)


def _recipe_mask_ratio(checkpoint: str) -> float:
    """The run's own model.eval_mask_ratio (0 = full image, FLIP's way)."""
    import yaml

    from ..checkpoint import resolve_checkpoint
    from ..run_dir import run_dir_of_checkpoint

    config = run_dir_of_checkpoint(resolve_checkpoint(checkpoint)).config
    data = yaml.safe_load(config.read_text()) if config.is_file() else {}
    return float((data.get("model") or {}).get("eval_mask_ratio", 0.0) or 0.0)


def _provenance(ckpt: Path) -> dict:
    """Which checkpoint was evaluated, and at how many samples seen (for accuracy-vs-samples curves)."""
    from ..checkpoint import read_meta

    meta = read_meta(ckpt)
    return {"checkpoint": str(ckpt), "step": meta.get("step"), "samples_seen": meta.get("samples_seen")}


def main_eval(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_inputs(args)
    if problem:
        return _error(problem)
    recipe_mask = _recipe_mask_ratio(args.checkpoint)  # read once: the mask and the result's name use it
    mask = args.mask_ratio if args.mask_ratio is not None else recipe_mask
    if args.mask_ensemble and not mask:
        return _error("--mask-ensemble needs a mask: give --mask-ratio above 0 (the run's eval_mask_ratio is 0)")

    import torch

    from ..distributed.env import cleanup, detect_env, init_distributed, select_device
    from ..inference import load_inference
    from ..safe_load import trust_checkpoints
    from .common import ensemble_views
    from .retrieval import evaluate_retrieval
    from .zeroshot import evaluate_zeroshot

    trust_checkpoints(args.trust_checkpoint)
    denv = detect_env()
    try:
        device = select_device(args.device, denv)
    except RuntimeError as e:
        return _error(str(e).replace("train.device", "--device"))
    init_distributed(denv, device)
    finished = False
    try:
        try:
            loaded = load_inference(args.checkpoint, device=device)
        except (ValueError, FileNotFoundError) as e:  # unsafe, unloadable, or not fitting the run's model
            return _error(str(e).splitlines()[0])
        model, tokenizer, transform = loaded.model, loaded.tokenizer, loaded.transform
        torch.manual_seed(0)  # masks at inference (if any) are drawn from torch's global RNG
        common = dict(rank=denv.rank, world_size=denv.world_size, batch_size=args.batch_size,
                      progress=not args.no_progress, image_mask_ratio=mask,
                      image_mask_ensemble=bool(args.mask_ensemble and mask))
        try:
            if args.zeroshot:
                result = evaluate_zeroshot(model, tokenizer, transform, args.zeroshot, device,
                                           templates=args.templates, **common)
            else:
                result = evaluate_retrieval(model, tokenizer, transform, args.retrieval, device, **common)
        except ValueError as e:
            return _error(str(e).splitlines()[0])
        if not result.get("n"):
            # acc1 = 0.0 over nothing is not a result: never let it replace a good eval/<name>.json.
            return _error(f"no sample of {args.zeroshot or args.retrieval} could be read (every shard unreadable "
                          f"or empty; see the warnings above); nothing written")
        result.update(_provenance(loaded.checkpoint))
        if mask:
            result["image_mask_ratio"] = mask
            if args.mask_ensemble:
                result["image_mask_views"] = ensemble_views(model.visual.num_patches, mask)
        variant = _variant(args, mask, recipe_mask)
        if variant:
            result["variant"] = variant
        result["world_size"] = denv.world_size
        if denv.is_main:
            _write_outputs(result, args)
            print(json.dumps(result), flush=True)
        finished = True
        return 0
    finally:
        cleanup(synchronize=finished)


def _write_outputs(result: dict, args) -> None:
    from ..run_dir import RunDir

    text = json.dumps(result, indent=1) + "\n"
    targets = [Path(args.json)] if args.json else []
    run_dir = RunDir(args.checkpoint)
    if run_dir.config.is_file():  # a run directory: keep results with the run
        # An ablation setting (other templates, a mask) gets its own file: eval/<dataset>.json
        # stays the run's standard result, the one reports use.
        suffix = f"__{result['variant']}" if result.get("variant") else ""
        targets.append(run_dir.eval_result(f"{result['dataset']}{suffix}"))
    for path in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        print(f"wrote {path}", file=sys.stderr)
