"""One process, one device (also the CPU path of the demo)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ...safe_load import load_torch_file
from .base import Backend
from .process_group import ensure_process_group

MODEL_FILE = "model_optim.pt"


class SingleBackend(Backend):
    name = "single"

    def wrap(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def save(self, ckpt_dir: Path) -> None:
        # Replicated state: rank 0 writes it for everyone.
        if not dist.is_initialized() or dist.get_rank() == 0:
            torch.save({"model": self.full_state_dict(), "optimizer": self.optimizer.state_dict()},
                       Path(ckpt_dir) / MODEL_FILE)

    def load(self, ckpt_dir: Path) -> None:
        # weights_only; a file needing more is refused as unsafe, not skipped as damaged.
        state = load_torch_file(Path(ckpt_dir) / MODEL_FILE, map_location=self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    @staticmethod
    def read_full_weights(ckpt_dir: Path) -> dict:
        return load_torch_file(Path(ckpt_dir) / MODEL_FILE)["model"]


class DDPBackend(SingleBackend):
    """Replicated weights, gradients averaged by DistributedDataParallel."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ensure_process_group(self.device)  # alone (one task, one GPU) DDP still needs a group
        model = model.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        # The model's forward returns the logit scale too, so every parameter gets a gradient.
        return DistributedDataParallel(model, device_ids=ids)

    def no_grad_sync(self):
        return self.module.no_sync()
