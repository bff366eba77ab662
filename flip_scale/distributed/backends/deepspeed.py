"""DeepSpeed ZeRO stage 1, 2 or 3 behind the Backend interface (Lightning Fabric's pattern).

DeepSpeed owns backward, the optimizer step and gradient clipping; its config is GENERATED from
ours (`deepspeed_config`), never kept beside it. The optimizer is ours (AdamW with FLIP's decay
groups) handed to the engine: DeepSpeed's FusedAdam on CUDA, torch's AdamW elsewhere. There is
no DeepSpeed scheduler: the trainer sets the lr every step through `step(lr)`.

Precision: with bf16 DeepSpeed keeps bf16 working weights and fp32 master weights inside the
ZeRO optimizer. The logit scale reaches the loss from its fp32 master (FlipModel.logit_scale_fp32). Autocast is off: the weights already are bf16, and CPU autocast cannot mix
fp32 LayerNorm inputs with bf16 weights. Instead the image input and each block's input are
cast to bf16 (bf16_inputs.py); the masking noise keeps its float64.

On CPU (tests, the demo machine) DeepSpeed selects its CPU accelerator by itself when no GPU is
visible (DS_ACCELERATOR=cpu forces it) and reuses the gloo process group the trainer opened.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ...models.towers import LOGIT_SCALE_MAX
from ...safe_load import UnsafeCheckpoint, forced_weights_only, trusted, unsupported_global
from ..collectives import any_rank
from .base import Backend
from .bf16_inputs import cast_block_inputs, cast_image_input
from .process_group import ensure_process_group

COMM_BYTES = 4  # gradients are reduced in fp32 (communication_data_type), in bf16 and fp32 runs alike
TAG = "deepspeed"  # checkpoint sub-folder: ckpt_dir/deepspeed/{mp_rank_00_model_states.pt, ...}
_WRAPPER_PREFIXES = ("_checkpoint_wrapped_module.", "_orig_mod.", "module.")


def _strip_wrappers(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _forget_cached_groups() -> None:
    """DeepSpeed caches process-group handles module-wide (deepspeed.utils.groups). A second
    engine in the same Python process (tests; a notebook that pre-trains then tunes) after the
    trainer destroyed the first group would reuse dead handles; they are rebuilt lazily."""
    from deepspeed.utils import groups

    for name, value in list(vars(groups).items()):
        if name.startswith("_") and name.isupper() and name.endswith(("_GROUP", "_RANKS", "_WORLD_SIZE", "_RANK")):
            setattr(groups, name, {} if isinstance(value, dict) else None)


def deepspeed_config(cfg, world_size: int) -> dict:
    """Our recipe -> DeepSpeed's JSON config."""
    t, p = cfg.train, cfg.parallel
    bf16 = p.precision == "bf16"
    stage = p.zero_stage or 2
    # Buckets are counted in elements; gradients travel in fp32 (communication_data_type below).
    bucket = int(p.bucket_mb * 1e6 / COMM_BYTES)
    zero = {"stage": stage,
            # Reduce each bucket as soon as backward fills it, on a side stream, so the reduction
            # runs under the rest of backward (off, the reduces run synchronously in backward).
            "overlap_comm": p.overlap_comm,
            "contiguous_gradients": True,
            "reduce_scatter": True,  # reduce-scatter, not all-reduce: each rank keeps its partition
            "reduce_bucket_size": bucket}
    if stage == 3:
        zero["stage3_prefetch_bucket_size"] = bucket
    else:
        zero["allgather_bucket_size"] = bucket  # the post-step all-gather of updated weights
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.global_batch_size // world_size,
        # A contrastive batch must be one batch (more negatives); accumulation would change the loss.
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.grad_clip,  # 0 disables, like ours
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # Reduce gradients in fp32, as FSDP's MixedPrecisionPolicy(reduce_dtype=fp32) does: the
        # contrastive gradient is averaged over many ranks and bf16 sums lose small terms.
        "communication_data_type": "fp32",
        # Our AdamW is not on DeepSpeed's tested list; ZeRO only partitions its state.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


