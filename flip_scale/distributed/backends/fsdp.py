"""FSDP2: `fully_shard` each transformer block of both towers, then the root (torchtitan's order).

Build order (Backend.parallelize): activation checkpointing, then per-block compile, then the
sharding below, then the optimizer over the sharded (DTensor) parameters. Sharding must come
last: fully_shard replaces parameters with DTensors and hooks the module it is given, so the
checkpoint wrapper / compiled block must already be the module it sees.

Precision: with parallel.precision bf16 the blocks compute on bf16 copies of the parameters
gathered by FSDP (MixedPrecisionPolicy), the sharded fp32 parameters stay the optimizer's
master weights, and gradients are reduced in fp32. The logit scale is left out of FSDP (a
replicated fp32 parameter), so the loss sees exp() of the fp32 value. Autocast is therefore off (nullcontext):
the parameters already are bf16 in forward, and autocast on top would only add casts.

Checkpoints are torch.distributed.checkpoint (DCP) folders: each rank writes its own shards,
no rank ever holds the full model, and they reload at any world size.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ...planning.memory import resolve_reshard
from .base import Backend
from .bf16_inputs import cast_image_input
from .process_group import ensure_process_group

# Prefixes that wrappers add to parameter names; DCP state dicts are already free of them.
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def _strip_wrappers(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def build_mesh(device_type: str, world: int, shard_group_size: int | None):
    """Flat FSDP: a 1-D mesh over all ranks. HSDP (parallel.shard_group_size = G < world): a 2-D
    mesh (replicate, shard) of world/G copies x G ranks; consecutive ranks (one node when G is
    the node's GPU count) shard a copy, so the parameter gathers and gradient reduce-scatters stay
    inside a node, and only each rank's gradient shard is all-reduced across the copies.
    fully_shard on a 2-D mesh is FSDP2's HSDP; DCP checkpoints save each shard once and load into
    either layout."""
    from torch.distributed.device_mesh import init_device_mesh

    if shard_group_size is None or shard_group_size >= world:
        return init_device_mesh(device_type, (world,))
    if world % shard_group_size:
        raise ValueError(f"parallel.shard_group_size {shard_group_size} does not divide the world size {world}")
    return init_device_mesh(device_type, (world // shard_group_size, shard_group_size),
                            mesh_dim_names=("replicate", "shard"))


def text_units(blocks, blocks_per_unit: int) -> list:
    """The text tower's blocks in FSDP units of blocks_per_unit consecutive blocks (one
    all-gather / reduce-scatter each): a 1024-wide text block is ~12M parameters, a few tens of
    KB per rank at hundreds of ranks, where each collective's fixed latency dominates."""
    blocks = list(blocks)
    return [blocks[i:i + blocks_per_unit] for i in range(0, len(blocks), blocks_per_unit)]


def replicated_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters FSDP leaves alone (plain fp32 tensors on every rank, gradients averaged by
    FSDPBackend.step): the one-element logit scale."""
    return [model.logit_scale]


def apply_fsdp(model: nn.Module, mesh, precision: str, reshard: dict | None = None, blocks_per_unit: int = 1) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    reshard = reshard or {"image": True, "text": True}

    bf16 = precision == "bf16"
    block_mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
    # The root must NOT cast forward inputs: the masking noise is a float tensor, and bf16
    # (8 mantissa bits) would create ties in its argsort, i.e. less random, biased masks.
    # The blocks still cast their own inputs, so everything inside them runs in bf16.
    root_mp = MixedPrecisionPolicy(param_dtype=block_mp.param_dtype, reduce_dtype=torch.float32,
                                   cast_forward_inputs=False)
    # reshard_after_forward=True: gather again in backward (ZeRO-3 memory behaviour); False keeps
    # the tower's gathered parameters from forward to backward (one all-gather fewer per unit).
    for block in model.visual.blocks:
        fully_shard(block, mesh=mesh, mp_policy=block_mp, reshard_after_forward=reshard["image"])
    for unit in text_units(model.text.blocks, blocks_per_unit):
        # A list is one FSDP unit (one parameter group); names and state dicts are unchanged.
        fully_shard(unit if len(unit) > 1 else unit[0], mesh=mesh, mp_policy=block_mp,
                    reshard_after_forward=reshard["text"])
    # The root holds embeddings, norms, projections; it stays gathered after forward since
    # backward needs it first anyway. The logit scale is not FSDP's: in the bf16 copy the root
    # policy would make, ln(temperature) has a 2^-5 spacing near ln 100 (exp in 3% steps,
    # ceiling 99.0). It stays a replicated fp32 parameter; FSDPBackend averages its gradient.
    fully_shard(model, mesh=mesh, mp_policy=root_mp, reshard_after_forward=False,
                ignored_params=set(replicated_params(model)))
    if bf16:
        cast_image_input(model)  # the root leaves images fp32; the patch-embedding conv needs bf16


def on_device(model: nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer already lives on `device` (fake tensors included:
    `.to()` on a model built under FakeTensorMode is neither needed nor possible)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return all(t.device.type == device.type and (device.index is None or t.device.index == device.index)
               for t in tensors)


def card_capacity_gb(device: torch.device) -> float | None:
    """The GPU's memory that parallel.reshard_after_forward: auto is decided against (None on CPU)."""
    from ...planning.hardware import nominal_memory_gb

    if device.type != "cuda":
        return None
    return nominal_memory_gb(torch.cuda.get_device_properties(device).total_memory)


