"""The planner's communication, loader, checkpoint and failure arithmetic against hand-derived
formulas (one layout per backend), and `flip-scale plan` printing all of it (issue 12, item 6)."""
import math

import pytest

from flip_scale.models import get_size
from flip_scale.plan import load_plan_config, main_plan, make_plan
from flip_scale.planning import comm as C
from flip_scale.planning import runtime as R
from flip_scale.planning.memory import param_counts

from conftest import ROOT

H14_STUDY = str(ROOT / "recipes" / "studies" / "h14_laion2b_12.8b.yaml")
COUNTS = param_counts(get_size("vit_h14"))
N = COUNTS["total"]
ROOT_PARAMS = N - COUNTS["image_block"] * 32 - COUNTS["text_block"] * 24
B, D = 65536, 1024  # the H/14 recipe's global batch and embedding width
W, GPN = 512, 8
LINK = C.Link(C.gbps_to_bytes(400), C.gbps_to_bytes(3600))


def padded(group, part=None):
    """Parameters as FSDP2 shards them over `group` ranks: each tensor's dim 0 padded to a multiple."""
    units = C.fsdp_units(COUNTS, 1, group)
    return sum(u for name, u in units if part is None or name == part)


def grad_norm_bytes(group):
    """FSDP's gradient norm: one fp32 partial norm per sharded parameter tensor, all-reduced over
    the shard group; plus the replicated logit scale's gradient, all-reduced over every rank."""
    return (2 * (group - 1) / group * 4 * (COUNTS["tensors"] - COUNTS["replicated_tensors"])
            + 2 * (W - 1) / W * 4 * COUNTS["replicated"])


def loss_bytes(world):
    """Two towers x (forward all-gather + backward reduce-scatter) of [B, D] fp32 features."""
    return 4 * (world - 1) / world * B * D * 4


def bytes_per_rank(**layout):
    lay = C.Layout(world=W, gpus_per_node=GPN, **layout)
    return sum(c.bytes_per_rank for c in C.collectives(lay, COUNTS, B, D))


def test_h14_sizes_used_below():
    assert (COUNTS["image_layers"], COUNTS["text_layers"]) == (32, 24)
    assert COUNTS["image_block"] == 12 * 1280 ** 2 + 13 * 1280  # qkv, proj, fc1, fc2 + biases + 2 LN
    assert 30_000_000 < ROOT_PARAMS < 40_000_000  # mostly the 30523 x 1024 token embedding


def test_ddp_bytes():
    ring = (W - 1) / W
    assert bytes_per_rank(backend="ddp") == pytest.approx(2 * ring * 4 * N + loss_bytes(W), rel=1e-12)


def test_flat_fsdp_bytes():
    """bf16 gathers forward and backward, fp32 reduce-scatter: 8 bytes per parameter as FSDP2 pads
    them (flip-scale plan --simulate counts the same), plus the loss and the gradient norm."""
    ring = (W - 1) / W
    n, extra = padded(W), loss_bytes(W) + grad_norm_bytes(W)
    # 512 ranks pad H/14's 1280-wide tensors to 1536 rows: 8% more bytes than unpadded.
    assert 1.05 * N < n < 1.1 * N
    want = ring * 8 * n + extra
    got = bytes_per_rank(backend="fsdp")
    assert got == pytest.approx(want, rel=1e-12)
    assert 9e9 < got < 9.6e9
    # No reshard after forward: the blocks' backward gathers are gone (the root's stays: measured).
    assert bytes_per_rank(backend="fsdp", reshard_after_forward=False) == pytest.approx(
        ring * (6 * n + 2 * padded(W, "root")) + extra, rel=1e-12)
    # Per tower: only the text tower kept gathered.
    text = padded(W, "text_unit")
    assert bytes_per_rank(backend="fsdp", reshard_after_forward=(("image", True), ("text", False))) == pytest.approx(
        ring * (8 * n - 2 * text) + extra, rel=1e-12)
    # fp32: 4-byte gathers.
    assert bytes_per_rank(backend="fsdp", precision="fp32") == pytest.approx(ring * 12 * n + extra, rel=1e-12)


