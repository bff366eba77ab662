"""The one interface the trainer talks to. Each backend is one file plus a registry entry.

Build order (torchtitan's): the plain model is built, then `parallelize` applies activation
checkpointing, then per-block compile, then the backend's wrapping/sharding, and only then does
the trainer build the optimizer over the (possibly sharded) parameters, handing its parameter
groups to `build_optimizer` (so this package never imports the training code).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ...config import Config
from ..env import DistEnv


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute every transformer block in backward (the wrapper keeps state-dict keys unchanged)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for blocks in model.block_lists():
        for i, block in enumerate(blocks):
            # preserve_rng_state=False: the blocks use no dropout, and saving RNG state costs a sync.
            blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile each block in place (nn.Module.compile keeps parameter names, unlike torch.compile(m))."""
    for blocks in model.block_lists():
        for block in blocks:
            block.compile(dynamic=False)


class Backend:
    """Owns wrapping, precision, backward, optimizer step and checkpoint I/O for one strategy."""

    name = "base"
    # Whether a checkpoint resumes on another world size (replicated or DCP-resharded state).
    supports_resharding = True

    def __init__(self, cfg: Config, denv: DistEnv, device: torch.device):
        self.cfg, self.denv, self.device = cfg, denv, device
        self.model: nn.Module | None = None  # the plain FlipModel (parameters may be sharded)
        self.module: nn.Module | None = None  # what the trainer calls: the model or its wrapper
        self.optimizer = None

    # -- set-up -----------------------------------------------------------------------------
    def parallelize(self, model: nn.Module) -> None:
        """Activation checkpointing, then compile, then this backend's `wrap`."""
        if self.cfg.parallel.activation_checkpointing:
            apply_activation_checkpointing(model)
        if self.cfg.parallel.compile:
            apply_compile(model)
        self.model = model
        self.module = self.wrap(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def build_optimizer(self, groups: list[dict]) -> None:
        """AdamW over `groups` (the trainer's decay groups of self.model's parameters).

        Fused (one multi-tensor kernel, on CUDA and on CPU) because it takes `found_inf`: a
        non-finite step is skipped on the device, with no host sync (see `step`)."""
        t = self.cfg.train
        # Fused on the CPU too: there it is ~4.7x faster than foreach, which is slower than the
        # plain loop (vit_b16, 140M parameters, one thread: fused 0.18 s, loop 0.77 s, foreach
        # 0.84 s of CPU per step; `bench/bench_vs_openclip.py --optimizers`, BENCHMARKS.md).
        # Same update within fp32.
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(t.beta1, t.beta2), eps=t.eps, fused=True)

    # -- step -------------------------------------------------------------------------------
    def autocast(self):
        if self.cfg.parallel.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self) -> torch.Tensor:
        """The global gradient norm (logged, and the skip test of `step`); clips when
        train.grad_clip > 0 (FLIP's optimizer never clips: default 0)."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0, foreach=True)
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.train.grad_clip, total, foreach=True)
        return total

    def step(self, lr: float) -> torch.Tensor:
        """Clip, step, zero grads; returns the pre-clip global grad norm (a device tensor, no sync).

        A non-finite norm (a NaN/inf loss or gradient on any rank: the gradients are reduced
        before the norm, so every rank sees the same norm) skips the update on the device: the
        fused AdamW kernel leaves parameters, moments and its step count untouched when
        `found_inf` is 1 (the mechanism GradScaler uses). The caller counts skips from the norm."""
        norm = self.clip_grad_norm()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.found_inf = (~torch.isfinite(norm)).float().reshape(())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    @contextlib.contextmanager
    def no_grad_sync(self):
        """Backward passes inside accumulate gradients locally without reducing them (all micro
        batches but the last of a step)."""
        yield

    def zero_grad(self) -> None:
        """Drop gradients without stepping (a skipped, non-finite step)."""
        self.optimizer.zero_grad(set_to_none=True)

    def clamp_logit_scale(self) -> None:
        self.model.clamp_logit_scale()

    def logit_scale(self) -> float:
        """exp(logit scale) for logging. Collective where the parameter is sharded (FSDP, ZeRO-3),
        so every rank calls it on log steps."""
        return float(self.model.logit_scale.detach().float().exp().max())

    # -- checkpoints ------------------------------------------------------------------------
    # Backends that can write a checkpoint in the background implement async_save_context()
    # and save_async(ckpt_dir, ctx) -> Future (FSDP: DCP's async_save); the others save in line.
    supports_async_save = False

    def save(self, ckpt_dir: Path) -> None:
        """Write model + optimizer state into ckpt_dir. Called on EVERY rank (collective)."""
        raise NotImplementedError

    def load(self, ckpt_dir: Path) -> None:
        """Restore model + optimizer state saved by `save` (called on every rank)."""
        raise NotImplementedError

    @staticmethod
    def read_full_weights(ckpt_dir: Path) -> dict:
        """Unsharded weights from a checkpoint this backend wrote, on one process, no process group."""
        raise NotImplementedError

    def load_model_weights(self, state_dict: dict) -> None:
        """Load full (unsharded) model weights, e.g. for init_from; the optimizer stays fresh."""
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise ValueError(f"init_from weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def full_state_dict(self) -> dict:
        """Unsharded model weights on CPU (collective; every rank gets them)."""
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
