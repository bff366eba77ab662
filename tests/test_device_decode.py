"""data.decode=device on real webdataset tars, with the CPU as the device: the same samples,
boxes and flips as decode=cpu, pixels within resampling tolerance, exact resume, corrupt images
skipped or counted, the config's one-line errors, and a short training run."""

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from flip_scale.config import ConfigError, DataConfig, load_recipe
from flip_scale.data.device_decode import batch_images, decode_batch_on_device, resize_crop
from flip_scale.data.loader import build_train_loader
from flip_scale.data.synthetic import render_sample, write_synthetic_shards

from conftest import ROOT, TINY, cli, take


def _cfg(shards, **kw):
    base = dict(train_shards=shards, tokenizer="builtin", image_size=16, workers=0, shuffle_buffer=8,
                shard_retry_delay_s=0.01, shards_per_chunk=2, resampled=False, epochs=1, drop_last=False)
    base.update(kw)
    return DataConfig(**base)


def _loader(cfg, batch=8, seed=0):
    return build_train_loader(cfg, text_length=10, global_batch_size=batch, seed=seed, rank=0,
                              world_size=1)


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _shards(d, stored: int) -> str:
    """3 JPEG shards of synthetic pictures plus one mixing formats the worker keeps decoding
    (PNG, CMYK JPEG) with one the device decodes from greyscale."""
    write_synthetic_shards(str(d), 36, 12, seed=0, image_size=stored)
    with tarfile.open(d / "00003.tar", "w") as tar:
        for i, (mode, fmt) in enumerate([("RGB", "PNG"), ("CMYK", "JPEG"), ("L", "JPEG"), ("RGB", "PNG")]):
            img, caption = render_sample(0, 100 + i, stored)
            key = f"{100 + i:09d}"
            _add(tar, f"{key}.{'png' if fmt == 'PNG' else 'jpg'}", _encoded(img.convert(mode), fmt))
            _add(tar, f"{key}.txt", caption.encode())
    return str(d)


@pytest.fixture(scope="module")
def shards_exact(tmp_path_factory):
    return _shards(tmp_path_factory.mktemp("exact"), 40)   # crops < 2x 32 px: no reduced DCT


@pytest.fixture(scope="module")
def shards_draft(tmp_path_factory):
    return _shards(tmp_path_factory.mktemp("draft"), 64)   # crops >= 2x 16 px: CPU path drafts


def _both(shards, size):
    cpu = list(_loader(_cfg(shards, image_size=size)))
    dev = list(_loader(_cfg(shards, image_size=size, decode="device")))
    assert len(cpu) == len(dev) == 5  # 40 samples, batch 8
    diffs = []
    for c, d in zip(cpu, dev):
        assert "images" not in d and d["jpeg"].dtype == torch.uint8
        assert torch.equal(c["index"], d["index"]) and torch.equal(c["tokens"], d["tokens"])
        images = decode_batch_on_device(d, "cpu")
        assert images.shape == c["images"].shape and images.dtype == torch.uint8
        diffs.append((images.int() - c["images"].int()).abs())
    return dev, torch.cat(diffs)


def test_device_batches_equal_cpu_batches_without_reduced_dct(shards_exact):
    dev, diff = _both(shards_exact, 32)
    assert int(diff.max()) == 0  # same libjpeg-turbo decode, same uint8 resize kernel, same box/flip
    flips = torch.cat([d["flips"] for d in dev])
    assert flips.any() and not flips.all()
    # PNG and CMYK decoded in the worker (shipped as pixels); the greyscale JPEG as bytes.
    worker = {int(d["index"][r]) for d in dev for r in d["worker_rows"]}
    assert worker == {100, 101, 103}