def test_hsdp_bytes_and_what_crosses_nodes():
    g, r = 8, W // 8
    shard = (g - 1) / g * 8 * padded(g)
    replicate = 2 * (r - 1) / r * 4 * padded(g) / g
    assert bytes_per_rank(backend="fsdp", shard_group=g) == pytest.approx(
        shard + replicate + grad_norm_bytes(g) + loss_bytes(W), rel=1e-12)
    lay = C.Layout(backend="fsdp", world=W, gpus_per_node=GPN, shard_group=g)
    colls = C.collectives(lay, COUNTS, B, D)
    # Shard collectives stay in the node (NVLink); the replica all-reduce spans all 64 nodes.
    assert {c.nodes for c in colls if c.group == g} == {1}
    ar = [c for c in colls if c.kind == "all_reduce" and c.group > g and c.phase == "backward"]
    assert len(ar) == 1 and (ar[0].group, ar[0].nodes) == (64, 64)
    plan = C.plan_comm(lay, COUNTS, B, D, LINK, 0.1, 0.2)
    logit_scale = 2 * (W - 1) / W * 4 * COUNTS["replicated"]  # its gradient, all-reduced over every rank
    assert plan.network_bytes_per_rank == pytest.approx(replicate + logit_scale + loss_bytes(W), rel=1e-12)


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_bytes(stage):
    """All-reduce of fp32 gradient buckets (DeepSpeed's default, measured in bench/bench_comm.py)
    + all-gather of the updated bf16 weights."""
    ring = (W - 1) / W
    assert bytes_per_rank(backend="deepspeed", zero_stage=stage) == pytest.approx(
        ring * (2 * 4 * N + 2 * N) + loss_bytes(W), rel=1e-12)


def test_zero3_bytes():
    """Like FSDP: gathers in forward and backward, reduce-scatter of fp32 gradients."""
    ring = (W - 1) / W
    assert bytes_per_rank(backend="deepspeed", zero_stage=3) == pytest.approx(ring * 8 * N + loss_bytes(W), rel=1e-12)


def test_ring_latency_is_nccls_model():
    # 512 ranks on 64 nodes: 511 steps, 63 of them between nodes.
    want = (C.NCCL_RING_BASE_US + 448 * C.NCCL_RING_NVLINK_HOP_US + 63 * C.NCCL_RING_NET_HOP_US) * 1e-6
    assert C.ring_latency_s(512, 64, "all_gather") == pytest.approx(want)
    assert C.ring_latency_s(512, 64, "all_reduce") == pytest.approx(
        (C.NCCL_RING_BASE_US + 896 * C.NCCL_RING_NVLINK_HOP_US + 126 * C.NCCL_RING_NET_HOP_US) * 1e-6)
    assert C.ring_latency_s(1, 1, "all_gather") == 0


