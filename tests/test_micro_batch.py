"""Contrastive micro-batching with cached features (issue 11 item 3): the same training run as
the whole batch in one pass, step for step, on one process and on two FSDP processes; and the
mask of every sample is the same in the cached pass and in the re-forward (a function of the
data position), which is what makes the gradients equal."""
import pytest
import torch

from flip_scale.config import ConfigError, load_recipe
from flip_scale.train.trainer import run_training

from conftest import TINY
from dist_jobs import metrics, run_jobs

pytestmark = pytest.mark.slow

COMMON = ["train.samples=640", "train.global_batch_size=64", "train.log_every_steps=1",
          "checkpoint.every_steps=0", "parallel.precision=fp32"]


def _assert_same_run(got, ref):
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, 11))
    for key in ("loss", "grad_norm", "logit_scale"):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=0, abs=1e-5), key
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.01  # the run moved: equal curves prove something


def test_micro_batches_match_the_whole_batch_on_one_process(tmp_path):
    for name, extra in {"whole": [], "micro": ["train.micro_batch_size=16"]}.items():
        run_training(load_recipe(TINY, COMMON + ["parallel.backend=single", f"train.out_dir={tmp_path / name}", *extra]))
    _assert_same_run(metrics(tmp_path / "micro"), metrics(tmp_path / "whole"))


def test_micro_batches_match_the_whole_batch_on_two_fsdp_processes(tmp_path):
    jobs = [{"recipe": TINY, "overrides": COMMON + ["parallel.backend=fsdp", f"train.out_dir={tmp_path / name}", *extra]}
            for name, extra in {"whole": [], "micro": ["train.micro_batch_size=16"]}.items()]
    run_jobs(jobs)
    _assert_same_run(metrics(tmp_path / "micro"), metrics(tmp_path / "whole"))


def test_micro_batch_must_divide_the_local_batch_and_is_refused_under_deepspeed():
    with pytest.raises(ConfigError, match=r"train.micro_batch_size: 24 does not divide the local batch 32"):
        load_recipe(TINY, ["train.micro_batch_size=24"], world_size=2)
    with pytest.raises(ConfigError, match=r"train.micro_batch_size: contrastive micro-batching is not available"):
        load_recipe(TINY, ["train.micro_batch_size=16", "parallel.backend=deepspeed"], world_size=1)


def test_the_reforward_sees_the_masks_of_the_cached_pass():
    """Masks are keyed on data positions, so the rows of a micro batch get the same noise as
    the same rows of the whole batch: the cached pass and the re-forward drop the same patches."""
    from flip_scale.models.masking import DataPositionNoise

    noise = DataPositionNoise(seed=0, num_tokens=16, local_batch=32, rank=1, global_batch=64, device="cpu")
    whole = noise(step=7)
    assert torch.equal(torch.cat([noise(7, slice(i, i + 8)) for i in range(0, 32, 8)]), whole)
