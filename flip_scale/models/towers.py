"""Image and text towers built from timm's transformer Block.

Attention runs through timm's Attention, which calls torch's scaled_dot_product_attention
(fused flash / memory-efficient kernels on GPUs, the math kernel on CPU).
"""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .masking import random_masking
from .pos_embed import sincos_2d

# Flax's LayerNorm epsilon, as in the authors' JAX code.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)

IMAGE_POOLS = ("mean_all", "mean_patches", "cls")


def _blocks(depth: int, width: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(
        Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)
    )


class VisionTower(nn.Module):
    """Plain ViT: patch embed, fixed sin-cos positions, optional masking, cls, blocks, norm, pool."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 embed_dim: int, mlp_ratio: float = 4.0, image_pool: str = "mean_all"):
        super().__init__()
        if image_pool not in IMAGE_POOLS:
            raise ValueError(f"image_pool must be one of {IMAGE_POOLS}, got {image_pool!r}")
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.image_pool = image_pool
        self.patch_embed = PatchEmbed(image_size, patch_size, 3, width)
        self.grid_size = image_size // patch_size
        # Fixed, not trained (FLIP/MAE). A buffer, so it is saved with the weights but never decayed.
        self.register_buffer("pos_embed", sincos_2d(width, self.grid_size).unsqueeze(0), persistent=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = _blocks(layers, width, heads, mlp_ratio)
        self.norm = LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        x = self.patch_embed(images) + self.pos_embed.to(images.dtype)
        # No LayerNorm before the blocks. Mask after the position embedding, before the cls
        # token, so the encoder only ever runs on kept tokens (where FLIP's saving comes from).
        if mask_ratio > 0:
            x, _ = random_masking(x, mask_ratio, noise)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.image_pool == "mean_all":  # FLIP: average of all tokens, cls included
            x = x.mean(dim=1)
        elif self.image_pool == "mean_patches":
            x = x[:, 1:].mean(dim=1)
        else:
            x = x[:, 0]
        return self.proj(x)


class TextTower(nn.Module):
    """Bidirectional transformer, learned positions, no padding mask, first-token feature."""

    def __init__(self, vocab_size: int, text_length: int, width: int, layers: int, heads: int,
                 embed_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.text_length = text_length
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, text_length, width))
        self.blocks = _blocks(layers, width, heads, mlp_ratio)
        self.norm = LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor):
        if tokens.shape[1] != self.text_length:
            raise ValueError(f"text has {tokens.shape[1]} tokens, the model expects {self.text_length}")
        x = self.token_embed(tokens) + self.pos_embed
        for block in self.blocks:
            x = block(x)  # no attention mask: FLIP attends to padding too
        x = self.norm(x)
        return self.proj(x[:, 0])


def init_weights(module: nn.Module) -> None:
    """FLIP init: xavier-uniform linear weights, zero biases; pos/cls/token embeddings N(0, 0.02)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        elif isinstance(m, PatchEmbed):
            # MAE: treat the conv as a linear layer over the flattened patch.
            w = m.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(m.proj.bias)
        if isinstance(m, VisionTower):
            nn.init.normal_(m.cls_token, std=0.02)
        if isinstance(m, TextTower):
            nn.init.normal_(m.pos_embed, std=0.02)


LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
