"""How a process learns its rank: torchrun variables, an srun job step, a Slurm batch shell
(one process), or SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID exported by hand (INTERFACE.md)."""
import json
import os
import subprocess
import sys

import pytest

from flip_scale.distributed.env import DistEnv, detect_env, first_slurm_host, slurm_master_port

from conftest import ROOT, TINY, free_port


@pytest.mark.parametrize("env, want", [
    ({}, DistEnv(0, 1, 0, "none")),
    ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}, DistEnv(3, 8, 3, "torchrun")),
    # an srun job step: its own task count wins over the job's
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "8",
      "SLURM_LOCALID": "1"}, DistEnv(5, 8, 1, "slurm")),
    # the batch shell of a 16-task job is one process, not rank 0 of 16
    ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0"}, DistEnv(0, 1, 0, "none")),
    # the three variables INTERFACE.md names, exported by a launcher of its own
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}, DistEnv(1, 2, 1, "slurm")),
])
def test_detect_env(env, want):
    assert detect_env(env) == want


def test_slurm_master_address_and_port():
    assert first_slurm_host("gpu[017-020],cpu3") == "gpu017"
    assert first_slurm_host("n1") == "n1"
    assert slurm_master_port("12345") == 15000 + 12345 % 20000


@pytest.mark.slow
def test_two_processes_join_through_the_three_slurm_variables(tmp_path):
    """INTERFACE.md: under srun (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID) train joins by itself."""
    run, port = tmp_path / "run", free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    procs = []
    for rank in range(2):
        env = {**base, "SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "flip_scale", "train", str(TINY), "train.samples=320",
                                       f"train.out_dir={run}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples_seen"] == 320
