"""Builders shared by training, evaluation and checkpoint loading."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import Config
from ..models import FlipModel, create_model


def build_model_from_config(cfg: Config, tokenizer_vocab_size: int | None = None) -> FlipModel:
    """The recipe's model at data.image_size; the vocabulary must hold every token id."""
    overrides = {"image_size": cfg.data.image_size, "text_length": cfg.model.text_length}
    if cfg.model.vocab_size is not None:
        overrides["vocab_size"] = cfg.model.vocab_size
    m = cfg.model
    model = create_model(m.name, mask_ratio=m.mask_ratio, image_pool=m.image_pool, text_mask_ratio=m.text_mask_ratio,
                         text_mask=m.text_mask, reconstruction_weight=m.reconstruction_weight,
                         decoder_width=m.decoder_width, decoder_layers=m.decoder_layers,
                         decoder_heads=m.decoder_heads, **overrides)
    if tokenizer_vocab_size is not None and tokenizer_vocab_size > model.size.vocab_size:
        raise ValueError(f"model.vocab_size: the tokenizer has {tokenizer_vocab_size} tokens but the model's "
                         f"vocabulary holds {model.size.vocab_size}; set model.vocab_size")
    return model


def _run_copy(cfg: Config, run_dir: str | Path) -> Path | None:
    """Where the run directory keeps its own copy of the tokenizer (None for `builtin`)."""
    spec = cfg.data.tokenizer
    if spec == "builtin":
        return None
    return Path(run_dir) / ("vocab.txt" if spec.endswith(".txt") else "tokenizer.json")


def tokenizer_spec_for_run(cfg: Config, run_dir: str | Path) -> str:
    """The run's own copy when it has one, so a run directory stays self-contained."""
    copy = _run_copy(cfg, run_dir)
    return str(copy) if copy is not None and copy.is_file() else cfg.data.tokenizer


def snapshot_tokenizer(cfg: Config, run_dir: str | Path) -> None:
    copy = _run_copy(cfg, run_dir)
    if copy is not None and Path(cfg.data.tokenizer).is_file() and not copy.exists():
        shutil.copyfile(cfg.data.tokenizer, copy)


def adapt_weights(state_dict: dict, model: FlipModel) -> dict:
    """Fit pretrained weights to a model that differs only where FLIP allows it.

    - Fixed sin-cos position buffers are recomputed by the model, never loaded (their shape
      follows the image size / patch grid).
    - A different patch size (L/14 tuned from L/16 weights): the patch-embedding kernel is
      resampled with timm's `resample_patch_embed` (FlexiViT's pseudo-inverse resize).
    """
    from timm.layers import resample_patch_embed

    own = model.state_dict()
    shapes = {key: value.shape for key, value in own.items()}
    for name, param in model.named_parameters():
        if hasattr(param, "ds_shape"):  # DeepSpeed ZeRO-3 empties partitioned tensors; ds_shape is the real one
            shapes[name.replace("_checkpoint_wrapped_module.", "")] = param.ds_shape
    out = {}
    for key, value in state_dict.items():
        if key.endswith("pos_embed") and key in own and key.startswith(("visual.", "decoder.")):
            continue
        if key == "visual.patch_embed.proj.weight" and key in own and value.shape != shapes[key]:
            value = resample_patch_embed(value.float(), list(shapes[key][-2:])).to(value.dtype)
        out[key] = value
    for key in own:
        if key not in out and key.endswith("pos_embed") and key.startswith(("visual.", "decoder.")):
            out[key] = own[key]
    return out


def parallelize_and_build_optimizer(backend, model, cfg: Config) -> None:
    """torchtitan's order: wrap/shard the model, THEN build the optimizer over the parameters the
    backend now holds (sharded DTensors under FSDP), with FLIP's weight-decay groups."""
    from .optim import param_groups

    backend.parallelize(model)
    backend.build_optimizer(param_groups(backend.model, cfg.train.weight_decay))