class FSDPBackend(Backend):
    """mesh: an existing DeviceMesh to shard over (the planner's simulation builds it outside
    FakeTensorMode, as DeviceMesh requires); None builds one from parallel.shard_group_size.
    capacity_gb: the card's memory for `reshard_after_forward: auto`; None reads it from the
    device (the simulation passes the planned GPU's, so both decide alike)."""

    name = "fsdp"

    def __init__(self, cfg, denv, device: torch.device, *, mesh=None, capacity_gb: float | None = None):
        super().__init__(cfg, denv, device)
        self.mesh, self.capacity_gb = mesh, capacity_gb

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import register_fsdp_forward_method

        ensure_process_group(self.device)
        if not on_device(model, self.device):
            model.to(self.device)
        mesh = self.mesh or build_mesh(self.device.type, dist.get_world_size(), self.cfg.parallel.shard_group_size)
        capacity = self.capacity_gb if self.capacity_gb is not None else card_capacity_gb(self.device)
        self.reshard = resolve_reshard(self.cfg, dist.get_world_size(), capacity)  # per tower
        apply_fsdp(model, mesh, self.cfg.parallel.precision, self.reshard, self.cfg.parallel.blocks_per_unit)
        # Evaluation calls these instead of forward; registering them makes FSDP gather the
        # parameters around them as it does around forward.
        for method in ("encode_image", "encode_text"):
            register_fsdp_forward_method(model, method)
        return model

    def autocast(self):
        return contextlib.nullcontext()  # see module docstring: bf16 comes from the FSDP policy

    @contextlib.contextmanager
    def no_grad_sync(self):
        # FSDP2: skip the reduce-scatter of micro batches before the last; gradients accumulate
        # unsharded until the last backward reduces them all at once.
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def step(self, lr: float) -> torch.Tensor:
        # FSDP reduced the sharded gradients in backward; the replicated ones are averaged here,
        # once a step (after the last micro batch), as FSDP averages: sum / world size.
        grads = [p.grad for p in replicated_params(self.model) if p.grad is not None]
        if grads and dist.get_world_size() > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))
        return super().step(lr)

    def clip_grad_norm(self) -> torch.Tensor:
        from torch.distributed.tensor import DTensor

        params = [p for p in self.model.parameters() if p.grad is not None]
        sharded = [p for p in params if isinstance(p.grad, DTensor)]
        plain = [p for p in params if not isinstance(p.grad, DTensor)]
        # Each DTensor grad's norm is a partial (per-shard) value; full_tensor() reduces it over
        # the mesh, so the clip coefficient uses the norm of the WHOLE gradient, as on one GPU.
        # The replicated (plain) gradients are whole on every rank: their norm joins as is.
        total = torch.nn.utils.get_total_norm([p.grad for p in sharded], norm_type=2.0, foreach=True)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if plain:
            rest = torch.nn.utils.get_total_norm([p.grad for p in plain], norm_type=2.0, foreach=True)
            total = torch.linalg.vector_norm(torch.stack([total.float(), rest.float().to(total.device)]))
        if self.cfg.train.grad_clip > 0:
            for group in (sharded, plain):
                if group:
                    torch.nn.utils.clip_grads_with_norm_(group, self.cfg.train.grad_clip, total, foreach=True)
        return total

    def logit_scale(self) -> float:
        value = self.model.logit_scale.detach()
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        return float(value.float().exp().max())

    # -- state dicts ------------------------------------------------------------------------
    def _state_dicts(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        return get_state_dict(self.model, self.optimizer)

    def save(self, ckpt_dir: Path) -> None:
        import torch.distributed.checkpoint as dcp

        model_sd, optim_sd = self._state_dicts()
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(ckpt_dir))

    supports_async_save = True

    def async_save_context(self) -> "AsyncSaveContext":
        return AsyncSaveContext(self.device)

    def save_async(self, ckpt_dir: Path, ctx: "AsyncSaveContext"):
        """Stage model + optimizer state in host memory (training waits for this copy only) and
        write it in a background thread; returns the write's Future (DCP's async_save)."""
        import torch.distributed.checkpoint as dcp

        model_sd, optim_sd = self._state_dicts()
        return dcp.async_save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(ckpt_dir),
                              process_group=ctx.process_group, async_stager=ctx.stager, planner=ctx.planner)

    def load(self, ckpt_dir: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        model_sd, optim_sd = self._state_dicts()
        from .safe_dcp import SafeFileSystemReader, SafeLoadPlanner, check_metadata

        check_metadata(ckpt_dir)
        state = {"model": model_sd, "optimizer": optim_sd}
        # In place, each rank reads its own shards; through the restricted reader and planner
        # (a checkpoint's pickles must not run code: flip_scale/safe_load.py).
        dcp.load(state, storage_reader=SafeFileSystemReader(str(ckpt_dir)), planner=SafeLoadPlanner())
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"])

    @staticmethod
    def read_full_weights(ckpt_dir: Path) -> dict:
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

        from .safe_dcp import SafeEmptyStateDictLoadPlanner, SafeFileSystemReader, check_metadata

        # Every shard of "model" into plain tensors on THIS process. no_dist=True even when a
        # process group exists (init_from calls this on each rank): reading is local, never a
        # collective, so one rank alone can call it too.
        check_metadata(ckpt_dir)
        state: dict = {}
        _load_state_dict(state, storage_reader=SafeFileSystemReader(str(ckpt_dir)),
                         planner=SafeEmptyStateDictLoadPlanner(keys={"model"}), no_dist=True)
        return {_strip_wrappers(k): v for k, v in state["model"].items()}

    def load_model_weights(self, state_dict: dict) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # Every rank holds the full dict (read_full_weights on each); each keeps its own shards.
        set_model_state_dict(self.model, state_dict, options=StateDictOptions(full_state_dict=True, strict=True))

    def full_state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        # Collective: all ranks gather. cpu_offload=False keeps the result on every rank (with
        # offload only rank 0 would receive it); tensors are then moved to the CPU one by one.
        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        return {k: v.detach().cpu() for k, v in sd.items()}


class AsyncSaveContext:
    """What asynchronous saves reuse from one to the next (torchtitan's async_mode):

    - a gloo group of its own: the write thread's collectives (plan gather, finish) must not
      share a communicator with the training thread's, and DCP needs a CPU backend anyway;
    - a stager that copies into host buffers kept between saves (pinned on CUDA, so the copy is
      a fast DMA); staging is synchronous, so the copy is complete when save_async returns and
      training may modify the parameters again;
    - a planner with plan caching: from the second save on, ranks skip re-planning.
    """

    def __init__(self, device: torch.device):
        from torch.distributed.checkpoint import DefaultSavePlanner
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

        cuda = device.type == "cuda"
        self.process_group = dist.new_group(backend="gloo")
        self.stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                   use_async_staging=False, use_non_blocking_copy=cuda))
        self.planner = DefaultSavePlanner(enable_plan_caching=True)

    def close(self) -> None:
        self.stager.close()