def test_exposed_time_model():
    lay = C.Layout(backend="fsdp", world=W, gpus_per_node=GPN)
    colls = {c.name: c for c in C.collectives(lay, COUNTS, B, D)}
    fwd, bwd = 0.05, 0.10
    plan = C.plan_comm(lay, COUNTS, B, D, LINK, fwd, bwd)
    ag, ag_b, rs = (colls[k] for k in ("all-gather (forward)", "all-gather (backward)", "reduce-scatter (gradients)"))
    first = ag.one_call_seconds(LINK)
    assert plan.exposed_parts["forward gathers"] == pytest.approx(max(ag.seconds(LINK) - fwd, 0) + first)
    last = max(ag_b.one_call_seconds(LINK), rs.one_call_seconds(LINK))
    assert plan.exposed_parts["backward reduction"] == pytest.approx(
        max(ag_b.seconds(LINK) + rs.seconds(LINK) - bwd, 0) + last)
    loss = sum(c.seconds(LINK) for k, c in colls.items() if k.startswith("loss"))
    assert plan.exposed_parts["loss gather (forward)"] + plan.exposed_parts["loss gather (backward)"] == pytest.approx(loss)
    # Plenty of compute hides all but the first gather and the last reduce.
    roomy = C.plan_comm(lay, COUNTS, B, D, LINK, 10.0, 20.0)
    # after backward: nothing hides the gradient norm's and the replicated logit scale's all-reduces
    norm = sum(c.seconds(LINK) for c in colls.values() if c.phase == "step")
    assert roomy.exposed_s == pytest.approx(first + last + loss + norm)
    # Overlapping the text gather under the image forward removes it from the exposed time.
    hidden = C.plan_comm(C.Layout(backend="fsdp", world=W, gpus_per_node=GPN, overlap_loss_gather=True),
                         COUNTS, B, D, LINK, 10.0, 20.0, image_forward_s=1.0)
    assert roomy.exposed_s - hidden.exposed_s == pytest.approx(colls["loss: text features all-gather"].seconds(LINK))
    # DeepSpeed: overlap_comm hides the gradient reduction, not the post-step gather.
    z = lambda **kw: C.plan_comm(C.Layout(backend="deepspeed", zero_stage=2, world=W, gpus_per_node=GPN, **kw),  # noqa: E731
                                 COUNTS, B, D, LINK, 10.0, 20.0)
    assert z(overlap_comm=True).exposed_s < z().exposed_s
    assert z(overlap_comm=True).exposed_parts["post-step all-gather"] == z().exposed_parts["post-step all-gather"] > 0


def test_grouping_text_blocks_cuts_calls_not_bytes():
    one = C.collectives(C.Layout(backend="fsdp", world=W, gpus_per_node=GPN), COUNTS, B, D)
    four = C.collectives(C.Layout(backend="fsdp", world=W, gpus_per_node=GPN, blocks_per_unit=4), COUNTS, B, D)
    assert sum(c.bytes_per_rank for c in one) == pytest.approx(sum(c.bytes_per_rank for c in four))
    assert one[0].calls == 1 + 32 + 24 and four[0].calls == 1 + 32 + 6
    assert sum(c.latency_s() for c in four) < sum(c.latency_s() for c in one)


def test_loader_cores():
    assert R.LOADER_IMAGES_PER_CORE == 130  # BENCHMARKS.md "Data loader": 130-170 per worker
    assert R.cores_per_gpu(260) == 3 and R.cores_per_gpu(261) == 4  # workers + the trainer
    assert R.loader_samples_per_s(4) == 3 * 130


def test_checkpoint_cost():
    fs = C.gbps_to_bytes(100)
    c = R.checkpoint_cost("fsdp", None, "bf16", N, W, fs)
    assert c.bytes == 12 * N and c.files == (W + 1) + W + 1  # .distcp per rank + .metadata; train states + meta
    assert c.write_s == pytest.approx(12 * N / 12.5e9)
    z2 = R.checkpoint_cost("deepspeed", 2, "bf16", N, W, fs)
    assert z2.bytes == 14 * N and z2.files == (W + 1 + 1) + W + 1
    assert R.checkpoint_cost("deepspeed", 3, "bf16", N, W, fs).files == (2 * W + 1) + W + 1
    assert R.checkpoint_cost("ddp", None, "bf16", N, W, fs).files == 1 + W + 1


