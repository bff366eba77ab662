"""Training on real webdataset shards: a corrupt image and an empty caption are skipped, the run
goes on, and the counts reach metrics.jsonl and summary.json."""
import io
import json
import tarfile

import pytest

from flip_scale.config import load_recipe
from flip_scale.data.synthetic import write_synthetic_shards
from flip_scale.train.trainer import run_training

from conftest import TINY

pytestmark = pytest.mark.slow


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_bad_samples_are_skipped_and_counted_in_metrics(tmp_path):
    shards = tmp_path / "shards"
    write_synthetic_shards(str(shards), 256, 128, seed=0, image_size=32)
    bad = shards / "00002.tar"
    with tarfile.open(bad, "w") as tar:
        _add(tar, "900000000.jpg", b"this is not a jpeg")
        _add(tar, "900000000.txt", b"a small red square")
        _add(tar, "900000001.jpg", (shards / "00000.tar").read_bytes()[:0] or b"\xff\xd8\xff")  # truncated jpeg
        _add(tar, "900000001.txt", b"a large blue circle")
    run = tmp_path / "run"
    cfg = load_recipe(TINY, [f"train.out_dir={run}", f"data.train_shards={shards}", "train.samples=640",
                             "train.log_every_steps=5", "checkpoint.every_steps=0", "data.shuffle_buffer=16",
                             "data.shards_per_chunk=3"])
    summary = run_training(cfg)
    assert summary["steps"] == 10
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["skipped/bad_image"] >= 2
    assert summary["skipped"]["bad_image"] == last["skipped/bad_image"]


def test_shards_with_no_usable_sample_fail_at_start_with_one_line(tmp_path):
    import subprocess

    from conftest import ROOT, cli

    for name in ("00000.tar", "00001.tar"):
        (tmp_path / name).write_bytes(b"garbage, not a tar file")
    r = subprocess.run(cli("train", TINY, f"data.train_shards={tmp_path}", f"train.out_dir={tmp_path / 'run'}"),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "data.train_shards" in lines[0] and "no usable sample" in lines[0], r.stderr
