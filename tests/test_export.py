"""Export to OpenCLIP, checked with open_clip itself: strict load, same embeddings."""
import json
import subprocess

import open_clip
import pytest
import torch
import torch.nn.functional as F

import flip_scale
from conftest import ROOT, TINY, cli
from flip_scale.data.synthetic import render_sample
from flip_scale.data.tokenizer import load_tokenizer
from flip_scale.export import MEAN_ALL_NOTE, convert_state_dict, export_open_clip, open_clip_config


def _randomised(pool: str) -> flip_scale.FlipModel:
    """A tiny model whose every weight is non-trivial: zero biases, unit norms or a zero patch bias
    (the fresh init) would hide a wrong mapping or a dropped fold."""
    torch.manual_seed(0)
    model = flip_scale.create_model("tiny", image_pool=pool)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 0.02))
    return model.eval()


def _inputs(model, n=6):
    tok = load_tokenizer("builtin", model.size.text_length)
    transform_size = model.size.image_size
    from flip_scale.data.transforms import eval_transform

    samples = [render_sample(1, i, transform_size) for i in range(n)]
    images = torch.stack([eval_transform(transform_size)(img) for img, _ in samples])
    images = images + 0.3 * torch.randn_like(images)
    return images, tok([c for _, c in samples])


def _cosines(model, oc, images, tokens):
    with torch.no_grad():
        ci = F.cosine_similarity(model.encode_image(images), oc.encode_image(images, normalize=True))
        ct = F.cosine_similarity(model.encode_text(tokens), oc.encode_text(tokens, normalize=True))
    return ci.min().item(), ct.min().item()


@pytest.mark.parametrize("pool", ["mean_patches", "cls"])
def test_round_trip_is_exact(pool):
    model = _randomised(pool)
    cfg = open_clip_config(model)
    oc = open_clip.CLIP(**cfg).eval()
    result = oc.load_state_dict(convert_state_dict(model.state_dict()), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert cfg["vision_cfg"]["pool_type"] == {"mean_patches": "avg", "cls": "tok"}[pool]
    # tanh GELU (flax's default, as the authors') on both sides: open_clip builds it from act_kwargs.
    assert cfg["vision_cfg"]["act_kwargs"] == cfg["text_cfg"]["act_kwargs"] == {"approximate": "tanh"}
    assert oc.visual.transformer.resblocks[0].mlp.gelu.approximate == "tanh"
    assert oc.transformer.resblocks[0].mlp.gelu.approximate == "tanh"
    images, tokens = _inputs(model)
    ci, ct = _cosines(model, oc, images, tokens)
    assert ci > 0.9999 and ct > 0.9999, (ci, ct)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), oc.encode_image(images, normalize=True), atol=1e-5)
    assert oc.logit_scale.item() == pytest.approx(model.logit_scale.item())


def test_mean_all_exports_with_measured_agreement(tmp_path):
    model = _randomised("mean_all")
    lines = []
    agreement = export_open_clip(model, tmp_path / "oc", log=lines.append)
    config = json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())
    assert config["flip_scale"]["exact"] is False
    assert any(line == f"not exact: {MEAN_ALL_NOTE}" for line in lines)
    assert any("image embedding cosine" in line for line in lines)
    # Text is unaffected; the image tower differs only by the cls token's 1/(N+1) share of the mean.
    assert agreement["text_cosine_min"] > 0.9999
    assert 0.5 < agreement["image_cosine_min"] < 0.9999


def test_cli_export_of_a_run_loads_in_open_clip(tmp_path):
    from flip_scale.config import load_recipe
    from flip_scale.train.trainer import run_training

    run = tmp_path / "run"
    run_training(load_recipe(TINY, [f"train.out_dir={run}", "train.samples=192", "model.image_pool=mean_patches",
                                    "train.log_every_steps=1", "checkpoint.every_steps=0"]))
    out = tmp_path / "exported"
    p = subprocess.run(cli("export", run, "--format", "open_clip", "--output", out), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["image_cosine_min"] > 0.9999 and report["text_cosine_min"] > 0.9999
    assert "not exact" not in p.stderr
    assert (out / "open_clip_model.safetensors").is_file()
    # open_clip's own loader: config + weights from the folder (strict load inside).
    oc = open_clip.create_model(f"local-dir:{out}").eval()
    model, tokenizer, transform = flip_scale.load_checkpoint(run)
    images, tokens = _inputs(model)
    ci, ct = _cosines(model, oc, images, tokens)
    assert ci > 0.9999 and ct > 0.9999, (ci, ct)


def test_cli_export_of_a_missing_run_fails_in_one_line(tmp_path):
    from flip_scale.export import main_export

    assert main_export([str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
