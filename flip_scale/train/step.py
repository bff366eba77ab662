"""One optimizer step: forward (whole batch, or micro batches with cached features), loss,
backward, update. Names no backend and no experiment: masking noise comes from one function of
the step's data positions, and auxiliary heads add themselves through `*_loss` outputs.

Syncs: none on the host. The non-finite test is the gradient norm (a device tensor, identical on
every rank after gradient reduction) handed to the fused optimizer as `found_inf` (Backend.step);
the loss and norm stay device tensors until the metrics logger reads them on log steps. The
remaining host syncs of a run are listed in trainer.py's module docstring.
"""
from __future__ import annotations

import contextlib
import os

import torch

from ..data.device_decode import batch_images
from ..distributed.collectives import world_size
from ..loss import TextGatherOverlap, clip_loss, total_loss
from ..models.masking import IMAGE_STREAM, TEXT_STREAM, DataPositionNoise

# Test-only fault injection (docs/fault-tolerance.md): comma-separated 1-based steps whose loss
# is multiplied by NaN. Read once, at set-up, and kept out of the loop.
NAN_STEPS_ENV = "FLIP_SCALE_TEST_NAN_STEPS"


def nan_steps_from_env() -> frozenset[int]:
    return frozenset(int(x) for x in os.environ.get(NAN_STEPS_ENV, "").split(",") if x.strip())


class StepNoise:
    """The masking noise of a step as forward() keyword arguments: image noise when the model
    masks patches, text noise when it masks tokens (Table 1c), nothing otherwise."""

    def __init__(self, cfg, num_patches: int, local_batch: int, rank: int, device: torch.device):
        m, t = cfg.model, cfg.train
        common = dict(seed=t.seed, local_batch=local_batch, rank=rank, global_batch=t.global_batch_size,
                      device=device)
        self.makers = {}
        if m.mask_ratio > 0:
            self.makers["noise"] = DataPositionNoise(num_tokens=num_patches, stream=IMAGE_STREAM, **common)
        if m.text_mask_ratio > 0:  # the first token is never masked: noise for the rest
            self.makers["text_noise"] = DataPositionNoise(num_tokens=m.text_length - 1, stream=TEXT_STREAM, **common)

    def __call__(self, step: int, rows: slice = slice(None)) -> dict:
        return {name: make(step, rows) for name, make in self.makers.items()}


class TrainStep:
    """`step(batch, step_index, lr) -> (loss, grad_norm)`, both device tensors.

    micro_batch_size < local batch: contrastive micro-batching with cached features (GradCache,
    open_clip's --accum-freq). A no-grad pass over the micro batches gives every feature of the
    local batch; the loss over the GLOBAL batch (features gathered from every rank) is
    differentiated with respect to those cached features only; then each micro batch is
    re-forwarded with gradient and back-propagated from its slice of that feature gradient. The
    re-forward sees the same masks (they are a function of the data position), so the parameter
    gradient equals the one-big-batch gradient: the negatives are the whole global batch, which
    plain gradient accumulation would not give. Cost: one extra forward (about 1.33x compute).
    Gradients are reduced across ranks only in the last micro batch's backward.
    """

    def __init__(self, backend, cfg, num_patches: int, local_batch: int, rank: int, device: torch.device,
                 nan_steps: frozenset[int] = frozenset()):
        self.backend, self.device = backend, device
        self.noise = StepNoise(cfg, num_patches, local_batch, rank, device)
        micro = cfg.train.micro_batch_size
        self.micro = micro if micro and micro < local_batch else None
        self.nan_steps = nan_steps
        # The loss gathers every rank's text features; started from a hook as soon as the text
        # tower is done, the gather runs under the image tower's forward. (The micro-batch path
        # gathers cached features once, outside any forward: nothing to overlap there.)
        self.overlap = (TextGatherOverlap(backend.model.text)
                        if cfg.parallel.overlap_loss_gather and world_size() > 1 and self.micro is None else None)

    def _forward(self, images, tokens, step: int, rows: slice) -> dict:
        with self.backend.autocast():
            return self.backend.module(images[rows], tokens[rows], **self.noise(step, rows))

    def _inject(self, step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step + 1 in self.nan_steps else loss

    def __call__(self, batch: dict, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch_images(batch, self.device)  # data.decode=device decodes here
        tokens = batch["tokens"].to(self.device, non_blocking=True)
        if self.micro is None:
            with self.overlap.armed() if self.overlap is not None else contextlib.nullcontext():
                out = self._forward(images, tokens, step, slice(None))
            loss, _ = total_loss(out, gathered_text=self.overlap.take() if self.overlap is not None else None)
            loss = self._inject(step, loss)
            self.backend.backward(loss)
        else:
            loss = self._cached_feature_backward(images, tokens, step)
        norm = self.backend.step(lr)
        self.backend.clamp_logit_scale()
        return loss.detach(), norm

    def _cached_feature_backward(self, images, tokens, step: int) -> torch.Tensor:
        B = images.shape[0]
        chunks = [slice(i, min(i + self.micro, B)) for i in range(0, B, self.micro)]
        with torch.no_grad():
            outs = [self._forward(images, tokens, step, c) for c in chunks]
        # Leaves standing for the features: the loss's gradient w.r.t. them (including what other
        # ranks' losses contribute through the gather) is what each re-forward back-propagates.
        img = torch.cat([o["image_features"] for o in outs]).float().requires_grad_()
        txt = torch.cat([o["text_features"] for o in outs]).float().requires_grad_()
        scale = outs[0]["logit_scale"].float().detach().requires_grad_()
        contrastive = self._inject(step, clip_loss(img, txt, scale))
        contrastive.backward()
        aux_names = [k for k in outs[0] if k.endswith("_loss")]
        loss = contrastive.detach()
        for name in aux_names:  # a batch mean = the chunk means weighted by chunk size
            loss = loss + sum(o[name].float() * (c.stop - c.start) / B for o, c in zip(outs, chunks))
        for i, c in enumerate(chunks):
            last = i == len(chunks) - 1
            with contextlib.nullcontext() if last else self.backend.no_grad_sync():
                out = self._forward(images, tokens, step, c)
                tensors = [out["image_features"], out["text_features"]]
                grads = [img.grad[c].to(out["image_features"].dtype), txt.grad[c].to(out["text_features"].dtype)]
                for name in aux_names:
                    tensors.append(out[name] * ((c.stop - c.start) / B))
                    grads.append(torch.ones_like(tensors[-1]))
                if last:  # the temperature's gradient once; in the synced pass (DDP needs it there)
                    tensors.append(out["logit_scale"])
                    grads.append(scale.grad.reshape(out["logit_scale"].shape).to(out["logit_scale"].dtype))
                torch.autograd.backward(tensors, grads)
        return loss
