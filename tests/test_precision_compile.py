"""bf16 on every backend and torch.compile, on CPU: the same tiny run as fp32 eager, within
bf16's precision (bf16 keeps 8 mantissa bits) or float reassociation (compile)."""
import pytest

from flip_scale.config import load_recipe
from flip_scale.train.trainer import run_training

from conftest import TINY
from dist_jobs import losses

pytestmark = pytest.mark.slow

SHORT = ["train.samples=256", "train.log_every_steps=1", "checkpoint.every_steps=0", "parallel.backend=single"]


def _run(tmp_path, name, *extra):
    run_training(load_recipe(TINY, SHORT + list(extra) + [f"train.out_dir={tmp_path / name}"]))
    return losses(tmp_path / name)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.mark.parametrize("backend", [["parallel.backend=single"], ["parallel.backend=fsdp"],
                                     ["parallel.backend=deepspeed", "parallel.zero_stage=2"]],
                         ids=["single", "fsdp", "deepspeed_zero2"])
def test_bf16_follows_fp32(tmp_path, fp32, backend):
    got = _run(tmp_path, "bf16", "parallel.precision=bf16", *backend)
    assert len(got) == len(fp32) == 4
    assert got == pytest.approx(fp32, rel=2e-2)  # bf16 rounding, not a different computation
    assert got != fp32  # and bf16 really ran


def test_compiled_blocks_compute_the_eager_run(tmp_path, fp32):
    got = _run(tmp_path, "compiled", "parallel.compile=true")
    assert got == pytest.approx(fp32, rel=1e-4)
