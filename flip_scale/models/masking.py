"""FLIP's per-sample random patch masking (the authors' `random_mask`, MAE-style)."""
from __future__ import annotations

import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept at `mask_ratio`: exactly int(N * (1 - ratio)), as in the authors' code."""
    return int(num_patches * (1.0 - mask_ratio))


def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
    """Keep a random subset of tokens of each sample.

    x: [B, N, D] patch tokens (position embedding already added). noise: [B, N] uniform noise;
    pass it to make masks a function of (seed, sample index) rather than of the global RNG.
    Returns (kept tokens [B, K, D], kept indices [B, K]). Sorting the noise gives each sample
    its own permutation, so indices are unique per sample and differ between samples.
    """
    B, N, D = x.shape
    keep = num_kept(N, mask_ratio)
    if noise is None:
        noise = torch.rand(B, N, device=x.device)
    elif noise.shape != (B, N):
        raise ValueError(f"masking noise has shape {tuple(noise.shape)}, expected {(B, N)}")
    ids_keep = torch.argsort(noise.to(x.device), dim=1)[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    return kept, ids_keep


def masking_noise(seed: int, sample_index: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Uniform noise [B, N] that depends only on (seed, global sample index).

    A run's masks then do not depend on the world size, the rank that computed a sample or
    where the run was resumed (each sample gets its own small generator; cheap next to a step).
    """
    rows = []
    for idx in sample_index.tolist():
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(idx) * 7919 + 17) % (2**63 - 1))
        rows.append(torch.rand(num_patches, generator=g))
    return torch.stack(rows) if rows else torch.empty(0, num_patches)
