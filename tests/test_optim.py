"""Optimizer pieces against FLIP_FACTS.md "Pretraining recipe": the lr schedule (linear warmup from
0, cosine to 0, peak = base_lr x batch / 256), AdamW's weight-decay groups, gradient clipping
through the backend the trainer uses, and keep-last-k checkpoint pruning."""
import json
import math

import pytest
import torch
from torch import nn

import flip_scale
from flip_scale import checkpoint as ckpt_lib
from flip_scale.config.schema import Config
from flip_scale.distributed.backends import get_backend_class
from flip_scale.distributed.env import DistEnv
from flip_scale.loss import clip_loss
from flip_scale.plan import load_plan_config
from flip_scale.train.build import build_model_from_config, parallelize_and_build_optimizer
from flip_scale.train.optim import lr_at, param_groups

from conftest import ROOT, TINY

L16 = ROOT / "recipes" / "flip" / "l16_laion400m.yaml"


# -- lr schedule -------------------------------------------------------------------------------

def cosine_reference(s, peak, warmup, total):
    """FLIP_FACTS.md: linear warmup from 0 to the peak, then cosine decay to 0 at the end."""
    if s < warmup:
        return peak * s / warmup
    p = min((s - warmup) / (total - warmup), 1.0)
    return peak * 0.5 * (1 + math.cos(math.pi * p))


def test_flip_peak_lr_is_base_lr_times_batch_over_256():
    cfg = load_plan_config(str(L16), [], world_size=256)
    assert cfg.train.base_lr == 4e-6 and cfg.train.global_batch_size == 65536
    assert cfg.peak_lr == pytest.approx(1.024e-3, rel=1e-12)  # FLIP_FACTS: "at batch 64k the peak is 1.024e-3"
    half = load_plan_config(str(L16), ["train.global_batch_size=32768"], world_size=256)
    assert half.peak_lr == pytest.approx(0.512e-3, rel=1e-12)


