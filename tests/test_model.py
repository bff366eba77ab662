import math

import pytest
import torch

import flip_scale
from flip_scale.models import (PAPER_PARAMS_M, PAPER_TOTAL_PARAMS_M, PAPER_VOCAB_SIZE, count_params, create_model, flops_per_sample,
                               masking_noise, num_kept, random_masking)


def encoder_params(tower) -> int:
    """Tower size as the paper's table counts it: the encoder, without the projection head."""
    return count_params(tower) - tower.proj.weight.numel()


@pytest.mark.parametrize("name", ["vit_b16", "vit_l16", "vit_h14"])
def test_tower_parameter_counts_match_the_paper(name):
    with torch.device("meta"):  # shapes only: no memory for H/14's 967M parameters
        m = flip_scale.create_model(name)
    image_m, text_m = PAPER_PARAMS_M[name]
    assert m.size.vocab_size == PAPER_VOCAB_SIZE
    assert encoder_params(m.visual) / 1e6 == pytest.approx(image_m, rel=0.01)
    assert encoder_params(m.text) / 1e6 == pytest.approx(text_m, rel=0.01)
    assert count_params(m) / 1e6 == pytest.approx(PAPER_TOTAL_PARAMS_M[name], rel=0.01)  # 141 / 414 / 967


def test_vit_l14_shares_l16_shapes_but_patch_14():
    with torch.device("meta"):
        m = create_model("vit_l14")
    assert m.visual.num_patches == 256 and m.size.vision_width == 1024


def test_architecture_choices():
    m = create_model("tiny")
    assert not m.visual.pos_embed.requires_grad and "pos_embed" in dict(m.visual.named_buffers())
    assert m.visual.proj.bias is None and m.text.proj.bias is None
    assert m.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert all(blk.attn.fused_attn for blk in m.transformer_blocks())  # timm -> F.scaled_dot_product_attention
    # sin-cos embedding is fixed: same for two independently built models
    assert torch.equal(m.visual.pos_embed, create_model("tiny").visual.pos_embed)


def test_logit_scale_is_clamped_at_ln100():
    m = create_model("tiny")
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    scale = m(torch.randn(2, 3, 32, 32), torch.zeros(2, 16, dtype=torch.long))["logit_scale"]
    assert scale.item() == pytest.approx(100.0)
    m.clamp_logit_scale()
    assert m.logit_scale.item() == pytest.approx(math.log(100))


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_masking_keeps_exactly_int_n_times_one_minus_ratio(ratio):
    x = torch.arange(196).float().view(1, 196, 1).repeat(8, 1, 4)
    kept, ids = random_masking(x, ratio)
    assert kept.shape == (8, int(196 * (1 - ratio)), 4) == (8, num_kept(196, ratio), 4)
    for row in ids:
        assert len(set(row.tolist())) == len(row)  # unique per sample
    assert len({tuple(r.tolist()) for r in ids}) == 8  # samples get different masks
    assert torch.equal(kept[..., 0].long(), ids)  # gathered the tokens it says it kept


def test_masking_noise_depends_on_sample_index_only():
    a = masking_noise(3, torch.tensor([5, 6, 7]), 16)
    b = masking_noise(3, torch.tensor([7, 100, 5]), 16)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0])
    assert not torch.equal(a[0], a[1])


def _splitmix64_reference(seed: int, index: int, patch: int, stream: int = 0) -> float:
    """masking_noise's definition in plain Python integers (uint64 arithmetic)."""
    M = 2**64 - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    key = mix(((mix(mix(seed % 2**63) + stream) & M) ^ index))
    return (mix((key + (patch + 1) * 0x9E3779B97F4A7C15) & M) >> 11) / 2**53


def test_masking_noise_is_splitmix64_of_seed_index_and_patch():
    idx = torch.tensor([0, 1, 12_799_999_999, 2**40 + 3])  # up to beyond 12.8B samples
    got = masking_noise(11, idx, 7)
    want = torch.tensor([[_splitmix64_reference(11, i, n) for n in range(7)] for i in idx.tolist()],
                        dtype=torch.float64)
    assert got.dtype == torch.float64 and torch.equal(got, want)
    text = masking_noise(11, idx, 7, stream=1)  # the text-masking stream: independent of the image one
    assert torch.equal(text, torch.tensor([[_splitmix64_reference(11, i, n, 1) for n in range(7)]
                                           for i in idx.tolist()], dtype=torch.float64))
    assert not torch.equal(text, got)


