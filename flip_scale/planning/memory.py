"""Bytes per GPU: model states (partitioned by ZeRO stage / FSDP) plus activations.

Model states follow the ZeRO paper's accounting (Rajbhandari et al. 2020, 16 bytes per
parameter for mixed-precision Adam), adjusted to what our backends actually keep (see
flip_scale/distributed/backends/*.py). Activations are derived per ViT block from the tensors
autograd saves; tests/test_plan.py checks the derivation against the bytes torch really saves
for the tiny model (torch.autograd.graph.saved_tensors_hooks), on the CPU.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from ..models.masking import num_kept, num_text_kept
from ..models.sizes import ModelSize

GB = 1e9

# ---- model states -------------------------------------------------------------------------
# Bytes per parameter: (working weights, gradients, fp32 master weights, AdamW moments m+v).
# AdamW keeps both moments in fp32 (FLIP_FACTS.md "Pretraining recipe": "Moments in fp32").
STATE_BYTES = {
    # fp32 everywhere: the weights are their own master copy.
    "fp32": (4, 4, 0, 8),
    # single/ddp + bf16: autocast over fp32 weights; the bf16 weight copies live in autocast's
    # cache during forward (counted below as working copies), grads are fp32.
    ("bf16", "autocast"): (4, 4, 0, 8),
    # DeepSpeed + bf16: bf16 working weights and grads, fp32 master + moments inside ZeRO
    # (the ZeRO paper's 2 + 2 + 12 bytes).
    ("bf16", "deepspeed"): (2, 2, 4, 8),
    # FSDP2 + bf16 (MixedPrecisionPolicy param bf16, reduce fp32): the sharded fp32 parameters
    # are the master weights, sharded grads are fp32; bf16 copies exist only while gathered.
    ("bf16", "fsdp"): (4, 4, 0, 8),
}
# How many blocks FSDP holds gathered at once: the one computing plus one prefetched.
FSDP_INFLIGHT_BLOCKS = 2
# Which states each scheme partitions over the data-parallel ranks (ZeRO paper's stages).
PARTITIONED = {
    "none": (),
    "zero1": ("master", "moments"),
    "zero2": ("master", "moments", "grads"),
    "zero3": ("master", "moments", "grads", "weights"),
}
# Usable share of the card: the CUDA context, NCCL buffers and allocator fragmentation take the
# rest (PyTorch jobs usually hit OOM a few GB below the card's nominal size).
USABLE_MEMORY_FRACTION = 0.90

# ---- activations --------------------------------------------------------------------------
# Saved tensors of one pre-norm ViT block (timm Block), per token, in multiples of the width d:
#   norm1 input 1, qkv input 1, q/k/v (views of one qkv output) 3, attention output 1 (with a
#   fused kernel its [B, N, H, hd] layout makes proj's input a view of it), norm2 input 1,
#   fc1 input 1, GELU input r, fc2 input r   (r = MLP ratio 4)
# = 8 + 2r = 16 d per token: Korthikanti et al. 2022's 34 bytes per token x width in 16 bits,
# less their dropout masks. The two norm inputs are the residual stream.
RESIDUAL_MULTIPLES = 2


def compute_multiples(mlp_ratio: float) -> float:
    return 6 + 2 * mlp_ratio


# Per token and block, always fp32: LayerNorm mean + rstd for two norms; a fused (flash)
# attention kernel also keeps one log-sum-exp per head. The unfused (math) kernel saves the
# softmax output instead: heads x N x N per sample, the term flash attention removes.
NORM_STAT_FLOATS = 4
# Loss on a GPU (flip_scale/loss.py, fp32): per direction the log-softmax output, micro x global
# (the scale multiplies the features before the matmul, so the logits themselves are not kept);
# the features: this rank's rows and the same rows times the scale, for both towers, plus the
# gathered batch of each tower (measured in tests/test_plan.py).
LOSS_SAVED_MATRICES = 2
# Where the step's memory peaks (flip-scale plan --simulate: FSDPMemTracker over the real step of
# the paper layouts). At the start of the loss's backward no gradient exists yet (zero_grad sets
# them to None) and FSDP holds no gathered block, but every activation is saved and the backward
# of the two [micro, global] matmuls holds six [global, embed dim] fp32 matrices (the gradients of
# both gathered feature matrices, their reduce-scatter inputs and outputs): 1.61 GB for H/14 at a
# 64k batch, where the paper recipes peak. In the loss's forward the two [micro, global] logit
# matrices are alive together with the log-softmax outputs.
LOSS_BACKWARD_GLOBAL_MATRICES = 6
LOSS_FORWARD_LOGIT_MATRICES = 2
# The backward of a block needs room for the gradients of its activations besides what is
# saved: about a third of a block's saved activations more (simulated, FSDPMemTracker's
# temporaries in the first block's backward besides the recomputed block under checkpointing:
# B/16 0.36 of a block with 50% masking, 0.31 unmasked, 512 samples per GPU).
BACKWARD_WORKSPACE_BLOCKS = 0.3


@dataclass(frozen=True)
class ActivationDtypes:
    residual: int  # bytes of residual-stream elements (norm inputs)
    compute: int   # bytes of matmul / GELU inputs


def activation_dtypes(precision: str, backend: str) -> ActivationDtypes:
    if precision == "fp32":
        return ActivationDtypes(4, 4)
    if backend == "fsdp":
        # FSDP's policy casts block inputs to bf16 and there is no autocast: all bf16 inside.
        return ActivationDtypes(2, 2)
    # Autocast runs LayerNorm in fp32 and the residual adds promote to fp32; matmuls are bf16.
    return ActivationDtypes(4, 2)


def _per_token_bytes(width: int, mlp_ratio: float, dt: ActivationDtypes) -> tuple[float, float]:
    """One block's saved bytes per token, split (every token's qkv side, the rest): norm1's
    input and stats, the qkv input and its q/k/v output; then norm2's input and stats, the
    attention output, fc1's input, GELU's and fc2's inputs."""
    norm = width * dt.residual + NORM_STAT_FLOATS // 2 * 4
    qkv_side = norm + 4 * width * dt.compute
    return qkv_side, norm + (compute_multiples(mlp_ratio) - 4) * width * dt.compute