def test_lr_schedule_warmup_then_cosine_to_zero():
    cfg = load_plan_config(str(L16), [], world_size=256)
    peak, warm, total = cfg.peak_lr, cfg.train.warmup_samples, cfg.train.samples
    assert (warm, total) == (760 * 65536, 190_000 * 65536)  # the authors' steps (FLIP_FACTS: "51.2M", "12.8B")
    lr = lambda s: lr_at(s, peak, warm, total)  # noqa: E731
    mid = warm + (total - warm) // 2
    assert lr(0) == 0.0
    assert lr(warm // 2) == pytest.approx(0.5 * peak, rel=1e-9)
    assert lr(warm // 4) == pytest.approx(0.25 * peak, rel=1e-9)
    assert lr(warm) == pytest.approx(peak, rel=1e-9)
    assert lr(mid) == pytest.approx(0.5 * peak, rel=1e-6)
    assert lr(total) == pytest.approx(0.0, abs=1e-15)
    assert lr(total + 10 * cfg.train.global_batch_size) == pytest.approx(0.0, abs=1e-15)  # stays at 0
    for s in (1, warm - 1, warm + 1, warm + (total - warm) // 4, total - 65536, total - 1):
        assert lr(s) == pytest.approx(cosine_reference(s, peak, warm, total), rel=1e-9, abs=1e-18), s
    # Monotone: rising through the warmup, falling after it, never negative or above the peak.
    steps = [int(x) for x in torch.linspace(0, total, 2001)]
    values = [lr(s) for s in steps]
    k = max(i for i, s in enumerate(steps) if s <= warm)
    assert all(a <= b for a, b in zip(values[:k + 1], values[1:k + 1]))
    assert all(a >= b for a, b in zip(values[k + 1:], values[k + 2:]))
    assert min(values) >= 0.0 and max(values) <= peak * (1 + 1e-12)


def test_lr_schedule_without_warmup_starts_at_the_peak():
    assert lr_at(0, 1.0, 0, 1000) == pytest.approx(1.0)
    assert lr_at(500, 1.0, 0, 1000) == pytest.approx(0.5)
    assert lr_at(1000, 1.0, 0, 1000) == pytest.approx(0.0, abs=1e-15)


# -- AdamW groups --------------------------------------------------------------------------------

def _group_of(groups):
    where = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in where, "a parameter is in two groups"
            where[id(p)] = g
    return where


# The authors' rule, restated from their code (not from ours): the mask built in
# t5x/train_state_initializer.py create_optimizer (lines 74-82) is
#   filter_bias_and_norm(path) AND filter_posembed(path)        (utils/opt_util.py lines 17-40)
# i.e. no decay where the leaf name is "bias" or "scale" (flax LayerNorm's weight) or the path
# contains "pos_embedding"; everything else, the cls token and the logit scale included, decays
# (configs/default.py:40's comment "(bias, norm, cls, posembed)" describes filter_cls_and_posembed,
# which create_optimizer does not use).
def _authors_exempt(name: str, layer_norm_weights: set) -> bool:
    return name.endswith(".bias") or name in layer_norm_weights or "pos_embed" in name


def _layer_norm_weights(model):
    return {f"{m}.weight" if m else "weight" for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)}


@pytest.mark.parametrize("overrides", [{}, {"reconstruction_weight": 1.0}])
def test_weight_decay_exempts_exactly_the_authors_set(overrides):
    model = flip_scale.create_model("tiny", **overrides)
    groups = param_groups(model, 0.2)
    where = _group_of(groups)
    params = dict(model.named_parameters())
    assert set(where) == {id(p) for p in params.values()}, "every trainable parameter in exactly one group"
    undecayed = {n for n, p in params.items() if where[id(p)]["weight_decay"] == 0.0}
    decayed = {n for n, p in params.items() if where[id(p)]["weight_decay"] == 0.2}
    assert decayed | undecayed == set(params)
    lnw = _layer_norm_weights(model)
    expected = {n for n in params if _authors_exempt(n, lnw)}
    assert undecayed == expected, (sorted(undecayed - expected), sorted(expected - undecayed))
    # The two the old rule got wrong: decayed in the authors' run (the "cls" param and
    # "logit_scale" pass both filters of opt_util.py).
    assert {"visual.cls_token", "logit_scale"} <= decayed
    # Every kind the rule names is present, so the comparison above is not vacuous.
    assert "text.pos_embed" in undecayed and "visual.patch_embed.proj.bias" in undecayed
    assert "visual.blocks.0.norm1.weight" in undecayed and "text.norm.weight" in undecayed
    assert "text.token_embed.weight" in decayed  # flax Embed's "embedding": decayed there too
    # The image position embedding is FLIP's fixed sin-cos table: not a parameter, never decayed.
    assert "visual.pos_embed" not in params and "visual.pos_embed" in dict(model.named_buffers())


def _single_backend(overrides=()):
    cfg = flip_scale.load_recipe(str(TINY), ["parallel.backend=single", "train.device=cpu", *overrides])
    torch.manual_seed(0)
    backend = get_backend_class(cfg.parallel.backend)(cfg, DistEnv(), torch.device("cpu"))
    parallelize_and_build_optimizer(backend, build_model_from_config(cfg), cfg)
    return cfg, backend


def test_backend_optimizer_decays_only_the_decay_group():
    """With zero gradients AdamW's Adam part is 0, so one step shows the decoupled decay alone:
    decayed tensors shrink by (1 - lr * 0.2), the others do not move."""
    # No clipping, as the authors' optimizer: utils/adamw.py:88-99 is optax.chain(scale_by_adam,
    # add_decayed_weights, scale_by_learning_rate), with no clip transform anywhere in the release.
    cfg, backend = _single_backend(["train.grad_clip=0"])
    model = backend.model
    assert cfg.train.weight_decay == 0.2
    opt = backend.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)  # FLIP_FACTS: beta1 0.9, beta2 0.95
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    lr = 0.1
    backend.step(lr)
    for n, p in model.named_parameters():
        if _authors_exempt(n, _layer_norm_weights(model)):
            assert torch.equal(p.detach(), before[n]), f"{n} moved without a gradient"
        else:
            assert torch.allclose(p.detach(), before[n] * (1 - lr * 0.2), rtol=1e-6, atol=1e-9), n


def test_cpu_optimizer_is_fused_and_updates_like_the_reference_adamw():
    """The CPU step uses torch's fused AdamW (several times faster there than foreach, see
    BENCHMARKS.md "Ours vs open_clip"); its updates match the per-tensor reference within fp32."""
    cfg, backend = _single_backend(["train.grad_clip=0"])
    model = backend.model
    assert backend.optimizer.defaults["fused"] is True
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref_params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    ids = {id(p): n for n, p in model.named_parameters()}
    ref = torch.optim.AdamW([{**{k: v for k, v in g.items() if k not in ("params", "fused", "foreach")},
                              "params": [ref_params[ids[id(p)]] for p in g["params"]]}
                             for g in backend.optimizer.param_groups], foreach=False, fused=False)
    assert not any(g["fused"] or g["foreach"] for g in ref.param_groups)
    for step in range(3):
        _loss(backend, cfg).backward()
        for n, p in model.named_parameters():
            ref_params[n].grad = p.grad.detach().clone()
        for g in ref.param_groups:
            g["lr"] = 1e-3
        backend.step(1e-3)
        ref.step()
    for n, p in model.named_parameters():
        moved = (p.detach() - ref_params[n].detach()).abs().max()
        assert moved < 1e-6, f"{n}: fused and reference AdamW differ by {float(moved)}"
    # The steps did update (a weight moves by ~lr per step under Adam), so the match is not vacuous.
    assert all((p.detach() - start[n]).abs().max() > 1e-4 for n, p in model.named_parameters()
               if n.endswith("qkv.weight"))


# -- gradient clipping ---------------------------------------------------------------------------

def _loss(backend, cfg, batch=8):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, cfg.data.image_size, cfg.data.image_size, generator=g)
    tokens = torch.randint(0, backend.model.size.vocab_size, (batch, cfg.model.text_length), generator=g)
    with backend.autocast():
        out = backend.module(images, tokens)
    return clip_loss(out["image_features"], out["text_features"], out["logit_scale"])