def test_masking_noise_gives_uniform_masks():
    """Every patch position is kept equally often, and the kept sets of samples are independent."""
    N, B = 16, 4096
    noise = masking_noise(0, torch.arange(B), N)
    assert 0.0 <= noise.min() and noise.max() < 1.0
    _, ids = random_masking(torch.zeros(B, N, 1), 0.5, noise)
    freq = torch.bincount(ids.flatten(), minlength=N).float() / B
    assert torch.allclose(freq, torch.full((N,), 0.5), atol=0.04), freq  # binomial sd ~0.008
    # distinct seeds give different masks for the same sample
    assert not torch.equal(masking_noise(0, torch.arange(4), N), masking_noise(1, torch.arange(4), N))


def test_encoder_runs_only_on_kept_tokens_and_eval_uses_all():
    m = create_model("tiny", mask_ratio=0.75)
    seen = []
    m.visual.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    imgs, toks = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4, 16))
    m.train()
    m(imgs, toks)
    m.eval()
    m(imgs, toks)
    m.encode_image(imgs)
    n = m.visual.num_patches
    assert seen == [num_kept(n, 0.75) + 1, n + 1, n + 1]


def test_eval_embeddings_are_deterministic_and_normalised():
    m = create_model("tiny", mask_ratio=0.5).eval()
    imgs = torch.randn(3, 3, 32, 32)
    a, b = m.encode_image(imgs), m.encode_image(imgs)
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(3), atol=1e-5)
    t = m.encode_text(torch.randint(0, 100, (3, 16)))
    assert torch.allclose(t.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_every_block_uses_flax_tanh_gelu():
    """The authors' MlpBlock calls flax's nn.gelu with its default approximate=True, the tanh
    form (models_flip.py:83, MlpBlock.__call__: `x = nn.gelu(x)`); erf GELU differs by up to ~1e-3."""
    m = create_model("tiny", reconstruction_weight=1.0)
    blocks = list(m.visual.blocks) + list(m.text.blocks) + list(m.decoder.blocks)
    assert len(blocks) == len(m.transformer_blocks())  # decoder blocks included
    for blk in blocks:
        assert isinstance(blk.mlp.act, torch.nn.GELU) and blk.mlp.act.approximate == "tanh"
    # Numerically the tanh form, not erf: one block's MLP against the formula written out.
    mlp = m.text.blocks[0].mlp
    x = torch.randn(2, 5, mlp.fc1.in_features) * 3
    h = mlp.fc1(x)
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.fc2(tanh_gelu), atol=1e-6)
        assert not torch.allclose(mlp(x), mlp.fc2(torch.nn.functional.gelu(h)), atol=1e-6)


def test_text_feature_is_first_token_and_attends_to_padding():
    """Position 0's output is the feature (`z_txt = x_txt[:, 0, :]`, models_flip.py:554):
    the caption's first word piece with the authors' tokens, [CLS] with data.text_cls_token."""
    m = create_model("tiny").eval()
    toks = torch.randint(5, 100, (1, 16))
    toks[0, 8:] = 0
    other = toks.clone()
    other[0, 12] = 7  # change a padding position: no padding mask, so the feature changes
    assert not torch.allclose(m.encode_text(toks), m.encode_text(other))


@pytest.mark.parametrize("pool", ["mean_all", "mean_patches", "cls"])
def test_image_pool_options(pool):
    m = create_model("tiny", image_pool=pool).eval()
    assert m.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, m.size.embed_dim)


# FLIP_FACTS.md "Compute per sample": image GFLOPs at mask 0/50/75, text GFLOPs, total ratios.
PAPER_FLOPS = {
    "vit_b16": ((35.1, 17.4, 8.8), 2.4, (1.00, 0.53, 0.30)),
    "vit_l16": ((123.1, 61.1, 30.8), 5.5, (1.00, 0.52, 0.28)),
    "vit_l14": ((162.0, 79.9, 40.0), 5.5, (1.00, 0.51, 0.27)),
    "vit_h14": ((334.6, 165.4, 82.9), 19.4, (1.00, 0.52, 0.29)),
}


