"""Symmetric InfoNCE over the global batch, computed in fp32.

Distributed form (open_clip's ClipLoss with local_loss=True, gather_with_grad=True): each rank
scores its local rows against the features of every rank, all-gathered WITH gradient, so the
negatives are the whole global batch. Rank r's labels are offset by r * local_batch. Each rank's
loss is the mean over its own rows; averaging gradients over ranks (DDP / FSDP / ZeRO reduce)
then gives exactly the gradient of the single-process loss over the global batch.

Overlap (TextGatherOverlap): the model runs its text tower before its image tower, so the text
features' all-gather can be started as soon as the text tower returns and run under the image
tower's forward, instead of sitting exposed between forward and the loss. It is an async
functional collective (its result waits on first use, in the loss), with autograd: its
backward is the matching reduce-scatter.
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_with_grad():
    """Functional collectives' all-gather with autograd: its backward is a reduce-scatter (sum)
    on every backend. (torch.distributed.nn's all_gather warns on every rank, and its backward
    becomes an all-to-all plus a sum on non-NCCL groups.) torch 2.14 renamed
    all_gather_tensor_autograd to all_gather_single_autograd and deprecated the old name with a
    FutureWarning; older versions have only the old name."""
    from torch.distributed import _functional_collectives as funcol

    return getattr(funcol, "all_gather_single_autograd", None) or funcol.all_gather_tensor_autograd


def start_gather(x: torch.Tensor) -> torch.Tensor:
    """All-gather rows over the default group, asynchronously and with gradient: returns at
    once, the result waits for the collective when first used."""
    return _gather_with_grad()(x.contiguous(), 0, dist.group.WORLD)


def _gather(x: torch.Tensor) -> torch.Tensor:
    if not _distributed():
        return x
    return start_gather(x)


class TextGatherOverlap:
    """Starts the text features' all-gather from a forward hook on the text tower.

        overlap = TextGatherOverlap(model.text)        # once, after the backend wrapped the model
        with overlap.armed():                          # each training step
            out = model(images, tokens, ...)
        loss = clip_loss(*out[:3], gathered_text=overlap.take())

    Only forwards inside armed() start a gather (evaluation's encode_text calls do not). The
    tower's output is gathered in fp32 before the model's L2 normalisation, which the loss then
    applies row by row (the same function of the same rows: normalising is per row)."""

    def __init__(self, text_tower: nn.Module):
        self._armed = False
        self._pending: torch.Tensor | None = None
        self._handle = text_tower.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self._armed and self._pending is None and _distributed():
            self._pending = start_gather(output.float())

    @contextlib.contextmanager
    def armed(self):
        self._armed, self._pending = True, None
        try:
            yield self
        finally:
            self._armed = False

    def take(self) -> torch.Tensor | None:
        pending, self._pending = self._pending, None
        return pending

    def remove(self) -> None:
        self._handle.remove()


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              gathered_text: torch.Tensor | None = None) -> torch.Tensor:
    """Loss of this rank's rows; features are [B_local, D], L2-normalised; logit_scale is exp'd.
    gathered_text: the text tower's un-normalised output of every rank, gathered already
    (TextGatherOverlap); None gathers text_features here."""
    # fp32 regardless of autocast: the softmax over up to 64k logits needs the range.
    img, txt = image_features.float(), text_features.float()
    scale = logit_scale.float().reshape(())
    all_img = _gather(img)
    all_txt = _gather(txt) if gathered_text is None else F.normalize(gathered_text.float(), dim=-1)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(img.shape[0], device=img.device) + rank * img.shape[0]
    logits_per_image = scale * img @ all_txt.T
    logits_per_text = scale * txt @ all_img.T
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def total_loss(outputs: dict, gathered_text: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The training objective of a model's named outputs: the contrastive loss plus every
    `*_loss` entry (auxiliary heads). Returns (total, {name: term}) with each term in fp32.
    gathered_text: the text features of every rank, already gathered (TextGatherOverlap)."""
    terms = {"contrastive_loss": clip_loss(outputs["image_features"], outputs["text_features"],
                                           outputs["logit_scale"], gathered_text=gathered_text)}
    terms.update({k: v.float() for k, v in outputs.items() if k.endswith("_loss")})
    total = terms["contrastive_loss"]
    for name, value in terms.items():
        if name != "contrastive_loss":
            total = total + value
    return total, terms
