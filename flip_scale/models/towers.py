"""Image and text towers built from timm's transformer Block.

Attention runs through timm's Attention, which calls torch's scaled_dot_product_attention
(fused flash / memory-efficient kernels on GPUs; on the CPU, torch's flash kernel for CPU,
`_scaled_dot_product_flash_attention_for_cpu`, as the profiler shows in training).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from .masking import num_text_kept, random_masking
from .pos_embed import sincos_2d

# Flax's LayerNorm epsilon, as in the authors' JAX code.
LayerNorm = partial(nn.LayerNorm, eps=1e-6)

# Flax's nn.gelu defaults to approximate=True (the tanh form); the authors' MlpBlock calls it
# without arguments (models_flip.py, MlpBlock: `x = nn.gelu(x)`), so every block uses tanh GELU.
GELU = partial(nn.GELU, approximate="tanh")

IMAGE_POOLS = ("mean_all", "mean_patches", "cls")


def _blocks(depth: int, width: int, heads: int, mlp_ratio: float, last: type = Block) -> nn.ModuleList:
    return nn.ModuleList(
        (last if i == depth - 1 else Block)(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=LayerNorm,
                                            act_layer=GELU)
        for i in range(depth)
    )


class FirstTokenBlock(Block):
    """timm's Block computing only position 0's output: the text tower's last block, whose
    other outputs the first-token feature never reads.

    Keys and values still come from every token (one qkv matmul over all of them, as in Block);
    the attention, its output projection and the MLP run for the first token alone. That skips
    about three quarters of the block's matmuls (at 32 tokens, 1 - (3 + 9/32) / 12), with the
    same maths for the output that is used: `block(x) == Block.forward(block, x)[:, :1]` up to
    float rounding (tests/test_model.py). Same parameters and state-dict keys as Block, and
    every submodule is still called (ZeRO-3's per-module gathering, FSDP units and activation
    checkpointing wrap it as they wrap Block).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.attn, "gate", None) is not None:
            raise ValueError("FirstTokenBlock does not implement gated attention")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("FirstTokenBlock: the text tower attends without a mask")
        attn = self.attn
        B, N, _ = x.shape
        qkv = attn.qkv(self.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q[:, :, :1]), attn.k_norm(k)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if self.training else 0.0)
        o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(B, 1, attn.attn_dim))))
        x = x[:, :1] + self.drop_path1(self.ls1(o))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


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

    def forward_tokens(self, images: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        """Normalised encoder tokens [B, 1 + K, D] (cls first) and the kept patch indices [B, K] (None = all)."""
        x = self.patch_embed(images) + self.pos_embed.to(images.dtype)
        # No LayerNorm before the blocks. Mask after the position embedding, before the cls
        # token, so the encoder only ever runs on kept tokens (where FLIP's saving comes from).
        ids_keep = None
        if mask_ratio > 0:
            x, ids_keep = random_masking(x, mask_ratio, noise)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x), ids_keep

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_pool == "mean_all":  # FLIP: average of all tokens, cls included
            return x.mean(dim=1)
        if self.image_pool == "mean_patches":
            return x[:, 1:].mean(dim=1)
        return x[:, 0]

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.0, noise: torch.Tensor | None = None):
        x, _ = self.forward_tokens(images, mask_ratio, noise)
        return self.proj(self.pool(x))