@pytest.mark.parametrize("name", sorted(PAPER_FLOPS))
def test_flops_reproduce_the_paper_table(name):
    images, text, ratios = PAPER_FLOPS[name]
    base = flops_per_sample(name, 0.0)["total"]
    for ratio, img_g, total_ratio in zip((0.0, 0.5, 0.75), images, ratios):
        f = flops_per_sample(name, ratio)
        assert round(f["image"] / 1e9, 1) == img_g
        assert round(f["text"] / 1e9, 1) == text
        assert round(f["total"] / base, 2) == total_ratio


def test_flops_counter_agrees_with_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    m = create_model("tiny", mask_ratio=0.5).train()
    for blk in m.transformer_blocks():
        blk.attn.fused_attn = False  # the CPU SDPA kernel has no FLOP formula; count explicit matmuls
    for ratio in (0.0, 0.5):
        with FlopCounterMode(display=False) as fc:
            m.encode_image(torch.randn(1, 3, 32, 32), mask_ratio=ratio)
        ours = flops_per_sample(m.size, ratio)["image"]
        assert fc.get_total_flops() == pytest.approx(ours, rel=0.02)


def test_text_flops_scale_with_length():
    assert flops_per_sample("vit_l16", 0.0, text_length=16)["text"] < flops_per_sample("vit_l16", 0.0)["text"]


def test_text_masking_keeps_first_token_and_drops_padding_first():
    m = create_model("tiny", text_mask_ratio=0.5, text_mask="padding_first").train()
    seen = []
    m.text.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    toks = torch.zeros(2, 16, dtype=torch.long)
    toks[:, :6] = torch.arange(10, 16)  # 6 real tokens, 10 padding
    m.encode_text(toks)
    x = seen[-1]
    assert x.shape[1] == 8  # int(16 * 0.5)
    emb = m.text.token_embed(toks) + m.text.pos_embed
    # all 6 real tokens (cls first) are kept before any padding
    for b in range(2):
        assert torch.allclose(x[b, :6], emb[b, :6], atol=1e-6)
    m.eval()
    m.encode_text(toks)
    assert seen[-1].shape[1] == 16  # eval sees the whole caption


def test_random_text_masking_differs_from_padding_first():
    m = create_model("tiny", text_mask_ratio=0.5, text_mask="random").train()
    seen = []
    m.text.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    toks = torch.zeros(16, 16, dtype=torch.long)
    toks[:, :6] = 5
    m.encode_text(toks)
    pad_row = (m.text.token_embed.weight[0] + m.text.pos_embed[0, 6:]).detach()
    kept_padding = sum(int(any(torch.allclose(v, r, atol=1e-6) for r in pad_row)) for v in seen[-1].reshape(-1, seen[-1].shape[-1]))
    assert kept_padding > 0  # random masking keeps some padding tokens


def test_text_masks_come_from_the_sample_index_stream():
    """The trainer's text noise (its own stream of masking_noise) fixes each caption's kept tokens:
    same index -> same features, wherever the sample sits in the batch; torch's RNG untouched."""
    from flip_scale.models.masking import TEXT_STREAM

    m = create_model("tiny", text_mask_ratio=0.5).train()
    toks = torch.randint(1, 100, (4, 16))
    idx = torch.tensor([10, 11, 12, 13])
    noise = masking_noise(0, idx, 15, stream=TEXT_STREAM)
    state = torch.get_rng_state()
    a = m.encode_text(toks, noise=noise)
    assert torch.equal(torch.get_rng_state(), state)
    perm = torch.tensor([2, 0, 3, 1])
    b = m.encode_text(toks[perm], noise=masking_noise(0, idx[perm], 15, stream=TEXT_STREAM))
    assert torch.allclose(a[perm], b, atol=1e-6)
    other = m.encode_text(toks, noise=masking_noise(0, idx + 100, 15, stream=TEXT_STREAM))
    assert not torch.allclose(a, other, atol=1e-4)
    with pytest.raises(ValueError, match="text masking noise has shape"):
        m.encode_text(toks, noise=noise[:, :7])


