"""Checkpoint files carrying a payload: a pickle whose __reduce__ would run `touch MARKER`.
Used by tests/test_safe_loading.py and the samples of docs/safe-loading.md:

    python tests/payloads.py dcp-metadata CKPT MARKER [--claim fsdp]   # .metadata (+ meta.json's backend)
    python tests/payloads.py train-state CKPT MARKER                   # train_state_rank0.pt
    python tests/payloads.py deepspeed CKPT MARKER                     # CKPT becomes a DeepSpeed checkpoint
"""
import argparse
import json
import os
import pickle
from pathlib import Path

import torch


class Payload:
    """Unpickling this runs `touch marker` (os.system): what a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def claim_backend(ckpt: Path, backend: str) -> None:
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "backend": backend}))


def dcp_metadata(ckpt: Path, marker, claim: str | None = None) -> None:
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    if claim:
        claim_backend(ckpt, claim)


def train_state(ckpt: Path, marker) -> None:
    torch.save({"loader": Payload(marker), "rng": {}}, ckpt / "train_state_rank0.pt")


def deepspeed(ckpt: Path, marker) -> None:
    """A single/ddp checkpoint turned into a DeepSpeed one (meta.json says so) whose files carry the payload."""
    (ckpt / "model_optim.pt").unlink()
    (ckpt / "deepspeed").mkdir()
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        torch.save({"module": Payload(marker)}, ckpt / "deepspeed" / name)
    claim_backend(ckpt, "deepspeed")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=("dcp-metadata", "train-state", "deepspeed"))
    p.add_argument("ckpt", type=Path)
    p.add_argument("marker")
    p.add_argument("--claim", default=None)
    a = p.parse_args()
    if a.kind == "dcp-metadata":
        dcp_metadata(a.ckpt, a.marker, a.claim)
    else:
        {"train-state": train_state, "deepspeed": deepspeed}[a.kind](a.ckpt, a.marker)
