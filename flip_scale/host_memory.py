"""Host malloc tuned for training on the CPU: freed memory is kept for reuse.

A training step allocates and frees the same large buffers (activations, gradients, attention
scratch) every step. glibc's default malloc serves large requests with fresh mmap()s (the
threshold adapts up to 32 MiB; anything larger, such as vit_b16's 62 MB token-embedding
gradient, is always mapped) and trims the top of its heap back to the OS when enough is free, so
every step page-faults its buffers in again: on this 2-core machine a vit_b16 step at 112 px
took ~250k minor faults and 1-3 s of system time on top of ~7 s of compute, and how many faults
a given step takes shifts with the allocation order (measured: bench/bench_vs_openclip.py).
On a GPU the CUDA caching allocator already keeps freed blocks; this is the host's counterpart,
as PyTorch's CPU performance guide gets from jemalloc/tcmalloc, done here without LD_PRELOAD:
the mmap threshold fixed at glibc's adaptive ceiling, 32 MiB (blocks below it come from the heap
at once instead of after a free has raised the threshold), and a trim threshold of 2 GiB (freed
heap memory stays mapped for the next step). Blocks over 32 MiB are still mapped and returned
on free: they never fragment the heap. (Disabling mmap altogether looked faster but is not
safe: glibc's aligned allocations then leave every freed large block a few bytes too small
for the next request of the same size, and the heap grew by a block per step.) Resident memory
stays at the heap's high-water mark, which is what a caching allocator costs too.

`train.host_malloc`: auto (keep on CPU devices), keep, default (glibc's own behaviour).
"""
from __future__ import annotations

import ctypes

import torch

# glibc's <malloc.h> parameter numbers.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 2**31 - 1      # mallopt takes an int: the largest, 2 GiB
MMAP_THRESHOLD = 32 * 2**20     # glibc's own ceiling for its adaptive threshold (64-bit)

HOST_MALLOC_CHOICES = ("auto", "keep", "default")


def keep_freed_memory() -> bool:
    """Tell this process's glibc malloc to keep freed memory (see the module docstring). Returns
    False where there is no glibc mallopt (musl, macOS): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; musl's is a stub that returns 0.
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


def apply_host_malloc(choice: str, device: torch.device) -> bool:
    """The trainer's (and the engine benchmarks') set-up: keep freed memory when `choice` is
    keep, or auto on a CPU device. Says whether the setting took effect."""
    if choice not in HOST_MALLOC_CHOICES:
        raise ValueError(f"train.host_malloc must be one of {', '.join(HOST_MALLOC_CHOICES)}, got {choice!r}")
    if choice == "keep" or (choice == "auto" and device.type == "cpu"):
        return keep_freed_memory()
    return False
