"""FLIP's per-sample random patch masking (the authors' `random_mask`, MAE-style)."""
from __future__ import annotations

import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept at `mask_ratio`: exactly int(N * (1 - ratio)), as in the authors' code."""
    return int(num_patches * (1.0 - mask_ratio))


def num_text_kept(text_length: int, text_mask_ratio: float) -> int:
    """Text tokens the text tower runs on under text masking (Table 1c): at least the first token,
    whose output is the text feature; 32 tokens at 50% -> 16."""
    return max(int(text_length * (1.0 - text_mask_ratio)), 1)


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


# splitmix64 (Steele et al. 2014, the seeder of Java's SplittableRandom and xoshiro): a counter
# hashed to 64 well-mixed bits. Constants above 2**63 are written as their signed int64 values.
_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_M1 = 0xBF58476D1CE4E5B9 - 2**64
_M2 = 0x94D049BB133111EB - 2**64


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic; mask off the copied sign bits)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on an int64 tensor; multiplication wraps modulo 2**64 like uint64."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


IMAGE_STREAM, TEXT_STREAM = 0, 1  # independent noise streams: image patches, text tokens (Table 1c)


def masking_noise(seed: int, sample_index: torch.Tensor, num_patches: int,
                  device: torch.device | str | None = None, stream: int = IMAGE_STREAM) -> torch.Tensor:
    """Uniform noise [B, N] in [0, 1) (float64) that depends only on (seed, stream, global sample index).

    A run's masks then do not depend on the world size, the rank that computed a sample or
    where the run was resumed. Counter-based: noise[b, n] = splitmix64(key(seed, index_b) +
    (n + 1) * golden), all samples and patches in a few vectorised integer ops, on `device`
    (the GPU in training, so no [B, N] host-to-device copy). 53 bits per value: ties, which
    would let argsort's order differ between devices, have probability ~N^2 / 2^54.
    """
    device = torch.device(device) if device is not None else sample_index.device
    idx = sample_index.to(device=device, dtype=torch.int64).view(-1, 1)
    seed_key = _mix64(torch.tensor(int(seed) % 2**63, dtype=torch.int64, device=device))
    key = _mix64(_mix64(seed_key + int(stream)) ^ idx)
    counters = torch.arange(1, num_patches + 1, dtype=torch.int64, device=device) * _GOLDEN
    bits = _mix64(key + counters)
    return _shr(bits, 11).to(torch.float64) * 2.0**-53


class DataPositionNoise:
    """Masking noise for a training step, keyed on each sample's position in the data stream.

    Position p = step * global_batch + rank * local_batch + i: the p-th sample the run consumes,
    whichever rank holds it. A sample seen again (next epoch, resampled shard) sits at another
    position and gets a fresh, independent mask, as the authors' code draws a new mask every step
    (models_flip.py: random_mask(self.make_rng("dropout"), ...)); yet masks stay a pure function
    of (seed, position), so a resumed run and every world size draw the same ones.

    Built once: the seed key and the counters live on the device, so a step's noise costs a few
    integer kernels and no host-to-device copy (`step` enters as a kernel scalar).
    """

    def __init__(self, seed: int, num_tokens: int, local_batch: int, rank: int, global_batch: int,
                 device: torch.device | str, stream: int = IMAGE_STREAM):
        device = torch.device(device)
        self.global_batch = global_batch
        self.offsets = torch.arange(local_batch, dtype=torch.int64, device=device) + rank * local_batch
        seed_key = _mix64(torch.tensor(int(seed) % 2**63, dtype=torch.int64, device=device))
        self.stream_key = _mix64(seed_key + int(stream))
        self.counters = torch.arange(1, num_tokens + 1, dtype=torch.int64, device=device) * _GOLDEN

    def positions(self, step: int) -> torch.Tensor:
        """Data positions of this rank's samples at (0-based) `step`."""
        return self.offsets + step * self.global_batch

    def __call__(self, step: int, rows: slice = slice(None)) -> torch.Tensor:
        """Noise [B_rows, N] for this rank's samples `rows` of `step` (the same values as
        masking_noise(seed, positions, N, stream=...))."""
        key = _mix64(self.stream_key ^ self.positions(step)[rows].view(-1, 1))
        return _shr(_mix64(key + self.counters), 11).to(torch.float64) * 2.0**-53