def block_bytes_per_sample(tokens: int, width: int, heads: int, mlp_ratio: float, dt: ActivationDtypes,
                           flash_attention: bool = True) -> float:
    """Bytes autograd keeps for one transformer block and one sample, without checkpointing."""
    per_token = sum(_per_token_bytes(width, mlp_ratio, dt))
    if flash_attention:
        return tokens * (per_token + heads * 4)
    return tokens * per_token + heads * tokens * tokens * dt.compute


def first_token_block_bytes_per_sample(tokens: int, width: int, heads: int, mlp_ratio: float,
                                      dt: ActivationDtypes, flash_attention: bool = True) -> float:
    """Bytes autograd keeps for the text tower's last block (models/towers.py FirstTokenBlock):
    the qkv side over every token, the rest for the first token only (one query row)."""
    qkv_side, rest = _per_token_bytes(width, mlp_ratio, dt)
    attention = heads * 4 if flash_attention else heads * tokens * dt.compute
    return tokens * qkv_side + rest + attention


def _tower_shapes(size: ModelSize, mask_ratio: float, text_length: int):
    """(tokens, width, heads, layers, last block computes the first token only) per tower."""
    image_tokens = num_kept(size.num_patches, mask_ratio) + 1
    return [(image_tokens, size.vision_width, size.vision_heads, size.vision_layers, False),
            (text_length, size.text_width, size.text_heads, size.text_layers, True)]


