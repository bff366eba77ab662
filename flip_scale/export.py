"""`flip-scale export RUN_DIR|CKPT --format open_clip --output DIR`: OpenCLIP config + weights.

DIR gets
    open_clip_config.json           {"model_cfg": ..., "preprocess_cfg": ...} (open_clip's hub format)
    open_clip_model.safetensors     the state dict of open_clip.CLIP(**model_cfg)
    tokenizer.json / vocab.txt      our tokenizer (when the run used a file), see docs/model.md
so `open_clip.create_model("local-dir:DIR")` or `open_clip.CLIP(**model_cfg)` + load_state_dict
(strict) rebuild the model. The conversion is exact for image_pool mean_patches (open_clip
'avg') and cls ('tok'); mean_all has no open_clip equivalent (see MEAN_ALL_NOTE).

Key map (timm Block -> open_clip ResidualAttentionBlock): norm1/norm2 -> ln_1/ln_2, the fused
qkv Linear -> nn.MultiheadAttention's in_proj_weight/in_proj_bias (same [3D, D] q,k,v layout),
attn.proj -> attn.out_proj, mlp.fc1/fc2 -> mlp.c_fc/c_proj. Projections are Linear weights
[E, D] here and bare matrices [D, E] used as x @ P there, hence the transposes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .data.transforms import MEAN, STD
from .models.towers import GELU, LayerNorm

POOL_TYPES = {"mean_patches": "avg", "cls": "tok", "mean_all": "avg"}
MEAN_ALL_NOTE = ("image_pool mean_all (FLIP's) averages all tokens including cls; open_clip's 'avg' pool "
                 "skips the cls token, so the exported image tower averages the patch tokens only and its "
                 "embeddings are close to, not equal to, ours")
# Modules that only training uses (the MAE reconstruction decoder of the Table 1f ablation).
TRAINING_ONLY_PREFIXES = ("decoder.",)
_BLOCK_KEYS = {"norm1": "ln_1", "norm2": "ln_2", "attn.qkv.weight": "attn.in_proj_weight",
               "attn.qkv.bias": "attn.in_proj_bias", "attn.proj": "attn.out_proj",
               "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_config(model) -> dict:
    """model_cfg for open_clip.CLIP(**cfg) describing a FlipModel."""
    s, pool = model.size, model.visual.image_pool
    eps = {"eps": LayerNorm.keywords["eps"]}  # FLIP/Flax LayerNorm epsilon 1e-6, not torch's 1e-5
    # Our blocks use flax's tanh GELU; open_clip's nn.GELU takes the same keyword via act_kwargs.
    act = dict(GELU.keywords)
    vision = {"image_size": s.image_size, "layers": s.vision_layers, "width": s.vision_width,
              "head_width": s.vision_width // s.vision_heads, "patch_size": s.patch_size,
              "mlp_ratio": s.mlp_ratio, "no_ln_pre": True, "pos_embed_type": "sin_cos_2d",
              "pool_type": POOL_TYPES[pool], "final_ln_after_pool": False, "norm_kwargs": eps,
              "act_kwargs": act}
    text = {"context_length": s.text_length, "vocab_size": s.vocab_size, "width": s.text_width,
            "heads": s.text_heads, "layers": s.text_layers, "mlp_ratio": s.mlp_ratio,
            "no_causal_mask": True, "pool_type": "first", "proj_bias": False, "pad_id": 0,
            "final_ln_after_pool": False, "norm_kwargs": eps, "act_kwargs": act}
    return {"embed_dim": s.embed_dim, "quick_gelu": False, "vision_cfg": vision, "text_cfg": text}


def preprocess_config(model) -> dict:
    return {"size": model.size.image_size, "mean": list(MEAN), "std": list(STD),
            "interpolation": "bicubic", "resize_mode": "shortest"}


def _blocks(sd: dict, src: str, dst: str) -> dict:
    out = {}
    for key, value in sd.items():
        if not key.startswith(src):
            continue
        index, rest = key[len(src):].split(".", 1)
        for ours, theirs in _BLOCK_KEYS.items():
            if rest.startswith(ours):
                rest = theirs + rest[len(ours):]
                break
        else:
            raise KeyError(f"no open_clip name for {key}")
        out[f"{dst}{index}.{rest}"] = value
    return out


def convert_state_dict(sd: dict) -> dict:
    """FlipModel state dict -> open_clip.CLIP state dict (every tensor accounted for)."""
    sd = {k: v.detach().float().cpu() for k, v in sd.items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    out = _blocks(sd, "visual.blocks.", "visual.transformer.resblocks.")
    out.update(_blocks(sd, "text.blocks.", "transformer.resblocks."))
    width = sd["visual.cls_token"].shape[-1]
    # open_clip's conv1 has no bias and adds positional_embedding to [cls, patches]. The patch
    # bias is added to every patch token, so it folds exactly into the patch position rows; FLIP's
    # cls token gets no position, so row 0 is zero.
    patch_pos = sd["visual.pos_embed"].reshape(-1, width) + sd["visual.patch_embed.proj.bias"]
    out.update({
        "visual.conv1.weight": sd["visual.patch_embed.proj.weight"],
        "visual.class_embedding": sd["visual.cls_token"].reshape(width),
        "visual.positional_embedding": torch.cat([torch.zeros(1, width), patch_pos]),
        "visual.ln_post.weight": sd["visual.norm.weight"], "visual.ln_post.bias": sd["visual.norm.bias"],
        "visual.proj": sd["visual.proj.weight"].T.contiguous(),
        "token_embedding.weight": sd["text.token_embed.weight"],
        "positional_embedding": sd["text.pos_embed"].reshape(sd["text.pos_embed"].shape[-2], -1),
        "ln_final.weight": sd["text.norm.weight"], "ln_final.bias": sd["text.norm.bias"],
        "text_projection": sd["text.proj.weight"].T.contiguous(),
        "logit_scale": sd["logit_scale"].reshape(()),  # open_clip keeps a 0-d scale
    })
    used = {k for k in sd if k.startswith(("visual.blocks.", "text.blocks."))} | {
        "visual.cls_token", "visual.pos_embed", "visual.patch_embed.proj.weight", "visual.patch_embed.proj.bias",
        "visual.norm.weight", "visual.norm.bias", "visual.proj.weight", "text.token_embed.weight",
        "text.pos_embed", "text.norm.weight", "text.norm.bias", "text.proj.weight", "logit_scale"}
    left = sorted(set(sd) - used)
    if left:  # a model change this converter does not know about must not export silently wrong
        raise KeyError(f"weights with no open_clip equivalent: {left}")
    return out


def build_open_clip(model):
    """(open_clip.CLIP with our weights loaded strictly, model_cfg)."""
    import open_clip

    cfg = open_clip_config(model)
    oc = open_clip.CLIP(**cfg)
    oc.load_state_dict(convert_state_dict(model.state_dict()), strict=True)
    return oc.eval(), cfg


@torch.no_grad()
def embedding_agreement(model, oc, batch: int = 8, seed: int = 0) -> dict:
    """Cosine similarity of our and open_clip's embeddings on the same random inputs (min over the batch)."""
    g = torch.Generator().manual_seed(seed)
    s = model.size
    images = torch.randn(batch, 3, s.image_size, s.image_size, generator=g)
    tokens = torch.randint(5, s.vocab_size, (batch, s.text_length), generator=g)
    was_training = model.training
    model.eval()
    img = F.cosine_similarity(model.encode_image(images), oc.encode_image(images, normalize=True)).min()
    txt = F.cosine_similarity(model.encode_text(tokens), oc.encode_text(tokens, normalize=True)).min()
    model.train(was_training)
    return {"image_cosine_min": float(img), "text_cosine_min": float(txt)}


