"""Checkpointer unit behaviour on a real (1-process) FSDP2 model and real files: an
asynchronous save is a snapshot of the moment save() returned, it is published only when the
write is done, and each rank fsyncs exactly the files it wrote."""
import json
import os

import pytest
import torch
import torch.distributed as dist

from flip_scale.checkpoint import Checkpointer, _RANK_FILE, fsync_own_files, read_meta
from flip_scale.config import load_recipe
from flip_scale.distributed.backends import get_backend_class
from flip_scale.distributed.env import DistEnv
from flip_scale.train.build import build_model_from_config, parallelize_and_build_optimizer
from flip_scale.train.state import TrainState

from conftest import TINY


class _Position:
    def __init__(self):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def _fsdp(cfg):
    torch.manual_seed(0)
    backend = get_backend_class("fsdp")(cfg, DistEnv(), torch.device("cpu"))
    parallelize_and_build_optimizer(backend, build_model_from_config(cfg), cfg)
    return backend


@pytest.fixture
def cfg(tmp_path):
    yield load_recipe(TINY, ["parallel.backend=fsdp", f"train.out_dir={tmp_path}", "checkpoint.keep=2"])
    if dist.is_initialized():
        dist.destroy_process_group()


def test_async_save_is_a_snapshot_and_is_published_only_when_written(cfg, tmp_path):
    backend = _fsdp(cfg)
    state = TrainState(loader=_Position(), step=7, samples_seen=448)
    ckpt = Checkpointer(tmp_path / "checkpoints", backend, state, cfg, {"world_size": 1, "backend": "fsdp"})
    assert ckpt.async_mode
    before = {k: v.clone() for k, v in backend.full_state_dict().items()}
    final = ckpt.save(7)
    with torch.no_grad():  # training goes on while the write runs: the checkpoint must not see this
        for p in backend.model.parameters():
            p.add_(1.0)
    ckpt.finalize()
    assert (tmp_path / "checkpoints" / "latest").read_text() == final.name == "step_00000007"
    assert read_meta(final)["samples_seen"] == 448 and not list((tmp_path / "checkpoints").glob(".tmp_*"))
    fresh = _fsdp(cfg)
    fresh.load(final)
    after = fresh.full_state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert len(ckpt.blocked_s) == 1


def test_keep_last_k_and_time_interval(cfg, tmp_path):
    cfg.checkpoint.every_minutes = 0.0
    backend = _fsdp(cfg)
    state = TrainState(loader=_Position())
    ckpt = Checkpointer(tmp_path / "checkpoints", backend, state, cfg, {"world_size": 1, "backend": "fsdp"})
    assert not ckpt.time_due()  # every_minutes 0 = off
    for step in (1, 2, 3):
        state.step = step
        ckpt.save(step)
    ckpt.finalize()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000003"]
    ckpt.every_minutes = 1e-6
    assert ckpt.time_due()


def test_each_rank_fsyncs_the_files_it_wrote(tmp_path, monkeypatch):
    names = {"__0_0.distcp": 0, "__3_0.distcp": 3, ".metadata": 0, "train_state_rank2.pt": 2,
             "bf16_zero_pp_rank_5_mp_rank_00_optim_states.pt": 5, "mp_rank_00_model_states.pt": 0,
             "zero_pp_rank_1_mp_rank_00_model_states.pt": 1, "model_optim.pt": 0}
    for name, owner in names.items():
        m = _RANK_FILE.search(name)
        assert (int(next(g for g in m.groups() if g is not None)) if m else 0) == owner, name
        (tmp_path / name).write_text(json.dumps(owner))
    # The real fsync runs; the spy notes which file each call made durable (via /proc/self/fd).
    real_fsync, synced = os.fsync, []

    def spy(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    for rank in (0, 1, 2, 3, 5, 7):
        synced.clear()
        fsync_own_files(tmp_path, rank)
        assert sorted(synced) == sorted(n for n, owner in names.items() if owner == rank), rank
