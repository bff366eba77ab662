"""Communication per training step: bytes per rank, by backend and layout, and the time of it
that compute does not hide.

Byte counts are those of ring collectives (NCCL's algorithm for all-gather and reduce-scatter,
and for large all-reduces): over a group of n ranks, an all-gather whose output is S bytes and
a reduce-scatter whose input is S bytes each make every rank send (and receive) (n-1)/n * S;
an all-reduce of S bytes is both, 2 (n-1)/n * S. "Bytes per rank" below is what each rank
sends per step.

What each layout moves (N parameters, p bytes each in the compute dtype: 2 under bf16, 4 in
fp32; gradients are reduced in fp32, 4 bytes, by every backend here):
  ddp          all-reduce of the fp32 gradients (25 MB buckets, DDP's default)
  fsdp         per FSDP unit: all-gather in forward; again in backward for the units that
               reshard after forward (parallel.reshard_after_forward) and for the root
               (embeddings, heads: measured); reduce-scatter of the gradients
  hsdp         fsdp within a shard group of G ranks, plus an all-reduce of each rank's gradient
               shard (N/G) across the W/G replicas
  zero1/zero2  all-reduce of the gradient buckets during backward (DeepSpeed's default
               use_multi_rank_bucket_allreduce; each rank keeps its partition), all-gather of the
               updated bf16 weights after the optimizer step (DeepSpeed's stage 1/2 optimizer)
  zero3        like fsdp (gather forward and backward, reduce-scatter) over all ranks
  loss         each tower's features [global batch, D] fp32 all-gathered in forward; their
               gradient reduce-scattered in backward (flip_scale/loss.py, open_clip's form)

Time of one collective = latency + bytes per rank / link bandwidth. The latency is NCCL's own
tuning model for a ring (NVIDIA/nccl src/graph/tuning.cc, ring / Simple protocol): a base plus
a per-hop latency for each of the n-1 steps, network hops for the steps that cross nodes and
NVLink hops for the rest. A group inside one node runs on NVLink; a group that spans nodes runs
at the per-GPU network bandwidth (one NIC per GPU, rail-optimised, as on H100 clusters).

Overlap (what is exposed): FSDP and ZeRO-3 prefetch the next unit's all-gather during the
current unit's compute and reduce-scatter during the previous unit's backward, so only the
part of each phase's communication longer than that phase's compute is exposed, plus the first
gather of forward (nothing to hide it) and the last reduce of backward. DDP and DeepSpeed with
overlap_comm hide their gradient reduction under backward the same way. DeepSpeed without
overlap_comm reduces each bucket synchronously inside backward (all exposed), and ZeRO-1/2's
all-gather after the optimizer step is always exposed. The loss's feature gather sits between
the towers' forward and the loss, with nothing to run under it: exposed, unless overlapped.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

# NCCL's ring latencies (us), Simple protocol (src/graph/tuning.cc): base, per NVLink hop, per
# network hop. Simple is NCCL's protocol for the MB-sized messages that dominate here.
NCCL_RING_BASE_US = 8.4
NCCL_RING_NVLINK_HOP_US = 3.4
NCCL_RING_NET_HOP_US = 9.6
# Fraction of the link's line rate that NCCL's large collectives reach (bus bandwidth): nccl-tests
# typically report 80-90% of line rate for large messages; the planner takes the middle.
LINK_EFFICIENCY = 0.85
# DDP's default gradient bucket (torch.nn.parallel.DistributedDataParallel bucket_cap_mb).
DDP_BUCKET_MB = 25
# DeepSpeed's default reduce / all-gather bucket: 5e8 elements (zero_optimization.reduce_bucket_size).
DEEPSPEED_DEFAULT_BUCKET_ELEMENTS = 500_000_000
GRAD_BYTES = 4  # gradients are reduced in fp32 by every backend (see the backends' docstrings)
FEATURE_BYTES = 4  # the loss gathers fp32 features


@dataclass(frozen=True)
class Link:
    """Per-GPU bandwidths, in bytes/s (converted from Gb/s by the caller)."""

    network_bytes_per_s: float
    nvlink_bytes_per_s: float


def gbps_to_bytes(gbps: float) -> float:
    return gbps * 1e9 / 8


@dataclass
class Collective:
    name: str          # e.g. "forward all-gather"
    kind: str          # all_gather | reduce_scatter | all_reduce
    phase: str         # forward | backward | step | loss_forward | loss_backward
    group: int         # ranks in the group
    nodes: int         # nodes the group spans
    total_bytes: float  # S summed over the calls (all-gather output / reduce-scatter input / all-reduce size)
    calls: int          # how many collectives of this kind per step (for the latency term)
    largest_call_bytes: float = 0.0  # S of the largest single call (the non-overlappable first/last)

    @property
    def factor(self) -> float:
        if self.group <= 1:
            return 0.0
        ring = (self.group - 1) / self.group
        return 2 * ring if self.kind == "all_reduce" else ring

    @property
    def bytes_per_rank(self) -> float:
        return self.factor * self.total_bytes

    def latency_s(self) -> float:
        return self.calls * ring_latency_s(self.group, self.nodes, self.kind)

    def seconds(self, link: Link) -> float:
        if self.group <= 1:
            return 0.0
        return self.latency_s() + self.bytes_per_rank / bandwidth(link, self.nodes)

    def one_call_seconds(self, link: Link) -> float:
        """The largest single call (the first gather / last reduce that nothing hides)."""
        if self.group <= 1 or self.calls == 0:
            return 0.0
        return (ring_latency_s(self.group, self.nodes, self.kind)
                + self.factor * self.largest_call_bytes / bandwidth(link, self.nodes))

    def as_dict(self, link: Link) -> dict:
        return {**asdict(self), "bytes_per_rank": self.bytes_per_rank, "seconds": self.seconds(link)}


def ring_latency_s(group: int, nodes: int, kind: str) -> float:
    """NCCL's ring latency model: base + intra-node hops x NVLink hop + inter-node hops x net hop."""
    if group <= 1:
        return 0.0
    steps, inter = group - 1, max(nodes - 1, 0)
    if kind == "all_reduce":
        steps, inter = 2 * steps, 2 * inter
    us = NCCL_RING_BASE_US + (steps - inter) * NCCL_RING_NVLINK_HOP_US + inter * NCCL_RING_NET_HOP_US
    return us * 1e-6


