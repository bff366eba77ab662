"""Forward FLOPs per sample, matmuls only (FLIP_FACTS.md "Compute per sample").

Per transformer layer over N tokens of width d: 2 x (12 d^2 N + 2 N^2 d) (QKV + output + MLP
at ratio 4, plus the two attention products). The patch embedding runs on every patch: FLIP
embeds first and masks after. Training costs about 3x the forward, 4x with full activation
recomputation. The planner, MFU and reports all read these functions.
"""
from __future__ import annotations

from .masking import num_kept, num_text_kept
from .sizes import ModelSize, get_size


def transformer_flops(layers: int, width: int, tokens: int, mlp_ratio: float = 4.0) -> float:
    d, n = width, tokens
    per_layer = 2 * ((4 + 2 * mlp_ratio) * d * d * n + 2 * n * n * d)
    return layers * per_layer


def image_tokens(size: ModelSize, mask_ratio: float) -> int:
    """Tokens the image encoder runs on: kept patches plus the cls token."""
    return num_kept(size.num_patches, mask_ratio) + 1


def image_flops(size: ModelSize | str, mask_ratio: float = 0.0) -> float:
    size = get_size(size) if isinstance(size, str) else size
    patch_dim = 3 * size.patch_size ** 2
    embed = 2 * size.num_patches * patch_dim * size.vision_width
    blocks = transformer_flops(size.vision_layers, size.vision_width, image_tokens(size, mask_ratio), size.mlp_ratio)
    proj = 2 * size.vision_width * size.embed_dim
    return embed + blocks + proj


def text_flops(size: ModelSize | str, text_length: int | None = None, text_mask_ratio: float = 0.0) -> float:
    """Text tower forward FLOPs; with text masking (Table 1c) it runs on the kept tokens only."""
    size = get_size(size) if isinstance(size, str) else size
    n = num_text_kept(size.text_length if text_length is None else text_length, text_mask_ratio)
    return transformer_flops(size.text_layers, size.text_width, n, size.mlp_ratio) + 2 * size.text_width * size.embed_dim


def flops_per_sample(size: ModelSize | str, mask_ratio: float = 0.0, text_length: int | None = None,
                     text_mask_ratio: float = 0.0) -> dict:
    """Forward FLOPs of one (image, caption) pair: {'image', 'text', 'total'}."""
    size = get_size(size) if isinstance(size, str) else size
    img, txt = image_flops(size, mask_ratio), text_flops(size, text_length, text_mask_ratio)
    return {"image": img, "text": txt, "total": img + txt}


def train_flops_per_sample(size: ModelSize | str, mask_ratio: float = 0.0, text_length: int | None = None,
                           activation_checkpointing: bool = False, text_mask_ratio: float = 0.0) -> float:
    """Model FLOPs of one training sample: forward + backward (2x), plus a recomputed forward
    when activations are checkpointed (hardware FLOPs; MFU counts the 3x model FLOPs)."""
    mult = 4.0 if activation_checkpointing else 3.0
    return mult * flops_per_sample(size, mask_ratio, text_length, text_mask_ratio)["total"]