def test_reconstruction_head_adds_a_trainable_pixel_loss():
    m = create_model("tiny", mask_ratio=0.75, reconstruction_weight=1.0, decoder_width=32, decoder_layers=1,
                     decoder_heads=2).train()
    out = m(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4, 16)))
    assert set(out) == {"image_features", "text_features", "logit_scale", "reconstruction_loss"}
    assert out["reconstruction_loss"].item() > 0.1
    out["reconstruction_loss"].backward()
    assert m.decoder.head.weight.grad is not None and m.visual.blocks[0].attn.qkv.weight.grad is not None
    m.eval()
    assert "reconstruction_loss" not in m(torch.randn(2, 3, 32, 32), torch.randint(0, 100, (2, 16)))


def test_first_block_sees_cls_then_kept_patches_with_their_own_positions():
    """FLIP's order: patch embedding + sin-cos position, THEN masking (kept tokens keep their own
    positions), THEN the cls token in front; no LayerNorm between embedding and the first block."""
    m = create_model("tiny", mask_ratio=0.5).train()
    seen = []
    m.visual.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    images = torch.randn(3, 3, 32, 32)
    noise = masking_noise(0, torch.arange(3), m.visual.num_patches)
    m.encode_image(images, mask_ratio=0.5, noise=noise)
    keep = num_kept(m.visual.num_patches, 0.5)
    ids = torch.argsort(noise, dim=1)[:, :keep]
    full = (m.visual.patch_embed(images) + m.visual.pos_embed).detach()
    want = torch.gather(full, 1, ids.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    x = seen[0]
    assert x.shape == (3, 1 + keep, full.shape[-1])
    assert torch.allclose(x[:, 0], m.visual.cls_token[0, 0].detach().expand(3, -1))
    assert torch.allclose(x[:, 1:], want, atol=1e-6)  # un-normalised: no LayerNorm in between


def test_mean_all_pools_every_token_including_cls():
    m = create_model("tiny").eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, _ = m.visual.forward_tokens(images)
        emb = m.encode_image(images, normalize=False)
    assert torch.allclose(emb, m.visual.proj(tokens.mean(dim=1)), atol=1e-6)
    assert not torch.allclose(emb, m.visual.proj(tokens[:, 1:].mean(dim=1)), atol=1e-4)  # not mean_patches


def test_text_tower_last_block_computes_the_first_token_only_with_the_same_maths():
    """The text feature reads position 0; the last block (FirstTokenBlock) computes only it. Its
    output and every gradient equal timm's full Block on the same weights, sliced to position 0;
    the image tower's blocks stay full (its pooling reads every token)."""
    from timm.models.vision_transformer import Block

    from flip_scale.models.towers import FirstTokenBlock

    torch.manual_seed(0)
    m = create_model("tiny").train()
    last = m.text.blocks[-1]
    assert type(last) is FirstTokenBlock and all(type(b) is Block for b in m.text.blocks[:-1])
    assert all(type(b) is Block for b in m.visual.blocks)
    x = torch.randn(3, m.size.text_length, m.size.text_width, requires_grad=True)
    ours = last(x)
    full = Block.forward(last, x)[:, :1]
    assert ours.shape == (3, 1, m.size.text_width)
    assert torch.allclose(ours, full, atol=1e-5)
    g = torch.randn_like(ours)
    params = [x, *last.parameters()]
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(full, params, g)):
        assert torch.allclose(a, b, atol=1e-5)
    # The whole text tower: its feature equals the one from full blocks everywhere.
    tokens = torch.randint(1, 60, (3, m.size.text_length))
    with torch.no_grad():
        feature = m.text(tokens)
        h = m.text.token_embed(tokens) + m.text.pos_embed
        for block in m.text.blocks:
            h = Block.forward(block, h)
        reference = m.text.proj(m.text.norm(h)[:, 0])
    assert torch.allclose(feature, reference, atol=1e-5)
