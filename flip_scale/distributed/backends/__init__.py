"""Backend registry: parallel.backend -> class. Adding one is a file plus a line here."""
from __future__ import annotations

import importlib

REGISTRY = {
    "single": ("flip_scale.distributed.backends.single", "SingleBackend"),
    "ddp": ("flip_scale.distributed.backends.single", "DDPBackend"),
    "fsdp": ("flip_scale.distributed.backends.fsdp", "FSDPBackend"),
    "deepspeed": ("flip_scale.distributed.backends.deepspeed", "DeepSpeedBackend"),
}


def get_backend_class(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown parallel.backend {name!r}; choose one of {sorted(REGISTRY)}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)

# How a checkpoint's files name its format: format -> (the file or folder only that format
# writes, the backends that read it). checkpoint.checkpoint_backend picks the loader by these
# files, so meta.json's `backend` word never chooses which unpickler touches a file.
CHECKPOINT_FILES = {
    "torch": ("model_optim.pt", ("single", "ddp")),
    "dcp": (".metadata", ("fsdp",)),
    "deepspeed": ("deepspeed", ("deepspeed",)),
}
