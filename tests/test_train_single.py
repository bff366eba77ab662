"""End to end on one process: the tiny recipe through the real CLI, then loading the run back."""
import json
import subprocess

import pytest
import torch

import flip_scale
from flip_scale.config import load_recipe
from flip_scale.train.trainer import run_training

from conftest import ROOT, TINY, cli

pytestmark = pytest.mark.slow


def test_cli_train_writes_the_run_directory_and_loss_falls(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(cli("train", TINY, f"train.out_dir={out}", "train.samples=3840", "checkpoint.every_steps=30"),
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step 60/60" in r.stderr and "ETA" in r.stderr
    assert "host malloc: freed memory kept for reuse" in r.stderr  # train.host_malloc auto, on the CPU
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in records] == list(range(10, 61, 10))
    for key in ("step", "samples_seen", "loss", "lr", "logit_scale", "samples_per_sec", "data_wait_frac",
                "max_memory_gb", "grad_norm", "data_wait_p99_s", "straggler/slowest_rank", "straggler/median_s"):
        assert key in records[0], key
    assert all(rec["straggler/slowest_rank"] == 0 and rec["data_wait_p99_s"] >= 0 for rec in records)
    assert records[-1]["samples_seen"] == 3840
    assert records[-1]["loss"] < records[0]["loss"] - 0.3  # it learns
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples_seen"] == 3840 and summary["final_loss"] == pytest.approx(records[-1]["loss"])
    saved = load_recipe(out / "config.yaml")
    assert saved.train.samples == 3840
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000060"
    assert list((out / "tb").glob("events.out.tfevents.*"))

    model, tokenizer, transform = flip_scale.load_checkpoint(out)
    assert not model.training
    emb = model.encode_text(tokenizer(["a large red circle"]))
    assert emb.shape == (1, model.size.embed_dim)


def test_seeded_runs_are_reproducible(tmp_path):
    losses = []
    for name in ("a", "b"):
        cfg = load_recipe(TINY, [f"train.out_dir={tmp_path / name}", "train.samples=640", "train.log_every_steps=1",
                                 "checkpoint.every_steps=0"])
        run_training(cfg)
        losses.append([json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()])
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_rerun_resumes_from_the_checkpoint_instead_of_restarting(tmp_path):
    import os
    import signal

    from flip_scale.distributed.env import cleanup
    from flip_scale.train.preemption import Preempted
    from flip_scale.train.trainer import Trainer

    base = [f"train.out_dir={tmp_path}", "checkpoint.every_steps=5", "train.log_every_steps=5", "train.samples=1280"]

    def stop_after_step_5(msg):  # preempted (SIGUSR1): the stop is agreed and saved at step 10
        if msg.startswith("step 5/"):
            os.kill(os.getpid(), signal.SIGUSR1)

    # The same recipe both times: a resume under changed run-defining keys (train.samples
    # included) is refused (tests/test_run_dir_guard.py).
    trainer = Trainer(load_recipe(TINY, base), log=stop_after_step_5)
    try:
        trainer.setup()
        with pytest.raises(Preempted):
            trainer.train()
    finally:
        cleanup()
        trainer.close()
    # A run left by an exception is disarmed by close(): its watchdog would otherwise fire
    # HANG_EXIT_CODE into this (long-lived) process hang_timeout_s later.
    assert trainer.watchdog._thread is None
    summary = run_training(load_recipe(TINY, base))
    assert summary["steps"] == 20 and summary["samples_seen"] == 1280
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]
    # wall time adds up both segments (the report's GPU-hours read it)
    first_segment = json.loads((tmp_path / "checkpoints" / "step_00000020" / "meta.json").read_text())
    assert summary["resumed_at_step"] == 10
    assert summary["wall_time_s"] > summary["segment_wall_time_s"] > 0
    assert first_segment["wall_time_s"] <= summary["wall_time_s"] + 1e-6
    # The train state loads with weights_only (JSON + tensors: nothing in it can run code).
    assert torch.load(tmp_path / "checkpoints" / "step_00000020" / "train_state_rank0.pt", weights_only=True)


def test_demo_command_prints_falling_loss_and_zero_shot(tmp_path):
    r = subprocess.run(cli("demo", "--quick", "--output", tmp_path / "demo", "--steps", 60), capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    fell = next(line for line in r.stdout.splitlines() if line.startswith("demo: loss fell from"))
    first, last = (float(x.split()[0]) for x in fell.split("from ")[1].split(" to "))
    assert last < first
    zs = next(line for line in r.stdout.splitlines() if "zero-shot on" in line)
    assert "chance 0.021" in zs and float(zs.split("top-1 ")[1].split(",")[0]) > 0.021


def test_demo_refuses_to_replace_a_directory_it_did_not_make(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("keep me")
    r = subprocess.run(cli("demo", "--quick", "--output", run, "--steps", 5), capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 2 and "not a demo directory" in r.stderr
    assert (run / "config.yaml").read_text() == "keep me"


def test_checkpoints_by_wall_clock_interval_are_agreed_on_log_steps(tmp_path):
    """checkpoint.every_minutes: with steps disabled, a save happens at a log step once the
    interval has passed (here: always), never between log steps, plus the final one."""
    out = tmp_path / "by_time"
    run_training(load_recipe(TINY, ["train.samples=640", "train.log_every_steps=4", "checkpoint.every_steps=0",
                                    "checkpoint.every_minutes=0.0001", "checkpoint.keep=10",
                                    "parallel.backend=single", f"train.out_dir={out}"]))
    saved = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert saved == ["step_00000004", "step_00000008", "step_00000010"]


def test_text_cls_token_reaches_training_and_inference(tmp_path):
    """data.text_cls_token: true trains on [CLS] ... [SEP] captions and the run's tokenizer, loaded
    back for inference from the run directory, makes the same layout (false: word pieces only)."""
    for cls in (True, False):
        out = tmp_path / f"cls_{cls}"
        run_training(load_recipe(TINY, ["train.samples=128", "checkpoint.every_steps=0", "parallel.backend=single",
                                        f"data.text_cls_token={str(cls).lower()}", f"train.out_dir={out}"]))
        _, tokenizer, _ = flip_scale.load_checkpoint(out)
        ids = tokenizer(["a large red circle"])[0].tolist()
        assert (ids[0] == tokenizer.cls_id) == cls, ids
