"""AdamW parameter groups and the FLIP lr schedule (in samples, not steps)."""
from __future__ import annotations

import math

from torch import nn

# FLIP: no weight decay on biases, norms, position embeddings, the cls token, the logit scale.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "logit_scale")


def is_no_decay(name: str, param) -> bool:
    return param.ndim <= 1 or any(key in name for key in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if is_no_decay(name, p) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def lr_at(samples_seen: int, peak_lr: float, warmup_samples: int, total_samples: int) -> float:
    """Linear warmup from 0 to the peak, then cosine to 0 at the end of the run (FLIP)."""
    if warmup_samples > 0 and samples_seen < warmup_samples:
        return peak_lr * samples_seen / warmup_samples
    span = max(total_samples - warmup_samples, 1)
    progress = min(max(samples_seen - warmup_samples, 0) / span, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