def _total_norm(params):
    return float(torch.sqrt(sum((p.grad.detach().double() ** 2).sum() for p in params if p.grad is not None)))


def test_clip_grad_norm_clips_to_train_grad_clip_and_returns_the_pre_clip_norm():
    clip = 0.001
    cfg, backend = _single_backend([f"train.grad_clip={clip}"])
    assert cfg.train.grad_clip == clip
    backend.backward(_loss(backend, cfg))
    params = list(backend.model.parameters())
    grads = {id(p): p.grad.detach().clone() for p in params if p.grad is not None}
    pre = _total_norm(params)
    assert pre > 100 * clip, "the test needs a gradient that clipping must shrink"
    returned = backend.clip_grad_norm()
    assert float(returned) == pytest.approx(pre, rel=1e-5)
    post = _total_norm(params)
    assert post <= clip * (1 + 1e-4)
    assert post == pytest.approx(clip, rel=1e-3)  # scaled to the limit, not zeroed
    # The direction is kept: every gradient is scaled by the same factor.
    for p in params:
        if p.grad is not None:
            assert torch.allclose(p.grad, grads[id(p)] * (post / pre), rtol=1e-4, atol=1e-12)


def test_step_clips_before_the_update_and_returns_the_pre_clip_norm():
    clip = 0.001
    cfg, backend = _single_backend([f"train.grad_clip={clip}"])
    backend.backward(_loss(backend, cfg))
    params = list(backend.model.parameters())
    pre = _total_norm(params)
    seen = []
    inner = backend.optimizer.step

    def recording_step(*a, **k):
        seen.append(_total_norm(params))  # what the optimizer is about to apply
        return inner(*a, **k)

    backend.optimizer.step = recording_step
    returned = backend.step(1e-3)
    assert float(returned) == pytest.approx(pre, rel=1e-5)
    assert len(seen) == 1 and seen[0] <= clip * (1 + 1e-4)
    assert all(p.grad is None for p in params)  # zeroed for the next step


def test_grad_clip_zero_disables_clipping():
    # The schema's default is no clipping, as the authors' optimizer (the tiny CPU recipe clips).
    assert Config().train.grad_clip == 0.0
    cfg, backend = _single_backend(["train.grad_clip=0"])
    backend.backward(_loss(backend, cfg))
    params = list(backend.model.parameters())
    pre = _total_norm(params)
    returned = backend.clip_grad_norm()
    assert float(returned) == pytest.approx(pre, rel=1e-5)
    assert _total_norm(params) == pytest.approx(pre, rel=1e-6)


# -- keep-last-k ---------------------------------------------------------------------------------

def _fake_ckpt(root, step, complete=True):
    d = root / ckpt_lib.step_name(step)
    d.mkdir(parents=True)
    (d / "model_optim.pt").write_bytes(b"x")
    if complete:
        (d / ckpt_lib.META).write_text(json.dumps({"step": step}))
    return d


def _names(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_prune_keeps_newest_complete_and_leaves_an_incomplete_newer_one(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3):
        _fake_ckpt(root, s)
    _fake_ckpt(root, 4, complete=False)          # a save that died before meta.json
    (root / f".tmp_{ckpt_lib.step_name(5)}").mkdir()  # a save in progress when the job was killed
    ckpt_lib.prune_checkpoints(root, keep=1)
    assert _names(root) == [ckpt_lib.step_name(3), ckpt_lib.step_name(4)]
    assert ckpt_lib.find_latest(root, log=lambda m: None) == root / ckpt_lib.step_name(3)


def test_prune_never_deletes_the_only_complete_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_ckpt(root, 1)
    _fake_ckpt(root, 2, complete=False)
    _fake_ckpt(root, 3, complete=False)
    for keep in (1, 0):
        ckpt_lib.prune_checkpoints(root, keep=keep)
        assert ckpt_lib.step_name(1) in _names(root), keep
        assert ckpt_lib.find_latest(root, log=lambda m: None) == root / ckpt_lib.step_name(1)


def test_prune_keep_k_counts_complete_checkpoints_in_step_order(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (8, 9, 10, 100):  # numeric order, not the order of unpadded names
        _fake_ckpt(root, s)
    bad = _fake_ckpt(root, 50, complete=False)
    (bad / ckpt_lib.META).write_text("{truncated")  # unreadable meta.json = incomplete
    (root / f".tmp_{ckpt_lib.step_name(101)}").mkdir()
    (root / f".tmp_{ckpt_lib.step_name(7)}").mkdir()
    ckpt_lib.prune_checkpoints(root, keep=2)
    assert _names(root) == [ckpt_lib.step_name(s) for s in (10, 50, 100)]
    assert not list(root.glob(".tmp_step_*"))