def activation_bytes_per_sample(size: ModelSize, mask_ratio: float, text_length: int, precision: str = "fp32",
                                backend: str = "single", checkpointing: bool = False,
                                flash_attention: bool = True, text_mask_ratio: float = 0.0) -> dict:
    """Activation bytes of one training sample (both towers), split into parts.

    With checkpointing each block keeps only its input (the residual stream) and one block at a
    time is recomputed in full during backward ('recompute' is that one block, per sample).
    """
    dt = activation_dtypes(precision, backend)
    text_length = num_text_kept(text_length, text_mask_ratio)  # text masking (Table 1c): kept tokens only
    blocks, recompute = 0.0, 0.0
    for tokens, width, heads, layers, first_token_last in _tower_shapes(size, mask_ratio, text_length):
        full = block_bytes_per_sample(tokens, width, heads, size.mlp_ratio, dt, flash_attention)
        last = (first_token_block_bytes_per_sample(tokens, width, heads, size.mlp_ratio, dt, flash_attention)
                if first_token_last else full)
        if checkpointing:
            blocks += layers * tokens * width * dt.residual
        else:
            blocks += (layers - 1) * full + last
        recompute = max(recompute, full)
    # Outside the blocks (measured on the tiny model): the pixels the patch embedding saves
    # (cast to the compute dtype under bf16); when masking, the gather keeps the full patch
    # sequence and the argsort ids; the final norms' inputs and stats (the text tower's last
    # block hands its norm the first token only, whose normed output the feature is); the
    # pooled image feature, the two L2 normalisations; the token ids.
    patches = size.num_patches
    image_tokens = num_kept(patches, mask_ratio) + 1
    dv, dtw = size.vision_width, size.text_width
    masking = patches * dv * dt.compute + patches * 8 if mask_ratio > 0 else 0
    stem = (3 * size.image_size ** 2 * dt.compute + masking
            + image_tokens * dv * dt.residual + dtw * (dt.residual + dt.compute)
            + (image_tokens + 1) * 2 * 4
            + dv * dt.compute + 4 * size.embed_dim * 4 + text_length * 8)
    return {"blocks": blocks, "stem": stem, "recompute": recompute if checkpointing else 0.0,
            "workspace": BACKWARD_WORKSPACE_BLOCKS * recompute,
            "total": blocks + stem + (recompute if checkpointing else 0.0)}


def loss_bytes(micro_batch: int, global_batch: int, embed_dim: int, gathered: bool = True,
               overlap_gather: bool = False) -> float:
    """fp32 bytes the loss keeps: this rank's rows against the whole (gathered) batch, both ways.
    gathered=False: one process, where the 'gathered' features are the local ones.
    overlap_gather: parallel.overlap_loss_gather, whose text rows are gathered before the L2
    normalisation, which keeps the un-normalised [global, D] matrix for its backward."""
    features = 4 * micro_batch + ((2 + overlap_gather) * global_batch if gathered else 0)
    return LOSS_SAVED_MATRICES * micro_batch * global_batch * 4 + features * embed_dim * 4


def loss_peak_extra_bytes(micro_batch: int, global_batch: int, embed_dim: int) -> dict:
    """Transient fp32 bytes on top of what the loss keeps, at its forward and backward peaks."""
    return {"loss forward": LOSS_FORWARD_LOGIT_MATRICES * micro_batch * global_batch * 4,
            "loss backward": LOSS_BACKWARD_GLOBAL_MATRICES * global_batch * embed_dim * 4}