def export_open_clip(model, output: str | os.PathLike, tokenizer_file: str | None = None, log=print) -> dict:
    """Write DIR/open_clip_config.json + open_clip_model.safetensors; return the measured agreement."""
    from safetensors.torch import save_file

    oc, cfg = build_open_clip(model)
    agreement = embedding_agreement(model, oc)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    pool = model.visual.image_pool
    config = {"model_cfg": cfg, "preprocess_cfg": preprocess_config(model),
              "flip_scale": {"image_pool": pool, "exact": pool != "mean_all", **agreement}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=1) + "\n")
    save_file({k: v.contiguous() for k, v in oc.state_dict().items()}, str(out / "open_clip_model.safetensors"))
    if tokenizer_file:
        shutil.copyfile(tokenizer_file, out / Path(tokenizer_file).name)
    log(f"image embedding cosine (min over random inputs): {agreement['image_cosine_min']:.6f}")
    log(f"text embedding cosine (min over random inputs): {agreement['text_cosine_min']:.6f}")
    if pool == "mean_all":
        log(f"not exact: {MEAN_ALL_NOTE}")
    return agreement


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flip-scale export", description="Export a run or checkpoint to OpenCLIP.")
    p.add_argument("checkpoint", help="run directory, its checkpoints/ folder, or one checkpoint folder")
    p.add_argument("--format", choices=("open_clip",), default="open_clip")
    p.add_argument("--output", required=True, help="output directory")
    return p


def main_export(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from .checkpoint import resolve_checkpoint
    from .run_dir import load_for_inference

    try:
        ckpt = resolve_checkpoint(args.checkpoint)
    except FileNotFoundError as e:
        print(f"flip-scale export: error: {e}", file=sys.stderr)
        return 2
    model, tokenizer, _ = load_for_inference(ckpt)
    run_dir = ckpt.parent.parent
    tok_file = next((str(run_dir / n) for n in ("tokenizer.json", "vocab.txt") if (run_dir / n).is_file()), None)
    agreement = export_open_clip(model, args.output, tok_file, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({"output": str(args.output), "format": args.format, "checkpoint": str(ckpt),
                      "image_pool": model.visual.image_pool, **agreement}))
    return 0
