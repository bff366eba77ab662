"""Masks are drawn fresh for every occurrence of a sample (issue 10 item 1): the training step's
noise is keyed on the sample's position in the data stream, not on the sample itself, as the
authors' code draws a new mask at every step (models_flip.py: random_mask(self.make_rng("dropout"))).
Positions are global (step * global_batch + rank * local_batch + row), so masks do not depend on
the world size and a resumed run redraws the same ones (the resume/parity tests check that)."""
import torch

from flip_scale.config import load_recipe
from flip_scale.data.loader import build_train_loader
from flip_scale.data.tokenizer import load_tokenizer
from flip_scale.models.masking import num_kept
from flip_scale.train.step import StepNoise

from conftest import TINY


def _kept(noise_row: torch.Tensor, keep: int) -> frozenset:
    return frozenset(torch.argsort(noise_row)[:keep].tolist())


def test_one_image_seen_in_two_epochs_gets_two_different_masks():
    # 64 distinct synthetic samples and a global batch of 64: every step is a new epoch of the
    # same images, which is what a 32-epoch LAION-400M run does to each image.
    cfg = load_recipe(TINY, ["data.synthetic_samples=64", "train.global_batch_size=64", "model.text_mask_ratio=0.5"])
    tok = load_tokenizer(cfg.data.tokenizer, cfg.model.text_length)
    loader = iter(build_train_loader(cfg.data, text_length=cfg.model.text_length, global_batch_size=64,
                                     seed=0, rank=0, world_size=1, tokenizer=tok))
    first, second = next(loader), next(loader)
    assert sorted(first["index"].tolist()) == sorted(second["index"].tolist())  # the same 64 images again
    noise = StepNoise(cfg, num_patches=16, local_batch=64, rank=0, device=torch.device("cpu"))
    n0, n1 = noise(0), noise(1)
    keep = num_kept(16, cfg.model.mask_ratio)
    row_in_second = {int(i): r for r, i in enumerate(second["index"])}
    different = 0
    for r, index in enumerate(first["index"].tolist()):
        different += _kept(n0["noise"][r], keep) != _kept(n1["noise"][row_in_second[index]], keep)
    assert different >= 60  # independent masks: equal by chance with probability 1/C(16,8) each
    # The text mask (Table 1c) follows the same rule, from its own stream.
    assert not torch.equal(n0["text_noise"], n1["text_noise"]) and not torch.equal(n0["text_noise"], n0["noise"][:, :15])


def test_step_noise_is_the_same_global_position_at_any_world_size():
    cfg = load_recipe(TINY, ["train.global_batch_size=64"])
    whole = StepNoise(cfg, 16, local_batch=64, rank=0, device=torch.device("cpu"))(5)["noise"]
    halves = [StepNoise(cfg, 16, local_batch=32, rank=r, device=torch.device("cpu"))(5)["noise"] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)
    assert StepNoise(load_recipe(TINY, ["model.mask_ratio=0.0"]), 16, 64, 0, torch.device("cpu"))(5) == {}