def test_young_daly_and_the_total():
    delta, mtbf = 60.0, 86400.0
    assert R.young_interval_s(delta, mtbf) == pytest.approx(math.sqrt(2 * delta * mtbf))
    r = delta / (2 * mtbf)
    assert R.daly_interval_s(delta, mtbf) == pytest.approx(math.sqrt(2 * delta * mtbf) * (1 + math.sqrt(r) / 3 + r / 9) - delta)
    # No failures: work plus one write per interval.
    run = R.plan_runtime(1.0, 10_000, 1000, 5.0, nodes=4, failures_per_node_day=0)
    assert run.total_s == 10_000 + 10 * 5.0 and run.expected_failures == 0
    # With failures: T = (work + writes) / (1 - (interval / 2 + restart) / MTBF).
    run = R.plan_runtime(1.0, 100_000, 1000, 5.0, nodes=10, failures_per_node_day=0.1, restart_s=600)
    m = 86400 / (10 * 0.1)
    want = (100_000 + 100 * 5.0) / (1 - (500 + 600) / m)
    assert run.mtbf_s == pytest.approx(m) and run.total_s == pytest.approx(want)
    assert run.expected_failures == pytest.approx(want / m)
    # The Daly interval does at least as well as any other interval.
    for every in (10, 100, 1000, 10_000):
        other = R.plan_runtime(1.0, 100_000, every, 5.0, nodes=10, failures_per_node_day=0.1, restart_s=600)
        assert run.daly_total_s <= other.total_s * (1 + 1e-3)


def test_the_plan_adds_it_all_up():
    cfg = load_plan_config(H14_STUDY, ["parallel.shard_group_size=null"], W)  # flat FSDP (recipe: HSDP)
    plan = make_plan(cfg, 64, 8, "h100")
    st, tot = plan["step"], plan["total"]
    assert st["micro_batch"] == 128
    assert st["gpu_step_s"] == pytest.approx(st["compute_s"] + plan["comm"]["exposed_s"])
    steps = cfg.train.samples // 65536  # 190,000: the authors' step count (recipes/studies)
    assert plan["runtime"]["work_s"] == pytest.approx(st["step_s"] * steps)
    assert tot["wall_s"] >= plan["runtime"]["work_s"] > plan["compute"]["wall_s"]
    assert tot["gpu_days"] == pytest.approx(tot["wall_s"] * W / 86400)
    # HSDP over nodes sends far less over the network than flat FSDP, and hides more.
    hsdp = make_plan(load_plan_config(H14_STUDY, ["parallel.shard_group_size=8"], W), 64, 8, "h100") \
        if hasattr(cfg.parallel, "shard_group_size") else None
    alt = plan["comm_alternatives"]
    assert alt["hsdp, groups of 8 (a node)"]["network_bytes_per_rank"] < alt["fsdp (flat)"]["network_bytes_per_rank"] / 3
    if hsdp is not None:
        assert hsdp["comm"]["network_bytes_per_rank"] == pytest.approx(
            alt["hsdp, groups of 8 (a node)"]["network_bytes_per_rank"])
        assert hsdp["total"]["wall_s"] < tot["wall_s"]
    # Too few cores: the loader sets the step.
    starved = make_plan(cfg, 64, 8, "h100", cpus_per_gpu=2)
    assert starved["step"]["data_bound"] and starved["step"]["step_s"] == pytest.approx(128 / 130)
    # A faster network shortens the step.
    assert make_plan(cfg, 64, 8, "h100", link_gbps=3200)["step"]["step_s"] < st["step_s"]


