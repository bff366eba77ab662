"""The model size table (FLIP_FACTS.md, "Architecture details"), as data.

Like big_vision, sizes are a small table rather than one class per model: a recipe names a
row, and any field can still be overridden (`create_model("vit_b16", text_layers=6)`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

# BERT uncased WordPiece (30522) + 1, as in the authors' release.
PAPER_VOCAB_SIZE = 30523


@dataclass(frozen=True)
class ModelSize:
    """Shape of one FLIP model: both towers and the shared embedding."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_layers: int
    vision_width: int
    vision_heads: int
    text_layers: int
    text_width: int
    text_heads: int
    vocab_size: int = PAPER_VOCAB_SIZE
    text_length: int = 32
    mlp_ratio: float = 4.0

    def with_overrides(self, **overrides) -> "ModelSize":
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown model override(s) {unknown}; known: {sorted(names)}")
        return replace(self, **overrides)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SIZES: dict[str, ModelSize] = {
    # Small enough to learn the synthetic shapes on a laptop CPU in a few minutes.
    "tiny": ModelSize(embed_dim=64, image_size=32, patch_size=8, vision_layers=3, vision_width=96,
                      vision_heads=4, text_layers=2, text_width=64, text_heads=4, vocab_size=1024,
                      text_length=16),
    "vit_b16": ModelSize(512, 224, 16, 12, 768, 12, 12, 512, 8),
    "vit_l16": ModelSize(768, 224, 16, 24, 1024, 16, 12, 768, 12),
    "vit_l14": ModelSize(768, 224, 14, 24, 1024, 16, 12, 768, 12),
    "vit_h14": ModelSize(1024, 224, 14, 32, 1280, 16, 24, 1024, 16),
}

# Tower parameter counts in millions from the paper's table (image, text); L/14 has none.
PAPER_PARAMS_M = {"vit_b16": (86, 53), "vit_l16": (303, 109), "vit_h14": (631, 334)}
# The table's totals column (FLIP_FACTS.md). It is not the sum of the tower columns (86 + 53 =
# 139, not 141): the towers are rounded and the totals count the heads and logit scale too.
PAPER_TOTAL_PARAMS_M = {"vit_b16": 141, "vit_l16": 414, "vit_h14": 967}


def get_size(name: str, **overrides) -> ModelSize:
    if name not in SIZES:
        raise ValueError(f"unknown model name {name!r}; choose one of {sorted(SIZES)}")
    return SIZES[name].with_overrides(**overrides)
