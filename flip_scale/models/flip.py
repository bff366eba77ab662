"""The FLIP model: two towers, bias-free projections, a learnable clamped temperature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.transforms import float_images
from .sizes import ModelSize, get_size
from .towers import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, PixelDecoder, TextTower, VisionTower, init_weights


class FlipModel(nn.Module):
    """CLIP with FLIP's image masking.

    `forward(images, tokens)` masks `mask_ratio` of the patches while training and uses the
    full image in eval mode (or when `mask_ratio=0.0` is passed). The embeddings returned are
    L2-normalised; the logit scale comes back already clamped and exponentiated.

    With `reconstruction_weight > 0` (paper Table 1f's MAE-style ablation) a small pixel decoder
    is added and forward also returns `reconstruction_loss`, already weighted (training only).
    """

    def __init__(self, size: ModelSize, mask_ratio: float = 0.0, image_pool: str = "mean_all",
                 text_mask_ratio: float = 0.0, text_mask: str = "random", reconstruction_weight: float = 0.0,
                 decoder_width: int = 512, decoder_layers: int = 8, decoder_heads: int = 16):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.size = size
        self.mask_ratio = mask_ratio
        self.visual = VisionTower(size.image_size, size.patch_size, size.vision_width, size.vision_layers,
                                  size.vision_heads, size.embed_dim, size.mlp_ratio, image_pool)
        self.text = TextTower(size.vocab_size, size.text_length, size.text_width, size.text_layers,
                              size.text_heads, size.embed_dim, size.mlp_ratio, text_mask_ratio, text_mask)
        self.reconstruction_weight = reconstruction_weight
        self.decoder = None
        if reconstruction_weight > 0:
            self.decoder = PixelDecoder(size.vision_width, decoder_width, decoder_layers, decoder_heads,
                                        size.patch_size, self.visual.grid_size)
        # Shape [1], not 0-d: FSDP2 shards parameters along dim 0, which a scalar lacks
        # (open_clip reshapes it before fully_shard for the same reason).
        self.logit_scale = nn.Parameter(torch.full((1,), LOGIT_SCALE_INIT))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        with torch.no_grad():
            self.logit_scale.fill_(LOGIT_SCALE_INIT)

    def transformer_blocks(self) -> list[nn.Module]:
        """Every transformer block of both towers: the unit of checkpointing, compile and sharding."""
        extra = list(self.decoder.blocks) if self.decoder is not None else []
        return list(self.visual.blocks) + list(self.text.blocks) + extra

    def block_lists(self) -> list[nn.ModuleList]:
        """The ModuleLists holding those blocks (for wrappers that replace blocks in place)."""
        lists = [self.visual.blocks, self.text.blocks]
        return lists + ([self.decoder.blocks] if self.decoder is not None else [])

    def encode_image(self, images: torch.Tensor, mask_ratio: float | None = None,
                     noise: torch.Tensor | None = None, normalize: bool = True) -> torch.Tensor:
        images = float_images(images)  # the loader ships uint8; normalised here, on the device
        ratio = 0.0 if mask_ratio is None else mask_ratio
        x = self.visual(images, ratio, noise)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
        x = self.text(tokens, noise)
        return F.normalize(x, dim=-1) if normalize else x

    # A backend whose parameters are low-precision working copies of fp32 masters (DeepSpeed
    # bf16) sets this to a function returning the logit scale's fp32 master value.
    logit_scale_master = None

    def logit_scale_fp32(self) -> torch.Tensor:
        """ln(temperature) in fp32, as the loss must see it: in bf16 its spacing near ln 100 is
        2^-5, i.e. steps of 3% in exp and a ceiling of 99.0 instead of 100. The parameter where it
        is fp32 (single, ddp; fsdp keeps it out of its bf16 cast); else the fp32 master's value,
        with the gradient flowing to the working copy (p + (master - p) is exactly the master:
        the two are within a factor of 2, so the difference is exact in fp32)."""
        p = self.logit_scale.float()
        master = self.logit_scale_master() if self.logit_scale_master is not None else None
        if master is None:
            return p
        return p + (master.detach().to(p.device, torch.float32).reshape(p.shape) - p.detach())

    def clamp_logit_scale(self) -> None:
        """FLIP clips the temperature to [0, ln 100]; call after every optimizer step."""
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor | None = None,
                mask_ratio: float | None = None, text_noise: torch.Tensor | None = None) -> dict:
        """Named outputs (open_clip's dict): `image_features`, `text_features` (L2-normalised),
        `logit_scale` (clamped, exponentiated) and any auxiliary `*_loss` scalars, which the
        training step adds to the contrastive loss, so an ablation head needs no branch there."""
        images = float_images(images)  # uint8 from the loader; the decoder's targets need floats too
        if mask_ratio is None:
            mask_ratio = self.mask_ratio if self.training else 0.0
        out = {"logit_scale": self.logit_scale_fp32().clamp(0.0, LOGIT_SCALE_MAX).exp(),
               "text_features": self.encode_text(tokens, noise=text_noise)}
        if self.decoder is None:
            out["image_features"] = self.encode_image(images, mask_ratio, noise)
            return out
        tokens_out, ids_keep = self.visual.forward_tokens(images, mask_ratio, noise)
        out["image_features"] = F.normalize(self.visual.proj(self.visual.pool(tokens_out)), dim=-1)
        if ids_keep is not None and self.training:
            out["reconstruction_loss"] = self.reconstruction_weight * self.decoder.loss(tokens_out, ids_keep, images)
        return out


MODEL_OPTIONS = ("text_mask_ratio", "text_mask", "reconstruction_weight", "decoder_width", "decoder_layers",
                 "decoder_heads")


def create_model(name: str = "tiny", mask_ratio: float = 0.0, image_pool: str = "mean_all",
                 **overrides) -> FlipModel:
    """Build a randomly initialised FLIP model by size name (tiny, vit_b16, vit_l16, vit_l14, vit_h14).

    Any ModelSize field can be overridden, e.g. `image_size=64`, `vocab_size=1000`, and so can the
    ablation options `text_mask_ratio`, `text_mask`, `reconstruction_weight`, `decoder_*`.
    """
    options = {k: overrides.pop(k) for k in list(overrides) if k in MODEL_OPTIONS}
    return FlipModel(get_size(name, **overrides), mask_ratio=mask_ratio, image_pool=image_pool, **options)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
