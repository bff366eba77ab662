"""Feeding fp32 activations to a model whose weights are bf16 (DeepSpeed bf16, FSDP's bf16
compute copies) without autocast.

Only the image input and each block's input are cast. Everything between stays as the model
makes it: in particular the masking noise keeps its float64 (bf16's 8 mantissa bits would create
ties in its argsort: less random, biased masks), and so does the masked token selection.
"""
from __future__ import annotations

import torch
from torch import nn


def _cast_images(module: nn.Module, args):
    images, *rest = args
    return (images.to(module.proj.weight.dtype), *rest)


def _cast_first_arg(dtype):
    def hook(module: nn.Module, args):
        x, *rest = args
        return (x.to(dtype) if torch.is_floating_point(x) else x, *rest)
    return hook


def cast_image_input(model: nn.Module) -> None:
    """The patch embedding (a conv) needs its input in its weight's dtype (read at call time:
    under FSDP the weight is a bf16 copy only while gathered)."""
    model.visual.patch_embed.register_forward_pre_hook(_cast_images)


def cast_block_inputs(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
    """Each transformer block gets its input in `dtype` (the fp32 cls/position sums become bf16)."""
    for blocks in (model.visual.blocks, model.text.blocks):
        for block in blocks:
            block.register_forward_pre_hook(_cast_first_arg(dtype))