# ---- parameters ---------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _param_counts_cached(size: ModelSize) -> dict:
    import torch

    from ..models.flip import FlipModel

    # Built on the meta device: exact counts from the real module, no memory, no init cost.
    with torch.device("meta"):
        model = FlipModel(size)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"total": count(model), "image": count(model.visual), "text": count(model.text),
            "largest_block": max(count(b) for b in model.transformer_blocks()),
            # per-tower block sizes and counts: the FSDP units the communication model gathers
            "image_block": count(model.visual.blocks[0]), "image_layers": len(model.visual.blocks),
            "text_block": count(model.text.blocks[0]), "text_layers": len(model.text.blocks),
            "outside_blocks": count(model) - sum(count(b) for b in model.transformer_blocks()),
            # parameter tensors: the gradient norm all-reduces one partial norm per tensor
            "tensors": len(list(model.parameters())),
            # (dim 0, numel) of each tensor: FSDP2 pads dim 0 to a multiple of the shard group
            # the logit scale: FSDP leaves it out, a replicated fp32 parameter (backends/fsdp.py)
            "replicated": model.logit_scale.numel(), "replicated_tensors": 1,
            "shapes": {"root": _shapes(p for name, p in model.named_parameters()
                                       if not name.startswith(("visual.blocks.", "text.blocks."))
                                       and name != "logit_scale"),
                       "image_block": _shapes(model.visual.blocks[0].parameters()),
                       "text_block": _shapes(model.text.blocks[0].parameters())}}


def _shapes(params) -> tuple:
    return tuple((p.shape[0] if p.dim() else 1, p.numel()) for p in params)


def param_counts(size: ModelSize) -> dict:
    """Parameter counts of the model (total, per tower, per block) and, under "shapes", the
    (dim 0, numel) of each tensor of the root and of one block of each tower."""
    return dict(_param_counts_cached(size))


# ---- the plan -----------------------------------------------------------------------------
@dataclass
class MemoryPlan:
    """Memory per GPU at the step's peak: each part is what is held at that moment (peak_at)."""

    scheme: str                 # none | zero1 | zero2 | zero3 (FSDP = zero3)
    world_size: int
    micro_batch: int
    weights_gb: float
    grads_gb: float             # 0 at the loss's peaks: no gradient exists before the towers' backward
    master_gb: float
    moments_gb: float
    working_copies_gb: float    # gathered bf16 blocks (FSDP/ZeRO-3) or autocast's weight cache
    activations_gb: float       # the towers' saved activations (with checkpointing: the block inputs)
    loss_gb: float              # what the loss saves for its backward (log-softmax outputs, features)
    workspace_gb: float         # temporaries at the peak: the loss's (at its peaks) or a block's backward
                                # (its gradient workspace; with checkpointing also the recomputed block)
    total_gb: float
    capacity_gb: float
    usable_gb: float
    fits: bool
    max_micro_batch: int
    activation_gb_per_sample: float
    checkpointing: bool
    peak_at: str = "loss backward"   # loss forward | loss backward | first block backward
    candidates_gb: dict = field(default_factory=dict)  # the total at each of those moments

    def as_dict(self) -> dict:
        return asdict(self)


def partition_scheme(backend: str, zero_stage: int | None) -> str:
    if backend == "fsdp":
        return "zero3"  # FSDP full sharding partitions weights, grads and optimizer state
    if backend == "deepspeed":
        return f"zero{zero_stage or 2}"  # the DeepSpeed backend's default stage is 2
    return "none"


