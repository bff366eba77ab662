"""One rank of a large layout, run for real in one CPU process: the recipe's model, FSDP backend,
optimizer and TrainStep at the layout's world size, under a fake process group (collectives
return at once, moving nothing) and FakeTensorMode (shapes and dtypes, no storage, no FLOPs).

What it measures (torchtitan's scripts/estimate does memory the same way):
- memory: FSDPMemTracker, torch's accounting of every live tensor by kind, over a warm SECOND
  step (the tracker books the first optimizer step's state at its unsharded size: a 16 GB
  artefact for H/14), with where in the step the peak occurs;
- communication: every collective of that step (collectives.py).

It rests on private torch APIs (the fake process group, FSDPMemTracker); TESTED_TORCH is the
version it was written and checked against.
"""
from __future__ import annotations

import gc
import re
import time

import torch

from .collectives import CollectiveLog

TESTED_TORCH = "2.14.1"
GB = 1e9

# FSDPMemTracker's kinds -> the breakdown's five parts. Gathered (unsharded) parameters and the
# all-gather buffers they live in are parameters; the reduce-scatter inputs are gradients.
BREAKDOWN = {
    "Sharded Param": "parameters", "Unsharded Param": "parameters", "All Gather": "parameters",
    "Buffer": "parameters",
    "Sharded Grad": "gradients", "Unsharded Grad": "gradients", "Reduce Scatter": "gradients",
    "OptState": "optimizer_state",
    "Activation": "activations", "Inputs": "activations",
    "Temp": "temporaries",
}


def torch_version_note() -> str | None:
    """One line when the running torch is not the one the simulation was checked on."""
    have = torch.__version__.split("+")[0]
    if have == TESTED_TORCH:
        return None
    return (f"note: the simulation was written for torch {TESTED_TORCH} (private APIs: fake process group, "
            f"FSDPMemTracker); torch {have} may count differently")


def not_simulated(cfg) -> list[str]:
    """What of the recipe the simulation leaves out, one line each; 'skip:' lines stop it."""
    lines = []
    if cfg.parallel.backend != "fsdp":
        lines.append(f"skip: parallel.backend {cfg.parallel.backend} is not simulated (FSDP only: DeepSpeed keeps its "
                     f"own buffers and communication outside torch's fake process group and memory tracker)")
    if cfg.parallel.compile:
        lines.append("not simulated: parallel.compile (the blocks run eagerly; compiled kernels fuse some "
                     "temporaries away, so the real peak can be lower)")
    return lines


def _peak_tracker_class():
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    class PeakTracker(FSDPMemTracker):
        """FSDPMemTracker that also notes where in the step each new peak is reached."""

        peak_at = None

        def _update_peak_stats(self, peak_state) -> None:
            before = dict(self._peak_mem)
            super()._update_peak_stats(peak_state)
            if any(v > before.get(dev, 0) for dev, v in self._peak_mem.items()):
                self.peak_at = self._location()

        def _location(self) -> str:
            # Module names as the tracker sees them ("FSDPFlipModel.visual.blocks.3.mlp.fc2"):
            # reported at block level, without the root's class name.
            mods = [m.split(".", 1)[1] for m in self._mod_tracker.parents if "." in m]
            deepest = max(mods, key=lambda m: (m.count("."), len(m)), default="")
            block = re.match(r"(?:[\w.]*?)((?:visual|text)\.blocks\.\d+)", deepest)
            where = block.group(1) if block else deepest
            if self._in_opt:
                return "optimizer step"
            if self._mod_tracker.is_bw:
                return f"backward of {where}" if where else "loss backward (before the towers' backward)"
            return f"forward of {where}" if where else "loss forward"

    return PeakTracker


def simulate(cfg, nodes: int, gpus_per_node: int, capacity_gb: float | None, steps_before: int = 1) -> dict:
    """Run `steps_before` untracked steps, then one tracked step, as rank 0 of nodes x gpus_per_node."""
    import torch.distributed as dist
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from ..distributed.backends.fsdp import FSDPBackend, build_mesh
    from ..distributed.env import DistEnv
    from ..train.build import build_model_from_config, parallelize_and_build_optimizer
    from ..train.step import TrainStep

    start = time.perf_counter()
    world = nodes * gpus_per_node
    device = torch.device("cpu")
    gc.disable()  # as torchtitan's estimator: collection pauses would only add time
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        # DeviceMesh builds real tensors and process groups: outside fake mode.
        mesh = build_mesh(device.type, world, cfg.parallel.shard_group_size)
        log = CollectiveLog()
        with FakeTensorMode(allow_non_fake_inputs=True):
            torch.manual_seed(cfg.train.seed)
            model = build_model_from_config(cfg)
            backend = FSDPBackend(cfg, DistEnv(0, world, 0, "simulation"), device, mesh=mesh,
                                  capacity_gb=capacity_gb)
            parallelize_and_build_optimizer(backend, model, cfg)
            backend.module.train()
            local = cfg.train.global_batch_size // world
            size = cfg.data.image_size
            batch = {"images": torch.randint(0, 256, (local, 3, size, size), dtype=torch.uint8),
                     "tokens": torch.randint(0, model.size.vocab_size, (local, cfg.model.text_length))}
            train_step = TrainStep(backend, cfg, model.visual.num_patches, local, 0, device)
            with log:
                for step in range(steps_before):
                    log.new_step()
                    train_step(batch, step, 1e-4)
                log.new_step()
                tracker = _peak_tracker_class()(backend.module, backend.optimizer)
                tracker.track_inputs((batch["images"], batch["tokens"]))
                with tracker:
                    train_step(batch, steps_before, 1e-4)
        peak_snap = tracker._peak_mem_snap[device]
        breakdown = {k: 0.0 for k in ("parameters", "gradients", "optimizer_state", "activations", "temporaries")}
        for kind, nbytes in peak_snap.items():
            if kind in BREAKDOWN:
                breakdown[BREAKDOWN[kind]] += nbytes / GB
        current = tracker.get_tracker_snapshot("current")[device]
        rows = log.rows()
        return {"peak_gb": peak_snap["Total"] / GB, "peak_at": tracker.peak_at, "breakdown_gb": breakdown,
                "tracker_kinds_gb": {k: v / GB for k, v in peak_snap.items() if k != "Total"},
                "sharded_param_bytes": current.get("Sharded Param", 0),
                "optimizer_state_bytes": current.get("OptState", 0),
                "collectives": rows, "comm_bytes_per_rank": sum(r["bytes_per_rank"] for r in rows),
                "world_size": world, "torch": torch.__version__, "seconds": time.perf_counter() - start}
    finally:
        dist.destroy_process_group()
        gc.enable()
