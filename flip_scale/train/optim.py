"""AdamW parameter groups and the FLIP lr schedule (in samples, not steps)."""
from __future__ import annotations

import math

from torch import nn

# The authors' weight-decay mask (t5x/train_state_initializer.py, create_optimizer: the AND of
# utils/opt_util.py filter_bias_and_norm and filter_posembed) exempts exactly
#   - every parameter named "bias"            (filter_bias_and_norm: path[-1] == "bias")
#   - every LayerNorm scale                   (filter_bias_and_norm: path[-1] == "scale")
#   - position embeddings                     (filter_posembed: "pos_embedding" in the path)
# Everything else decays, including the image cls token and the logit scale: their config
# comment says "(bias, norm, cls, posembed)" but filter_cls_and_posembed is never used.
POS_EMBED_NAME = "pos_embed"


def no_decay_names(model: nn.Module) -> set[str]:
    """Names (as in model.named_parameters()) of the parameters AdamW must not decay."""
    names = set()
    for mod_name, mod in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        for pname, _ in mod.named_parameters(recurse=False):
            if (pname == "bias" or (isinstance(mod, nn.LayerNorm) and pname == "weight")
                    or POS_EMBED_NAME in pname):
                names.add(prefix + pname)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    exempt = no_decay_names(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def lr_at(samples_seen: int, peak_lr: float, warmup_samples: int, total_samples: int) -> float:
    """Linear warmup from 0 to the peak, then cosine to 0 at the end of the run (FLIP)."""
    if warmup_samples > 0 and samples_seen < warmup_samples:
        return peak_lr * samples_seen / warmup_samples
    span = max(total_samples - warmup_samples, 1)
    progress = min(max(samples_seen - warmup_samples, 0) / span, 1.0)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