def bandwidth(link: Link, nodes: int) -> float:
    raw = link.network_bytes_per_s if nodes > 1 else link.nvlink_bytes_per_s
    return raw * LINK_EFFICIENCY


@dataclass(frozen=True)
class Layout:
    """How a run spreads over ranks, as the communication model needs it."""

    backend: str                   # single | ddp | fsdp | deepspeed
    world: int
    gpus_per_node: int
    precision: str = "bf16"
    zero_stage: int | None = None  # deepspeed only (None = 2, the backend's default)
    shard_group: int | None = None  # fsdp: ranks sharding one copy (HSDP); None = all ranks
    reshard_after_forward: bool | tuple = True  # or per tower: (("image", bool), ("text", bool))
    blocks_per_unit: int = 1       # text blocks per FSDP unit
    overlap_comm: bool = False     # deepspeed: reduce under backward
    bucket_bytes: float | None = None  # deepspeed bucket of fp32 gradients (parallel.bucket_mb); None = DeepSpeed's default
    overlap_loss_gather: bool = False  # text features' gather runs under the image tower's forward

    @property
    def scheme(self) -> str:
        if self.backend == "fsdp":
            return "hsdp" if self.shard_group and self.shard_group < self.world else "fsdp"
        if self.backend == "deepspeed":
            return f"zero{self.zero_stage or 2}"
        return "ddp" if self.world > 1 else "single"

    def reshards(self, tower: str) -> bool:
        if isinstance(self.reshard_after_forward, bool):
            return self.reshard_after_forward
        return dict(self.reshard_after_forward)[tower]

    @property
    def param_bytes(self) -> int:
        return 2 if self.precision == "bf16" else 4

    def nodes_spanned(self, group: int, stride: int = 1) -> int:
        """Nodes a group of `group` ranks spans: consecutive ranks (stride 1) fill a node first;
        a replicate group (stride = shard group size) takes one rank per shard group."""
        if stride == 1:
            return max(1, math.ceil(group / self.gpus_per_node))
        per_node = max(1, self.gpus_per_node // stride)  # shard groups that fit in one node
        return max(1, math.ceil(group / per_node))


def _padded(counts: dict, part: str, shard: int | None) -> int:
    """Parameters of one block / the root as FSDP2 holds them: each tensor sharded on dim 0,
    padded to a multiple of the shard group (fully_shard's chunking; the collectives move the
    padding too). Without dim-0 shapes in counts (or shard None): the plain count."""
    shapes = counts.get("shapes", {}).get(part)
    if not shard or shapes is None:
        return counts[part] if part != "root" else _root(counts) - (counts.get("replicated", 0) if shard else 0)
    return sum(-(-d0 // shard) * shard * (numel // d0) for d0, numel in shapes)


def _root(counts: dict) -> int:
    # The root is everything but the two towers' blocks (a reconstruction decoder stays in it).
    return counts["total"] - counts["image_block"] * counts["image_layers"] - counts["text_block"] * counts["text_layers"]


def fsdp_units(counts: dict, blocks_per_unit: int = 1, shard: int | None = None) -> list[tuple[str, int]]:
    """FSDP units in forward order, (name, parameters): the root (everything outside the
    blocks) first, then the image blocks one by one, then the text blocks grouped. shard: the
    shard group size, for FSDP2's per-tensor padding (None: unpadded, as ZeRO-3 counts)."""
    units = [("root", _padded(counts, "root", shard))]
    units += [("image_block", _padded(counts, "image_block", shard))] * counts["image_layers"]
    text_block = _padded(counts, "text_block", shard)
    n_text = counts["text_layers"]
    full, rest = divmod(n_text, blocks_per_unit)
    units += [("text_unit", text_block * blocks_per_unit)] * full
    if rest:
        units.append(("text_unit", text_block * rest))
    return units


def _sharded(layout: Layout, counts: dict, group: int, nodes: int) -> list[Collective]:
    """FSDP / ZeRO-3 collectives over a shard group."""
    zero3 = layout.backend == "deepspeed"
    units = fsdp_units(counts, 1, None) if zero3 else fsdp_units(counts, layout.blocks_per_unit, group)
    p, n = layout.param_bytes, sum(u for _, u in units)
    block_units = [u for name, u in units if name != "root"]
    # Backward gathers again every unit that resharded after forward, and always the root:
    # ZeRO-3 releases every partitioned parameter after use, and FSDP2 (torch 2.14) re-gathers
    # our root in backward although it is wrapped with reshard_after_forward=False (measured on
    # gloo, tests/test_hsdp.py, with and without block resharding).
    tower = {"root": None, "image_block": "image", "text_unit": "text"}
    regathered = [u for name, u in units if zero3 or name == "root" or layout.reshards(tower[name])]
    out = [Collective("all-gather (forward)", "all_gather", "forward", group, nodes, n * p, len(units),
                      max(units[0][1], max(block_units, default=0)) * p)]
    out.append(Collective("all-gather (backward)", "all_gather", "backward", group, nodes,
                          sum(regathered) * p, len(regathered), max(regathered, default=0) * p))
    # Backward ends with the root's reduce-scatter: the last one, with no compute after it.
    out.append(Collective("reduce-scatter (gradients)", "reduce_scatter", "backward", group, nodes,
                          n * GRAD_BYTES, len(units), units[0][1] * GRAD_BYTES))
    return out


def _grad_norm(counts: dict, group: int, nodes: int) -> Collective:
    """FSDP's gradient norm (Backend.clip_grad_norm): one fp32 partial norm per parameter tensor,
    all-reduced once over the shard group (the replicas hold the same reduced shards)."""
    # (the replicated logit scale's norm is whole on every rank: not in the all-reduce)
    nbytes = (counts["tensors"] - counts.get("replicated_tensors", 0)) * 4
    return Collective("all-reduce (gradient norm)", "all_reduce", "step", group, nodes, nbytes, 1, nbytes)


def _replicated(counts: dict, world: int, nodes: int) -> list[Collective]:
    """The parameters FSDP leaves out (the fp32 logit scale): their gradients all-reduced once a
    step over every rank (FSDPBackend.step)."""
    nbytes = counts.get("replicated", 0) * GRAD_BYTES
    if not nbytes:
        return []
    return [Collective("all-reduce (replicated gradients: logit scale)", "all_reduce", "step", world, nodes,
                       nbytes, 1, nbytes)]


def collectives(layout: Layout, counts: dict, global_batch: int, embed_dim: int) -> list[Collective]:
    """Every collective of one training step (flip-scale plan --simulate lists the same ones)."""
    w, n = layout.world, counts["total"]
    all_nodes = layout.nodes_spanned(w)
    out: list[Collective] = []
    scheme = layout.scheme
    if scheme == "ddp":
        bucket = DDP_BUCKET_MB * 1e6
        out.append(Collective("all-reduce (gradients)", "all_reduce", "backward", w, all_nodes, n * GRAD_BYTES,
                              math.ceil(n * GRAD_BYTES / bucket), min(bucket, n * GRAD_BYTES)))
    elif scheme in ("fsdp", "zero3"):
        out += _sharded(layout, counts, w, all_nodes)
        if scheme == "fsdp":
            out.append(_grad_norm(counts, w, all_nodes))
            out += _replicated(counts, w, all_nodes)
    elif scheme == "hsdp":
        g = layout.shard_group
        replicas = w // g
        out += _sharded(layout, counts, g, layout.nodes_spanned(g))
        units = fsdp_units(counts, layout.blocks_per_unit, g)
        # Each unit's gradient shard (N_unit / G) is all-reduced over the replicas after its
        # reduce-scatter (FSDP2's HSDP order), on the replicate dimension of the mesh.
        out.append(Collective("all-reduce (gradient shards, across replicas)", "all_reduce", "backward", replicas,
                              layout.nodes_spanned(replicas, stride=g), sum(u for _, u in units) * GRAD_BYTES / g,
                              len(units),
                              units[0][1] * GRAD_BYTES / g))
        out.append(_grad_norm(counts, g, layout.nodes_spanned(g)))
        out += _replicated(counts, w, all_nodes)
    elif scheme in ("zero1", "zero2"):
        bucket = layout.bucket_bytes or DEEPSPEED_DEFAULT_BUCKET_ELEMENTS * GRAD_BYTES
        # DeepSpeed's stage 1/2 optimizer all-reduces each gradient bucket and keeps its own
        # partition (zero_optimization.use_multi_rank_bucket_allreduce, default true): twice the
        # bytes of a reduce-scatter, but one call per bucket instead of one reduce per rank.
        # Measured on gloo (bench/bench_comm.py).
        out.append(Collective("all-reduce (gradient buckets)", "all_reduce", "backward", w, all_nodes,
                              n * GRAD_BYTES, math.ceil(n * GRAD_BYTES / bucket), min(bucket, n * GRAD_BYTES)))
        # The same element count holds the working-dtype weights of the post-step all-gather.
        ag_bucket = (layout.bucket_bytes / GRAD_BYTES if layout.bucket_bytes else DEEPSPEED_DEFAULT_BUCKET_ELEMENTS) \
            * layout.param_bytes
        out.append(Collective("all-gather (updated weights)", "all_gather", "step", w, all_nodes,
                              n * layout.param_bytes, math.ceil(n * layout.param_bytes / ag_bucket),
                              min(ag_bucket, n * layout.param_bytes)))
    if w > 1:
        feats = global_batch * embed_dim * FEATURE_BYTES
        for tower in ("image", "text"):
            out.append(Collective(f"loss: {tower} features all-gather", "all_gather", "loss_forward", w, all_nodes,
                                  feats, 1, feats))
            out.append(Collective(f"loss: {tower} features gradient reduce-scatter", "reduce_scatter",
                                  "loss_backward", w, all_nodes, feats, 1, feats))
    return out


@dataclass
class CommPlan:
    scheme: str
    collectives: list = field(default_factory=list)  # Collective.as_dict rows
    bytes_per_rank: float = 0.0
    network_bytes_per_rank: float = 0.0   # the part that crosses nodes
    seconds: float = 0.0                  # all collectives back to back
    exposed_s: float = 0.0                # not hidden under compute
    exposed_parts: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def plan_comm(layout: Layout, counts: dict, global_batch: int, embed_dim: int, link: Link,
              forward_s: float, backward_s: float, image_forward_s: float = 0.0) -> CommPlan:
    """Bytes and exposed seconds of one step. forward_s / backward_s: compute time of the phases
    (backward includes recomputation under activation checkpointing); image_forward_s: the image
    tower's forward (what an overlapped text-feature gather can hide under)."""
    colls = collectives(layout, counts, global_batch, embed_dim)
    phase = lambda ph: [c for c in colls if c.phase == ph]  # noqa: E731
    secs = lambda cs: sum(c.seconds(link) for c in cs)  # noqa: E731
    scheme = layout.scheme
    exposed = {}
    fwd, bwd = phase("forward"), phase("backward")
    if fwd:  # prefetched gathers: the first one is exposed, then whatever outlasts forward compute
        first = max(c.one_call_seconds(link) for c in fwd)
        # (never more than all of it: one unit alone is the whole phase)
        exposed["forward gathers"] = min(max(secs(fwd) - forward_s, 0.0) + first, secs(fwd))
    if bwd:
        last = max(c.one_call_seconds(link) for c in bwd)
        if scheme in ("zero1", "zero2") and not layout.overlap_comm:
            exposed["backward reduction"] = secs(bwd)  # synchronous bucket reduces inside backward
        else:
            exposed["backward reduction"] = min(max(secs(bwd) - backward_s, 0.0) + last, secs(bwd))
    if phase("step"):  # after backward, before the update: nothing to hide under
        name = "post-step all-gather" if scheme in ("zero1", "zero2") else "step all-reduces"
        exposed[name] = secs(phase("step"))
    lf = phase("loss_forward")
    if lf:
        text = [c for c in lf if "text" in c.name]
        exposed["loss gather (forward)"] = secs(lf)
        if layout.overlap_loss_gather:
            exposed["loss gather (forward)"] = secs(lf) - secs(text) + max(secs(text) - image_forward_s, 0.0)
        exposed["loss gather (backward)"] = secs(phase("loss_backward"))
    crosses = [c for c in colls if c.nodes > 1]
    return CommPlan(scheme=scheme, collectives=[c.as_dict(link) for c in colls],
                    bytes_per_rank=sum(c.bytes_per_rank for c in colls),
                    network_bytes_per_rank=sum(c.bytes_per_rank for c in crosses),
                    seconds=secs(colls), exposed_s=sum(exposed.values()), exposed_parts=exposed)