class TextTower(nn.Module):
    """Bidirectional transformer, learned positions, no padding mask, first-token feature.

    The feature is the final-norm output at position 0 whatever data.text_cls_token says: the
    caption's first word piece (the authors' tokens, `z_txt = x_txt[:, 0, :]` in models_flip.py)
    or [CLS].

    Optional text masking (paper Table 1c, off by default; not in the authors' release): in
    training keep int(L * (1 - ratio)) tokens, the first (whose output is the feature)
    always, the rest chosen at random (`random`) or dropping padding before real tokens
    (`padding_first`). Like image masking, it happens after the position embedding.
    """

    def __init__(self, vocab_size: int, text_length: int, width: int, layers: int, heads: int,
                 embed_dim: int, mlp_ratio: float = 4.0, mask_ratio: float = 0.0, mask_mode: str = "random",
                 pad_id: int = 0):
        super().__init__()
        if mask_mode not in ("random", "padding_first"):
            raise ValueError(f"text mask mode must be random or padding_first, got {mask_mode!r}")
        self.text_length = text_length
        self.mask_ratio, self.mask_mode, self.pad_id = mask_ratio, mask_mode, pad_id
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, text_length, width))
        # The feature reads position 0 only: the last block computes nothing else.
        self.blocks = _blocks(layers, width, heads, mlp_ratio, last=FirstTokenBlock)
        self.norm = LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def _mask(self, x: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """noise: [B, L-1] uniform noise for the tokens after the first (the trainer derives it
        from (seed, sample index) like the image masks); None draws from torch's global RNG."""
        B, L, D = x.shape
        keep = num_text_kept(L, self.mask_ratio)
        if noise is None:
            noise = torch.rand(B, L - 1, device=x.device)
        elif noise.shape != (B, L - 1):
            raise ValueError(f"text masking noise has shape {tuple(noise.shape)}, expected {(B, L - 1)}")
        if self.mask_mode == "padding_first":
            noise = noise + (tokens[:, 1:] == self.pad_id).float()  # real tokens sort before padding
        ids = torch.argsort(noise, dim=1)[:, : keep - 1] + 1
        ids = torch.cat([torch.zeros(B, 1, dtype=ids.dtype, device=ids.device), ids.sort(dim=1).values], dim=1)
        return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, D))

    def forward(self, tokens: torch.Tensor, noise: torch.Tensor | None = None):
        if tokens.shape[1] != self.text_length:
            raise ValueError(f"text has {tokens.shape[1]} tokens, the model expects {self.text_length}")
        x = self.token_embed(tokens) + self.pos_embed
        if self.training and self.mask_ratio > 0:
            x = self._mask(x, tokens, noise)
        for block in self.blocks:
            x = block(x)  # no attention mask: FLIP attends to padding too
        x = self.norm(x)  # [B, 1, width]: the last block returns the first token only
        return self.proj(x[:, 0])


class PixelDecoder(nn.Module):
    """MAE-style decoder for the optional pixel-reconstruction loss (paper Table 1f; off by default).

    Encoder tokens -> decoder width, mask tokens fill the dropped positions, fixed sin-cos
    positions, a few blocks, a linear head to normalised patch pixels; MSE on masked patches.
    """

    def __init__(self, encoder_width: int, width: int, layers: int, heads: int, patch_size: int, grid_size: int):
        super().__init__()
        self.patch_size, self.grid_size = patch_size, grid_size
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", sincos_2d(width, grid_size).unsqueeze(0), persistent=True)
        self.blocks = _blocks(layers, width, heads, 4.0)
        self.norm = LayerNorm(width)
        self.head = nn.Linear(width, patch_size * patch_size * 3)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        p, g = self.patch_size, self.grid_size
        x = images.reshape(images.shape[0], 3, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(images.shape[0], g * g, p * p * 3)

    def loss(self, tokens: torch.Tensor, ids_keep: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        B, N = images.shape[0], self.grid_size ** 2
        x = self.embed(tokens[:, 1:])  # drop cls
        full = self.mask_token.to(x.dtype).expand(B, N, -1).clone()
        full.scatter_(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        full = full + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            full = block(full)
        pred = self.head(self.norm(full)).float()
        target = self.patchify(images.float())
        # MAE's norm_pix_loss: per-patch normalised pixels.
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
        masked = torch.ones(B, N, device=images.device)
        masked.scatter_(1, ids_keep, 0.0)
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * masked).sum() / masked.sum().clamp(min=1)


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
        if isinstance(m, PixelDecoder):
            nn.init.normal_(m.mask_token, std=0.02)


LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