def test_device_batches_match_cpu_within_resampling_tolerance_with_reduced_dct(shards_draft):
    _, diff = _both(shards_draft, 16)
    # The CPU path decodes these at 1/2 scale (PIL draft) before resizing, the device at full
    # size, so the two differ by resampling. Measured on these synthetic shapes (flat colours,
    # sharp edges: the worst case; a 1/2-scale box is rounded to whole pixels): mean 1.66 uint8
    # levels, 99th percentile 35, max 96, worst image's mean 5.65 (a wrong flip gives a median
    # image mean of 14). Photo-like shards: BENCHMARKS.md (bench_loader.py --decode device).
    assert 0 < float(diff.float().mean()) < 2.5
    assert float(diff.float().mean(dim=(1, 2, 3)).max()) < 8.0
    assert int(diff.max()) < 160


def test_cuda_arithmetic_resize_matches_the_uint8_kernel():
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 70, 90), dtype=np.uint8))
    for box in [(3, 5, 60, 50), (0, 0, 90, 70), (10, 2, 33, 41)]:
        a = resize_crop(pixels, box, 24, uint8_kernel=True)
        b = resize_crop(pixels, box, 24, uint8_kernel=False)
        diff = (a.int() - b.int()).abs()
        # uint8 kernel rounds between its two passes; on white noise (the worst case) measured
        # mean 0.12-0.19 and max 1-5 levels
        assert float(diff.float().mean()) < 0.3 and int(diff.max()) <= 6


def test_device_decode_resume_gives_the_same_bytes_boxes_and_flips(shards_exact):
    cfg = _cfg(shards_exact, image_size=32, decode="device", workers=2, resampled=True, epochs=None,
               shuffle_buffer=5)
    ref = take(_loader(cfg, batch=4), 7)
    first = _loader(cfg, batch=4)
    take(first, 4)
    resumed = _loader(cfg, batch=4)
    resumed.load_state_dict(first.state_dict())
    rest = take(resumed, 3)
    assert len(ref) == 7 and len(rest) == 3
    for a, b in zip(ref[4:], rest):
        for key in ("jpeg", "jpeg_offsets", "crop_boxes", "flips", "worker_rows", "worker_images",
                    "index", "tokens"):
            assert torch.equal(a[key], b[key]), key
    assert torch.equal(batch_images(ref[-1], torch.device("cpu")), batch_images(rest[-1], torch.device("cpu")))