def plan_memory(size: ModelSize, *, mask_ratio: float, text_length: int, precision: str, backend: str,
                zero_stage: int | None, checkpointing: bool, world_size: int, global_batch: int,
                capacity_gb: float, flash_attention: bool = True, text_mask_ratio: float = 0.0,
                shard_group: int | None = None, kept_gathered_params: int = 0,
                micro_batch: int | None = None, overlap_loss_gather: bool = False) -> MemoryPlan:
    """The peak of a step per GPU, the largest of three moments (where flip-scale plan --simulate
    finds it: the loss's backward for every paper recipe; a block's backward for small batches):
      loss forward / loss backward: the optimizer state, every saved activation, what the loss
        saves and its transient matrices; no gradient yet (the last step's were set to None), no
        gathered block (FSDP re-gathers in backward), autocast's cache gone (the loss runs outside it);
      first block backward: gradients, the gathered blocks in flight, all activations (with
        checkpointing: the recomputed block, once) and the block's backward workspace.
    shard_group: ranks that partition one model copy (HSDP); None = all ranks.
    micro_batch: train.micro_batch_size (contrastive micro-batching): the towers' activations are
    those of one micro batch, the loss still spans the whole local batch (its cached features).
    kept_gathered_params: block parameters FSDP keeps gathered from forward to backward
    (parallel.reshard_after_forward false for their tower), held in the compute dtype.
    overlap_loss_gather: the loss keeps one more [global, D] matrix (loss_bytes)."""
    scheme = partition_scheme(backend, zero_stage)
    shard_ranks = shard_group or world_size
    counts = param_counts(size)
    n = counts["total"]
    if precision == "fp32":
        w, g, m, mo = STATE_BYTES["fp32"]
    else:
        w, g, m, mo = STATE_BYTES[("bf16", backend if backend in ("deepspeed", "fsdp") else "autocast")]
    split = PARTITIONED[scheme]
    if backend == "fsdp":
        # FSDP2 pads each tensor's dim 0 to a multiple of the shard group: shards hold the padding.
        from .comm import fsdp_units

        n = sum(u for _, u in fsdp_units(counts, 1, shard_ranks))
    shard = lambda name, b: n * b / (shard_ranks if name in split else 1) / GB  # noqa: E731
    weights, grads, master, moments = shard("weights", w), shard("grads", g), shard("master", m), shard("moments", mo)
    if backend == "fsdp":  # the replicated logit scale, whole on every rank: fp32, its gradient, AdamW m, v
        rep = counts.get("replicated", 0)
        weights, grads, moments = weights + rep * 4 / GB, grads + rep * 4 / GB, moments + rep * 8 / GB
    # torch's AdamW keeps its step count as one fp32 tensor per parameter tensor
    moments += counts["tensors"] * 4 / GB if backend != "deepspeed" else 0.0
    compute_bytes = 2 if precision == "bf16" else 4
    kept = kept_gathered_params * compute_bytes / GB
    if scheme == "zero3":
        # Gathered copies of the blocks in flight (weights in the compute dtype, their fp32
        # grads before reduce-scatter), plus the root (embeddings, norms, heads) kept gathered.
        working = (FSDP_INFLIGHT_BLOCKS * counts["largest_block"] * (compute_bytes + 4)
                   + counts["outside_blocks"] * compute_bytes) / GB + kept
    elif precision == "bf16" and backend not in ("deepspeed",):
        working = n * 2 / GB  # autocast caches a bf16 copy of every weight during forward
    else:
        working = 0.0
    # DeepSpeed's ZeRO-1/2 keep their gradient partitions allocated across steps; torch's set to None.
    loss_grads = grads if backend == "deepspeed" else 0.0
    # FSDP: in the first block's backward no sharded gradient exists yet (its unsharded fp32
    # gradient is in `working`); the others hold all of theirs by then (DDP's buckets, ZeRO's partitions).
    block_grads = 0.0 if backend == "fsdp" else grads
    act = activation_bytes_per_sample(size, mask_ratio, text_length, precision, backend, checkpointing,
                                      flash_attention, text_mask_ratio)
    local = global_batch // world_size
    micro = min(micro_batch, local) if micro_batch else local
    D = size.embed_dim

    def moments_at(m_local: int, m_micro: int) -> dict:
        """{moment: (grads, working, activations, loss, workspace)} in GB."""
        saved = act["total"] - act["recompute"]  # forward saves no recomputed block
        loss = loss_bytes(m_local, global_batch, D, overlap_gather=overlap_loss_gather) / GB
        extra = loss_peak_extra_bytes(m_local, global_batch, D)
        # By the loss backward's peak the log-softmax outputs and the gathered features have been
        # used and freed; the local rows and the overlap's un-normalised text matrix remain.
        loss_at_backward = (4 * m_local + overlap_loss_gather * global_batch) * D * 4 / GB
        # The block's gradient workspace; with checkpointing besides the recomputed block itself.
        block_ws = act["workspace"]
        return {
            "loss forward": (loss_grads, kept, saved * m_micro / GB, loss, extra["loss forward"] / GB),
            "loss backward": (loss_grads, kept, saved * m_micro / GB, loss_at_backward, extra["loss backward"] / GB),
            # The recomputed block is built during backward: a temporary, as the tracker counts it.
            "first block backward": (block_grads, working, saved * m_micro / GB, 0.0,
                                     (act["recompute"] + block_ws) * m_micro / GB),
        }

    fixed = weights + master + moments

    def peak(m_local: int, m_micro: int) -> tuple[str, float, dict, tuple]:
        """(moment, its total, every moment's total, the moment's parts)."""
        at = moments_at(m_local, m_micro)
        totals = {k: fixed + sum(v) for k, v in at.items()}
        where = max(totals, key=totals.get)
        return where, totals[where], totals, at[where]

    where, total, candidates, (gr, work, activations, loss, workspace) = peak(local, micro)
    usable = capacity_gb * USABLE_MEMORY_FRACTION
    # The largest per-GPU batch whose whole step fits (the loss over the global batch as given).
    lo, hi = 0, 1
    while peak(hi, hi)[1] <= usable and hi < 1 << 24:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid, mid)[1] <= usable else (lo, mid)
    return MemoryPlan(scheme, world_size, micro, weights, gr, master, moments, work, activations, loss,
                      workspace, total, capacity_gb, usable, total <= usable, lo,
                      act["total"] / GB, checkpointing, where, candidates)


