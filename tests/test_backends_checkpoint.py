"""Sharded checkpoints: a 2-process FSDP run stops, resumes and continues identically; FSDP and
DeepSpeed ZeRO-3 checkpoints load on ONE process with flip_scale.load_checkpoint and give the
embeddings of the trained (still sharded) model; TensorBoard files hold the logged scalars."""
import pytest
import torch

import flip_scale
from flip_scale.models import create_model

from conftest import TINY
from dist_jobs import metrics, probe_inputs, run_jobs

pytestmark = pytest.mark.slow

LOG_EVERY_STEP = ["train.log_every_steps=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    out = {name: root / name for name in ("fsdp", "fsdp_resumed", "zero3")}
    fsdp = ["parallel.backend=fsdp", "train.samples=1280", "checkpoint.every_steps=10", "checkpoint.keep=2"]
    run_jobs([
        # Uninterrupted 20 steps, checkpoints at 10 and 20.
        {"recipe": TINY, "overrides": fsdp + LOG_EVERY_STEP + [f"train.out_dir={out['fsdp']}"]},
        # The same run killed right after its step-10 checkpoint, then relaunched: it resumes.
        {"recipe": TINY, "overrides": fsdp + LOG_EVERY_STEP + [f"train.out_dir={out['fsdp_resumed']}"],
         "truncate": (out["fsdp"], out["fsdp_resumed"], 10), "probe": root / "fsdp_probe.pt"},
        {"recipe": TINY, "overrides": ["parallel.backend=deepspeed", "parallel.zero_stage=3", "train.samples=640",
                                       "checkpoint.every_steps=0", f"train.out_dir={out['zero3']}"],
         "probe": root / "zero3_probe.pt"},
    ])
    out["fsdp_probe"], out["zero3_probe"] = root / "fsdp_probe.pt", root / "zero3_probe.pt"
    return out


def test_fsdp_run_resumes_from_its_checkpoint_and_continues_identically(runs):
    full, resumed = metrics(runs["fsdp"]), metrics(runs["fsdp_resumed"])
    assert [r["step"] for r in resumed] == list(range(1, 21))
    # Steps 11-20 were computed after loading the sharded model + optimizer + data position.
    for key in ("loss", "grad_norm", "lr", "logit_scale"):
        assert [r[key] for r in resumed[10:]] == pytest.approx([r[key] for r in full[10:]], rel=1e-6, abs=1e-7), key
    assert (runs["fsdp_resumed"] / "checkpoints" / "latest").read_text().strip() == "step_00000020"


@pytest.mark.parametrize("run", ["fsdp_resumed", "zero3"])
def test_sharded_checkpoint_loads_on_one_process_with_the_trained_embeddings(runs, run):
    probe = torch.load(runs[f"{run.split('_')[0]}_probe"], weights_only=False)
    model, tokenizer, transform = flip_scale.load_checkpoint(runs[run])
    assert not model.training
    images, tokens = probe_inputs()
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(tokens)
    # Same as the model that trained (evaluated while sharded over 2 processes) ...
    assert torch.allclose(image, probe["image"], atol=1e-5)
    assert torch.allclose(text, probe["text"], atol=1e-5)
    # ... and as a fresh model given the backend's gathered full state dict.
    ref = create_model("tiny", image_size=32, text_length=16)
    ref.load_state_dict(probe["state_dict"])
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(ref.encode_image(images), image, atol=1e-6)
        assert torch.allclose(ref.encode_text(tokens), text, atol=1e-6)
    assert torch.allclose(model.logit_scale, probe["state_dict"]["logit_scale"])


def test_tensorboard_event_files_hold_the_logged_scalars(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["fsdp"] / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for key in ("loss", "lr", "logit_scale", "samples_per_sec", "grad_norm", "samples_per_sec_per_device",
                "data_wait_frac", "max_memory_gb", "skipped/nonfinite_loss_steps", "skipped/corrupt_member"):
        assert key in tags, (key, sorted(tags))
    # Bookkeeping fields are the x axis or wall clock, not scalars of their own.
    assert not tags & {"step", "samples_seen", "time"}, sorted(tags)
    last = metrics(runs["fsdp"])[-1]
    for key in ("samples_per_sec_per_device", "data_wait_frac", "max_memory_gb", "skipped/nonfinite_loss_steps"):
        assert acc.Scalars(key)[-1].value == pytest.approx(last[key], rel=1e-6), key
    # 2 processes: the per-device rate is half the global one.
    assert last["samples_per_sec_per_device"] == pytest.approx(last["samples_per_sec"] / 2, rel=1e-6)
    assert 0.0 <= last["data_wait_frac"] <= 1.0 and last["max_memory_gb"] > 0
    assert acc.Scalars("skipped/nonfinite_loss_steps")[-1].value == 0
    losses = acc.Scalars("loss")
    assert len(losses) == 20
    assert losses[-1].value == pytest.approx(metrics(runs["fsdp"])[-1]["loss"], rel=1e-6)
    assert losses[-1].step == 1280  # x axis = samples seen