def test_corrupt_jpegs_are_skipped_or_counted_with_device_decode(tmp_path):
    good = write_synthetic_shards(str(tmp_path / "good"), 6, 6, seed=0, image_size=40)[0]
    with tarfile.open(good) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    jpeg = dict(members)["000000004.jpg"]
    sos = jpeg.find(b"\xff\xda")
    body = bytearray(jpeg)
    for k in range(sos + 20, len(jpeg) - 2, 7):  # markers inside the scan: header and EOI intact
        body[k] = 0xFF
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in members:
            if name == "000000001.jpg":
                data = b"this is not an image"   # no header: skipped in the worker
            if name == "000000003.jpg":
                data = data[: len(data) // 3]     # truncated, no end marker: worker decode fails
            if name == "000000004.jpg":
                data = bytes(body)                # only a decode finds out: on the device
            _add(tar, name, data)
    cpu = _loader(_cfg(str(bad), image_size=32), batch=2)
    cpu_batches = list(cpu)
    dev = _loader(_cfg(str(bad), image_size=32, decode="device"), batch=2)
    dev_batches = list(dev)
    images = [batch_images(b, torch.device("cpu")) for b in dev_batches]
    counts = dev.counters()
    assert counts["bad_image"] == 2 and counts["device_decode_failed"] == 1
    assert cpu.counters()["bad_image"] == 3  # decode=cpu finds all three in the worker
    seen = torch.cat([b["index"] for b in dev_batches]).tolist()
    assert sorted(seen) == [0, 2, 4, 5]
    by_index = {i: img for b, imgs in zip(dev_batches, images) for i, img in zip(b["index"].tolist(), imgs)}
    cpu_by_index = {i: img for b in cpu_batches for i, img in zip(b["index"].tolist(), b["images"])}
    mean = torch.tensor([124, 116, 104], dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(by_index[4], mean.expand(3, 32, 32))  # the failed row: mean colour
    for i in (0, 2, 5):
        assert torch.equal(by_index[i], cpu_by_index[i])
    sd = dev.state_dict()
    assert sd["counters"]["device_decode_failed"] == 1  # checkpointed with the other counters


def test_decode_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.decode: must be cpu or device, got 'gpu'"):
        load_recipe(TINY, ["data.decode=gpu"])
    with pytest.raises(ConfigError, match=r"data\.decode: device needs JPEG shards"):
        load_recipe(TINY, ["data.decode=device"])  # the tiny recipe's synthetic source
    r = subprocess.run(cli("train", TINY, "data.decode=gpu", f"train.out_dir={tmp_path / 'run'}"),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "data.decode" in lines[0], r.stderr


@pytest.mark.slow
def test_training_with_device_decode_on_shards(tmp_path):
    shards = tmp_path / "shards"
    write_synthetic_shards(str(shards), 256, 64, seed=0, image_size=48)
    run = tmp_path / "run"
    r = subprocess.run(cli("train", TINY, "data.decode=device", f"data.train_shards={shards}",
                           f"train.out_dir={run}", "train.samples=256", "train.log_every_steps=2",
                           "checkpoint.every_steps=0", "data.shuffle_buffer=16", "data.workers=1"),
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert rows[-1]["skipped/device_decode_failed"] == 0


@pytest.mark.slow
def test_bench_loader_decode_device_json(tmp_path):
    """The bench bench/gpu_check.py runs on a lent GPU (there with --device cuda)."""
    write_synthetic_shards(str(tmp_path), 96, 48, seed=0, image_size=80)
    r = subprocess.run([sys.executable, "bench/bench_loader.py", "--shards", str(tmp_path), "--decode", "device",
                        "--workers", "1", "--batch", "16", "--batches", "2", "--rounds", "1", "--image-size", "32",
                        "--profile-samples", "32", "--device-batches", "2", "--json"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["images_per_s"] > 0 and res["cpu_decode_images_per_s"] > 0
    assert set(res["per_stage_ms"]) >= {"read", "parse", "collate", "transfer", "total"}
    side = res["device_side"]
    assert side["device"] == "cpu" and side["images_per_s"] > 0
    assert side["parity_vs_cpu"]["max_abs_full_decode_crops"] in (0, None)


@pytest.mark.parametrize("W,H", [(640, 360), (640, 320)])
def test_device_decode_falls_back_to_the_authors_centre_square(W, H):
    """data.decode=device draws its box in the worker with the same sampler: after 10 failed
    tries (16:9, 2:1 images) it ships the authors' centre square (facebookresearch/flip
    utils/transform_util.py:54-58, 82-100: int(224/256 x short side), centred), and the device
    crop equals the CPU path's pixels for that sample."""
    from test_transforms import _authors_center_window, _tries_all_fail

    from flip_scale.data.device_decode import Encoded, collate_encoded, encode_for_device
    from flip_scale.data.transforms import sample_draws, train_transform

    size = 224  # crops under 2x the output: the CPU path decodes full size, pixels are identical
    keys = [i for i in range(200) if _tries_all_fail(W, H, i)][:3]
    assert keys
    arr = np.random.default_rng(0).integers(0, 256, (H // 32, W // 32, 3), dtype=np.uint8)
    data = _encoded(Image.fromarray(arr).resize((W, H), Image.BICUBIC), "JPEG")
    t = train_transform(size)
    items = []
    for k in keys:
        enc = encode_for_device(data, sample_draws(0, k), t)
        assert isinstance(enc, Encoded) and enc.box == _authors_center_window(W, H, size)
        items.append((enc, [0] * 4, k))
    images = decode_batch_on_device(collate_encoded(items, size), "cpu")
    for row, k in enumerate(keys):
        cpu, _ = t.apply(data, sample_draws(0, k))
        assert torch.equal(images[row], cpu), k