def towers_kept_gathered(size: ModelSize, *, mask_ratio: float, text_length: int, precision: str,
                         checkpointing: bool, world_size: int, global_batch: int, capacity_gb: float,
                         shard_group: int | None = None, flash_attention: bool = True,
                         text_mask_ratio: float = 0.0) -> dict:
    """parallel.reshard_after_forward: auto. Which towers' gathered block parameters (compute
    dtype) fit in what the FSDP plan leaves free of the card, next to the activations: those skip
    the re-gather in backward. The smaller tower (text) is tried first."""
    plan = plan_memory(size, mask_ratio=mask_ratio, text_length=text_length, precision=precision, backend="fsdp",
                       zero_stage=None, checkpointing=checkpointing, world_size=world_size,
                       global_batch=global_batch, capacity_gb=capacity_gb, flash_attention=flash_attention,
                       text_mask_ratio=text_mask_ratio, shard_group=shard_group)
    counts = param_counts(size)
    per_param = 2 if precision == "bf16" else 4
    free = plan.usable_gb - plan.total_gb
    keep = {}
    for tower in ("text", "image"):
        need = counts[f"{tower}_block"] * counts[f"{tower}_layers"] * per_param / GB
        keep[tower] = need <= free
        if keep[tower]:
            free -= need
    return keep


def resolve_reshard(cfg, world: int, capacity_gb: float | None) -> dict:
    """parallel.reshard_after_forward per tower ({"image": bool, "text": bool}): true / false as
    given; auto reshards a tower unless its gathered block parameters fit next to the
    activations on a card of capacity_gb (None, e.g. on CPU: no card to plan against, so
    reshard, the memory-safe choice)."""
    from ..models.sizes import get_size

    value = cfg.parallel.reshard_after_forward
    if isinstance(value, bool):
        return {"image": value, "text": value}
    if capacity_gb is None:
        return {"image": True, "text": True}
    m = cfg.model
    size = get_size(m.name, image_size=cfg.data.image_size, text_length=m.text_length)
    keep = towers_kept_gathered(size, mask_ratio=m.mask_ratio, text_length=m.text_length,
                                precision=cfg.parallel.precision, checkpointing=cfg.parallel.activation_checkpointing,
                                world_size=world, global_batch=cfg.train.global_batch_size, capacity_gb=capacity_gb,
                                shard_group=cfg.parallel.shard_group_size, text_mask_ratio=m.text_mask_ratio)
    return {tower: not kept for tower, kept in keep.items()}
