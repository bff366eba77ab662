"""Every backend computes the same training run (issue 4 acceptance).

Two real gloo processes, the tiny recipe on synthetic data (its global batch is identical at
any world size), fixed seed, 20 steps logged every step, fp32: ddp, fsdp and DeepSpeed ZeRO
1/2/3 each give the loss curve of `single` on one process. FSDP runs through the real CLI
under torch.distributed.run, so the launcher's environment detection is exercised too.
Activation checkpointing recomputes the same numbers, so it must not change the curve.
"""
import json
import subprocess
import sys

import pytest

from flip_scale.config import load_recipe
from flip_scale.train.trainer import run_training

from conftest import ROOT, TINY, free_port
from dist_jobs import losses, metrics, run_jobs

pytestmark = pytest.mark.slow

STEPS = 20
COMMON = ["train.samples=1280", "train.log_every_steps=1", "checkpoint.every_steps=0"]
BACKENDS = {
    "ddp": ["parallel.backend=ddp"],
    "deepspeed_zero1": ["parallel.backend=deepspeed", "parallel.zero_stage=1"],
    "deepspeed_zero2": ["parallel.backend=deepspeed", "parallel.zero_stage=2"],
    "deepspeed_zero3": ["parallel.backend=deepspeed", "parallel.zero_stage=3"],
    "fsdp_ac": ["parallel.backend=fsdp", "parallel.activation_checkpointing=true"],
}
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    out = {}
    single = ["parallel.backend=single"]
    for name, extra in {"single": single, "single_ac": single + ["parallel.activation_checkpointing=true"]}.items():
        out[name] = root / name
        run_training(load_recipe(TINY, COMMON + extra + [f"train.out_dir={out[name]}"]))
    out["fsdp"] = root / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "flip_scale", "train", str(TINY), *COMMON, "parallel.backend=fsdp", f"train.out_dir={out['fsdp']}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = []
    for name, extra in BACKENDS.items():
        out[name] = root / name
        jobs.append({"recipe": TINY, "overrides": COMMON + extra + [f"train.out_dir={out[name]}"]})
    run_jobs(jobs)
    return out


@pytest.mark.parametrize("backend", ["fsdp", *BACKENDS])
def test_two_process_backend_matches_single_process(runs, backend):
    ref, got = metrics(runs["single"]), metrics(runs[backend])
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert all(r["world_size"] == 2 for r in [json.loads((runs[backend] / "summary.json").read_text())])
    for key, tol in (("loss", REL_TOL), ("grad_norm", 1e-3), ("logit_scale", REL_TOL), ("lr", 1e-9)):
        assert [r[key] for r in got] == pytest.approx([r[key] for r in ref], rel=tol), key
    # The run must have moved: otherwise equal curves would prove nothing.
    assert ref[-1]["loss"] < ref[0]["loss"] - 0.05


@pytest.mark.parametrize("ac, plain", [("single_ac", "single"), ("fsdp_ac", "fsdp")])
def test_activation_checkpointing_does_not_change_the_loss_curve(runs, ac, plain):
    assert losses(runs[ac]) == pytest.approx(losses(runs[plain]), rel=0, abs=1e-6)