def deepspeed_checkpoint_globals() -> list:
    """What a DeepSpeed checkpoint written by this backend pickles besides tensors and plain
    containers (listed from real ZeRO-1/2/3 checkpoints on CPU, DeepSpeed 0.19): the optimizer
    state's loss scaler, ZeRO stage enum and fragment addresses. Each is a plain record."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def restricted_deepspeed_load(ckpt_dir: Path):
    """DeepSpeed's loaders call torch.load(weights_only=False); inside this every torch.load is
    weights_only with the allow-list above, unless --trust-checkpoint was given. A file that
    needs more was not written by this project: refused with one line saying how to proceed."""
    if trusted():
        yield
        return
    try:
        with forced_weights_only(deepspeed_checkpoint_globals()):
            yield
    except pickle.UnpicklingError as e:
        name = unsupported_global(e) or "a name outside torch's weights_only allow-list"
        raise UnsafeCheckpoint(f"{ckpt_dir}: refusing to load this DeepSpeed checkpoint: it references {name}, "
                               f"which flip-scale's DeepSpeed checkpoints never contain (unpickling it could run "
                               f"code); if you trust its source, pass --trust-checkpoint") from None


class DeepSpeedBackend(Backend):
    name = "deepspeed"
    # ZeRO partitions optimizer state by rank; a different world size needs DeepSpeed's offline
    # universal-checkpoint conversion (ds_to_universal.py), so resume is same-world-size only.
    supports_resharding = False

    @property
    def zero_stage(self) -> int:
        return self.cfg.parallel.zero_stage or 2

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.cfg.parallel.precision == "bf16":
            cast_image_input(model)
            cast_block_inputs(model)
        return model.to(self.device)  # the engine is built with the optimizer, in build_optimizer

    def autocast(self):
        return contextlib.nullcontext()  # see the module docstring

    def build_optimizer(self, groups: list[dict]) -> None:
        import deepspeed

        ensure_process_group(self.device)  # DeepSpeed reuses an existing torch.distributed group
        # DeepSpeed insists on LOCAL_RANK even when handed a ready group (a plain 1-process run).
        os.environ.setdefault("LOCAL_RANK", str(self.denv.local_rank))
        _forget_cached_groups()
        t = self.cfg.train
        optimizer = None
        if self.device.type == "cuda":
            try:
                from deepspeed.ops.adam import FusedAdam

                optimizer = FusedAdam(groups, lr=0.0, betas=(t.beta1, t.beta2), eps=t.eps, adam_w_mode=True)
            except Exception as err:  # noqa: BLE001 - its CUDA op is JIT-built; no toolkit, no FusedAdam
                print(f"DeepSpeed FusedAdam unavailable ({type(err).__name__}: {err}); using torch's fused AdamW",
                      file=sys.stderr)
        if optimizer is None:
            fused = self.device.type == "cuda"
            optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused,
                                          foreach=None if fused else True)
        config = deepspeed_config(self.cfg, dist.get_world_size())
        config = {k: v for k, v in config.items() if v is not None}
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=config,
                                                          dist_init_required=False)
        self.engine = engine
        self.module = engine  # the trainer calls the engine's forward
        self.optimizer = ds_optimizer
        if self.cfg.parallel.precision == "bf16":
            # The bf16 working copy of ln(temperature) has a 2^-5 spacing near ln 100: the loss
            # would see exp() in 3% steps, ceiling 99.0. The model reads the fp32 master instead.
            self.model.logit_scale_master = self._logit_scale_master

    def _logit_scale_master(self) -> torch.Tensor | None:
        """The fp32 master of ln(temperature), on every rank: a one-element all-reduce (ZeRO 1/2)
        or all-gather (ZeRO 3) inside forward, which every rank runs alike."""
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(self.model.logit_scale)

    # -- step -------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed's engine has no device-side skip for bf16/fp32 steps (only fp16 loss scaling
        # skips), so a non-finite loss is agreed on the host here, before backward: this is the
        # one per-step host sync that remains, and only under DeepSpeed. A skipped step never
        # enters backward, so the engine's gradient buffers stay clean.
        self._skip = any_rank(~torch.isfinite(loss.detach()).reshape(1))[0]
        if not self._skip:
            self.engine.backward(loss)

    def step(self, lr: float) -> torch.Tensor:
        if self._skip:
            self.engine.zero_grad()
            return torch.tensor(float("nan"), device=self.device)
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr
        self.engine.step()  # clips (config), steps, zeroes the gradients
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return torch.tensor(float("nan"))
        # A device tensor in some ZeRO stages, a float in others: keep a tensor as it is, so
        # the host waits for it only on log steps.
        return norm.detach() if isinstance(norm, torch.Tensor) else torch.tensor(float(norm))

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def clamp_logit_scale(self) -> None:
        """Clamp the working copy AND the fp32 master copy (the next step overwrites the
        working copy from the master, so clamping only the former would be undone). Elementwise,
        so each rank clamps just the piece it holds: no communication."""
        p = self.model.logit_scale
        with torch.no_grad():
            if self.zero_stage == 3:
                from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param

                p.ds_tensor.data.clamp_(0.0, LOGIT_SCALE_MAX)
                if p.data.numel():  # a persistent (small, never partitioned) parameter
                    p.data.clamp_(0.0, LOGIT_SCALE_MAX)
                master = safe_get_local_fp32_param(p)
                if master is not None and master.numel():
                    safe_set_local_fp32_param(p, master.clamp(0.0, LOGIT_SCALE_MAX))
            else:
                p.data.clamp_(0.0, LOGIT_SCALE_MAX)
                mapping = getattr(p, "_hp_mapping", None)
                if mapping is not None:  # None on ranks whose partition holds none of it
                    mapping.get_hp_fragment().clamp_(0.0, LOGIT_SCALE_MAX)

    def logit_scale(self) -> float:
        from deepspeed.utils import safe_get_full_fp32_param

        value = safe_get_full_fp32_param(self.model.logit_scale)  # collective for ZeRO
        value = self.model.logit_scale.detach() if value is None else value
        return float(value.float().exp().max())

    # -- checkpoints ------------------------------------------------------------------------
    def save(self, ckpt_dir: Path) -> None:
        # Collective: every rank writes its optimizer partition (never a rank-0-only save).
        # save_latest=False: the checkpoint folder itself is the unit; our `latest` pointer
        # lives one level up and moves only after the whole folder is complete.
        self.engine.save_checkpoint(str(ckpt_dir), tag=TAG, save_latest=False)

    def load(self, ckpt_dir: Path) -> None:
        with restricted_deepspeed_load(ckpt_dir):
            path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag=TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"{ckpt_dir}: no DeepSpeed checkpoint under tag {TAG!r}")

    @staticmethod
    def read_full_weights(ckpt_dir: Path) -> dict:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # Merges every rank's fp32 partitions (any ZeRO stage) on this one process, no group.
        with restricted_deepspeed_load(ckpt_dir):
            state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=TAG)
        return {_strip_wrappers(k): v for k, v in state.items()}

    def _named_params(self) -> dict:
        return {_strip_wrappers(n): p for n, p in self.model.named_parameters()}

    def full_state_dict(self) -> dict:
        """fp32 master weights (not the bf16 working copies), gathered on every rank."""
        from deepspeed.utils import safe_get_full_fp32_param

        params = self._named_params()
        out = {}
        # state_dict() order is the same on every rank, so the per-parameter collectives match.
        for name, value in self.model.state_dict().items():
            p = params.get(name)
            full = safe_get_full_fp32_param(p) if p is not None else None
            out[name] = (value if full is None else full.reshape(p.ds_shape if hasattr(p, "ds_shape") else p.shape))
            out[name] = out[name].detach().cpu().clone()
        return out

    def load_model_weights(self, state_dict: dict) -> None:
        """init_from: set the working weights and the fp32 masters (ZeRO built them already)."""
        import deepspeed
        from deepspeed.utils import safe_set_full_fp32_param

        params = self._named_params()
        buffers = {_strip_wrappers(n): b for n, b in self.model.named_buffers()}
        missing = sorted((set(params) | set(buffers)) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(params) - set(buffers))
        if missing or unexpected:
            raise ValueError(f"init_from weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        with torch.no_grad():
            gathered = (deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0)
                        if self.zero_stage == 3 else _nullcontext())
            with gathered:  # stage 3: full working params here, re-partitioned on exit
                for name, p in params.items():
                    p.data.copy_(state_dict[name].to(p.device, p.dtype).reshape(p.shape))
            for name, p in params.items():
                full = state_dict[name].to(p.device, torch.float32)
                if self.zero_stage == 3:
                    _set_zero3_fp32_partition(p, full)
                else:
                    safe_set_full_fp32_param(p, full)
            for name, b in buffers.items():
                b.copy_(state_dict[name])


def _set_zero3_fp32_partition(p: torch.nn.Parameter, full: torch.Tensor) -> None:
    """This rank's piece of a ZeRO-3 parameter's fp32 master, from the full value.

    DeepSpeed's set_full_hp_param narrows the UNPADDED full value at rank x (padded partition
    size), which runs past its end on the last ranks of a parameter whose size the world does
    not divide (the one-element logit scale on 2 ranks: "start (1) + length (1) exceeds dimension
    size (1)"). Here the piece is cut from the full value and zero-padded to the partition.
    """
    from deepspeed.utils import safe_set_local_fp32_param

    if not p.requires_grad:
        return
    n = p.ds_tensor.numel()  # the padded partition every rank holds
    rank = p._z3_optimizer._get_param_partition_rank(p)  # DeepSpeed's own rule for the partition group
    flat = full.flatten()
    piece = torch.zeros(n, dtype=torch.float32, device=full.device)
    start = min(rank * n, flat.numel())
    stop = min(start + n, flat.numel())
    piece[: stop - start] = flat[start:stop]
    safe_set_local_fp32_param(p, piece)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