def test_cli_prints_every_cost(capsys):
    """The acceptance command prints compute, communication, loader, checkpoint and the total."""
    assert main_plan([H14_STUDY, "--nodes", "64", "--gpus-per-node", "8", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    for needle in ("GPU-days", "communication per step and rank", "reduce-scatter (gradients)", "exposed",
                   "loss: text features all-gather", "data loader:", "CPU cores per GPU", "checkpoint:", "files",
                   "Young/Daly interval", "total wall-clock:", "hsdp, groups of 8"):
        assert needle in out, needle
    assert main_plan([H14_STUDY, "parallel.backend=deepspeed", "parallel.shard_group_size=null", "--nodes", "64",
                      "--gpus-per-node", "8", "--gpu", "h100"]) == 0
    assert "overlap_comm true" in capsys.readouterr().out
    assert main_plan([H14_STUDY, "--nodes", "64", "--gpus-per-node", "8", "--gpu", "h100", "--link-gbps", "0"]) == 2
    assert "--link-gbps" in capsys.readouterr().err


def test_reshard_after_forward_auto():
    """auto keeps a tower gathered when its bf16 block parameters fit beside the planned memory;
    true / false are taken as given; without a card (CPU) auto reshards."""
    from flip_scale.planning.memory import plan_memory, resolve_reshard

    # The memory arithmetic below is for flat FSDP over W ranks with checkpointing (the recipe
    # itself runs HSDP without it).
    FLAT_AC = ["parallel.shard_group_size=null", "parallel.activation_checkpointing=true"]

    cfg = load_plan_config(H14_STUDY, FLAT_AC + ["parallel.reshard_after_forward=auto"], W)
    assert resolve_reshard(cfg, W, None) == {"image": True, "text": True}
    assert resolve_reshard(cfg, W, 80) == {"image": False, "text": False}  # 4 GB planned with checkpointing
    image, text = (COUNTS[f"{t}_block"] * COUNTS[f"{t}_layers"] * 2 / 1e9 for t in ("image", "text"))
    size = get_size("vit_h14")

    def planned(capacity):
        return plan_memory(size, mask_ratio=0.5, text_length=32, precision="bf16", backend="fsdp", zero_stage=None,
                           checkpointing=True, world_size=W, global_batch=B, capacity_gb=capacity)

    # A card where only the text tower's 0.67 GB fits next to the plan: 0.9 x cap = total + 1 GB.
    cap = (planned(80).total_gb + text + 0.1) / 0.9
    assert planned(cap).usable_gb - planned(cap).total_gb < text + image
    assert resolve_reshard(cfg, W, cap) == {"image": True, "text": False}
    for value in ("true", "false"):
        cfg = load_plan_config(H14_STUDY, FLAT_AC + [f"parallel.reshard_after_forward={value}"], W)
        assert resolve_reshard(cfg, W, 1000) == {"image": value == "true", "text": value == "true"}
    # The plan prices what auto decided, and counts the kept parameters in memory.
    auto = make_plan(load_plan_config(H14_STUDY, FLAT_AC + ["parallel.reshard_after_forward=auto"], W), 64, 8, "h100")
    flat = make_plan(load_plan_config(H14_STUDY, FLAT_AC + [], W), 64, 8, "h100")
    assert auto["comm"]["bytes_per_rank"] < flat["comm"]["bytes_per_rank"]
    kept = auto["memory"]["checkpointing"]["working_copies_gb"] - flat["memory"]["checkpointing"]["working_copies_gb"]
    assert kept == pytest.approx(image + text, rel=1e-9)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_has_the_planners_buckets(stage):
    """parallel.bucket_mb / overlap_comm reach DeepSpeed's config, and the planner counts the
    same buckets; gradients are reduced in fp32 in any precision."""
    from flip_scale.distributed.backends.deepspeed import deepspeed_config

    cfg = load_plan_config(H14_STUDY, ["parallel.backend=deepspeed", "parallel.shard_group_size=null",
                                       f"parallel.zero_stage={stage}",
                                       "parallel.bucket_mb=100"], W)
    ds = deepspeed_config(cfg, W)
    zero = ds["zero_optimization"]
    assert zero["overlap_comm"] is True and zero["reduce_bucket_size"] == 25_000_000  # 100 MB of fp32
    assert ds["communication_data_type"] == "fp32"
    assert zero.get("allgather_bucket_size" if stage == 2 else "stage3_prefetch_bucket_size") == 25_000_000
    if stage == 2:
        plan = make_plan(cfg, 64, 8, "h100")
        rs = next(c for c in plan["comm"]["collectives"] if c["name"] == "all-reduce (gradient buckets)")
        assert rs["calls"] == math.ceil(4 * N / 100e6)
        off = deepspeed_config(load_plan_config(H14_STUDY, ["parallel.backend=deepspeed", "parallel.shard_group_size=null", "parallel.overlap_comm=false",
                                                            "parallel.precision=fp32"], W), W)
        assert off["zero_optimization"]["overlap_comm"] is False and off["communication_data_type"] == "fp32"


def test_checkpoint_interval_by_wall_clock_and_asynchronous_cost():
    """checkpoint.every_minutes sets the interval when shorter than every_steps (0 = unset); an
    asynchronous FSDP save costs the run only its copy to host memory (a rank's shard at the
    assumed host-copy rate), a synchronous one the whole write."""
    by_time = R.plan_runtime(1.0, 100_000, 0, 5.0, nodes=10, failures_per_node_day=0.1, every_minutes=30)
    assert by_time.interval_s == 1800 and by_time.checkpoints == 100_000 // 1800
    both = R.plan_runtime(1.0, 100_000, 600, 5.0, nodes=10, failures_per_node_day=0.1, every_minutes=30)
    assert both.interval_s == 600  # the trainer saves on whichever comes first
    assert R.plan_runtime(1.0, 1000, 0, 5.0, nodes=1, failures_per_node_day=0).interval_s == 1000  # at the end
    sync = R.checkpoint_cost("fsdp", None, "bf16", N, W, 1e10)
    asyn = R.checkpoint_cost("fsdp", None, "bf16", N, W, 1e10, async_save=True)
    assert sync.blocked_s == sync.write_s and asyn.write_s == sync.write_s
    assert asyn.blocked_s == pytest.approx(asyn.bytes / W / R.HOST_COPY_BYTES_PER_S)
    assert R.checkpoint_cost("deepspeed", 2, "bf16", N, W, 1e10, async_save=True).blocked_s == pytest.approx(
        R.checkpoint_cost("deepspeed", 2, "bf16", N, W, 1e10).write_s)  # DeepSpeed saves synchronously


def test_device_decode_moves_the_decode_from_the_loader_cores_into_the_step(capsys):
    """data.decode=device: workers at the measured 4.7x rate, the GPU pays the (assumed) decode."""
    assert R.loader_images_per_core("cpu") == 130
    assert R.loader_images_per_core("device") == pytest.approx(130 * 4.7)
    b16 = str(ROOT / "recipes" / "flip" / "b16_laion400m.yaml")
    cpu = make_plan(load_plan_config(b16, ["data.decode=cpu"], 64), 8, 8, "h100")  # the recipe decodes on the device
    dev = make_plan(load_plan_config(b16, ["data.decode=device"], 64), 8, 8, "h100")
    micro = cpu["step"]["micro_batch"]
    assert cpu["step"]["decode_s"] == 0 and cpu["loader"]["decode"] == "cpu"
    assert dev["step"]["decode_s"] == pytest.approx(micro / R.DEVICE_DECODE_IMAGES_PER_S)
    assert dev["step"]["gpu_step_s"] == pytest.approx(cpu["step"]["gpu_step_s"] + dev["step"]["decode_s"])
    assert dev["loader"]["loader_samples_per_s_per_gpu"] == pytest.approx(
        4.7 * cpu["loader"]["loader_samples_per_s_per_gpu"])
    # B/16 at 50% masking starves 12 cores per GPU with CPU decoding; decoding on the GPU does not.
    assert cpu["step"]["data_bound"] and not dev["step"]["data_bound"]
    assert dev["loader"]["cores_per_gpu_needed"] < cpu["loader"]["cores_per_gpu_needed"] / 3
    assert main_plan([b16, "data.decode=device", "--nodes", "8", "--gpus-per-node", "8", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "JPEG decode on the GPU" in out and "ASSUMED 3,000 images/s" in out and "data.decode=device" in out
