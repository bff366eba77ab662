"""Symmetric InfoNCE over the global batch, computed in fp32.

Distributed form (open_clip's ClipLoss with local_loss=True, gather_with_grad=True): each rank
scores its local rows against the features of every rank, all-gathered WITH gradient, so the
negatives are the whole global batch. Rank r's labels are offset by r * local_batch. Each rank's
loss is the mean over its own rows; averaging gradients over ranks (DDP / FSDP / ZeRO reduce)
then gives exactly the gradient of the single-process loss over the global batch.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.nn.functional import all_gather as all_gather_with_grad


def _gather(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(all_gather_with_grad(x.contiguous()), dim=0)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Loss of this rank's rows; features are [B_local, D], L2-normalised; logit_scale is exp'd."""
    # fp32 regardless of autocast: the softmax over up to 64k logits needs the range.
    img, txt = image_features.float(), text_features.float()
    scale = logit_scale.float().reshape(())
    all_img, all_txt = _gather(img), _gather(txt)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    logits_per_image = scale * img @ all_txt.T
    logits_per_text = scale * txt @ all_img.T
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def total_loss(outputs: dict) -> tuple[torch.Tensor, dict]:
    """The training objective of a model's named outputs: the contrastive loss plus every
    `*_loss` entry (auxiliary heads). Returns (total, {name: term}) with each term in fp32."""
    terms = {"contrastive_loss": clip_loss(outputs["image_features"], outputs["text_features"],
                                           outputs["logit_scale"])}
    terms.update({k: v.float() for k, v in outputs.items() if k.endswith("_loss")})
    total = terms["contrastive_loss"]
    for name, value in terms.items():
        if name != "contrastive_loss":
            total = total + value
    return total, terms
