"""Loader throughput on photo-like JPEG shards, side by side with open_clip's pipeline.

Builds (or takes with --shards) webdataset shards stored the way img2dataset stores them for
FLIP: 480 px short side (keep_ratio), JPEG quality 95, varied aspect ratios, 9-digit keys with
.jpg/.txt/.json members. The pictures are random crops/resizes of the photographs scikit-image
ships (astronaut, coffee, rocket, retina, Hubble deep field, grass, gravel, ...), with mild
sensor noise: real photographic texture, so JPEG decode costs what it costs on LAION.

Reports flip-scale's TrainLoader images/s (total and per worker) at --image-size, and a
per-stage profile of one worker (ms per image: read, decode, crop+resize, flip, convert,
tokenise, collate, transfer to the main process). With --compare-open-clip it also runs
open_clip's own webdataset training pipeline (open_clip_train.data.get_wds_dataset) on the same
shards with the same worker count, alternating rounds so both see the same machine load, and
prints both rates and their ratio.

    python bench/bench_loader.py --workers 2 --batches 20 --compare-open-clip
    python bench/bench_loader.py --shards 'DIR/{00000..00009}.tar' --workers 2 --batches 20 --json
    python bench/bench_loader.py --workers 2 --batches 10 --resume   # bytes replayed per stream
    python bench/bench_loader.py --workers 2 --batches 20 --decode device [--device cuda]

--decode device (data.decode=device): workers only parse JPEG headers and draw crops; reported
side by side with decode=cpu in the same invocation (alternating rounds): worker images/s for
both, the worker profile of each, and, measured separately in the main process on --device,
the device-side decode rate (decode_batch_on_device: batched decode_jpeg, nvJPEG on CUDA, crop,
resize, flip) and its pixel parity with the decode=cpu batches (mean/max abs uint8 difference).
"""

from __future__ import annotations

import argparse
import datetime
import io
import itertools
import json
import os
import platform
import re
import sys
import tarfile
import tempfile
import time
import types
import warnings
from collections import Counter

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from flip_scale.config import DataConfig  # noqa: E402
from flip_scale.data import transforms as T  # noqa: E402
from flip_scale.data.device_decode import (collate_encoded, decode_batch_on_device,  # noqa: E402
                                           encode_for_device)
from flip_scale.data.loader import build_train_loader, sample_index  # noqa: E402
from flip_scale.data.shards import expand_shards, iter_tar_samples  # noqa: E402
from flip_scale.data.tokenizer import load_tokenizer  # noqa: E402

# Colour photographs, and grey ones that get a random colour cast (JPEG then still codes chroma).
COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                 "immunohistochemistry")
GREY_PHOTOS = ("camera", "brick", "grass", "gravel", "moon")
WORDS = ("a photo of the dog cat car street house tree sky red blue green old new small large "
         "man woman child sitting standing on in with near beautiful view wooden table city "
         "night day sunset beach mountain river field flower garden kitchen room vintage "
         "portrait close-up background white black yellow", )[0].split()


def _procedural_photos(rng: np.random.Generator) -> list[np.ndarray]:
    """Stand-ins when scikit-image is missing (e.g. a bare GPU host): multi-octave noise fields
    (texture at every scale, as photographs have), so JPEG sizes and decode costs stay similar."""
    out = []
    for _ in range(12):
        img = np.zeros((512, 768, 3), np.float32)
        for octave in range(1, 8):
            small = rng.normal(0, 1, (2 ** octave, 3 * 2 ** (octave - 1), 3)).astype(np.float32)
            up = np.asarray(Image.fromarray(((small - small.min()) / np.ptp(small) * 255).astype(np.uint8))
                            .resize((768, 512), Image.BICUBIC), np.float32) - 128
            img += up * (0.75 ** octave)
        out.append(np.clip(img * 0.8 + 128, 0, 255).astype(np.uint8))
    return out


def source_photos() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    try:
        import skimage.data as skd  # noqa: PLC0415 - only needed to build shards
    except ImportError:
        print("scikit-image is not installed: shards built from procedural textures, not photographs",
              file=sys.stderr)
        return _procedural_photos(rng)
    out = [np.ascontiguousarray(getattr(skd, n)()[..., :3]) for n in COLOUR_PHOTOS]
    for n in GREY_PHOTOS:
        g = getattr(skd, n)().astype(np.float32)
        cast = rng.uniform(0.65, 1.0, size=3).astype(np.float32)
        out.append(np.clip(g[..., None] * cast, 0, 255).astype(np.uint8))
    return out


def write_photo_shards(out_dir: str, samples: int, per_shard: int = 200, seed: int = 0,
                       short_side: int = 480, quality: int = 95) -> str:
    """img2dataset-style shards (keep_ratio, short side `short_side`, JPEG q`quality`) of random
    crops of real photographs; returns the brace pattern of the shards written."""
    photos = source_photos()
    rng = np.random.default_rng(seed)
    n_shards = -(-samples // per_shard)
    for s in range(n_shards):
        with tarfile.open(os.path.join(out_dir, f"{s:05d}.tar"), "w") as tar:
            for i in range(min(per_shard, samples - s * per_shard)):
                src = photos[int(rng.integers(len(photos)))]
                h0, w0 = src.shape[:2]
                # Aspect ratios of web images: mostly 3:4 .. 16:9, some panoramas/portraits.
                aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
                area = rng.uniform(0.3, 1.0) * h0 * w0
                cw = int(min(w0, max(32, np.sqrt(area * aspect))))
                ch = int(min(h0, max(32, np.sqrt(area / aspect))))
                x, y = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
                img = Image.fromarray(src[y:y + ch, x:x + cw])
                scale = short_side / min(cw, ch)  # keep_ratio: the short side becomes 480
                img = img.resize((max(short_side, round(cw * scale)),
                                  max(short_side, round(ch * scale))), Image.BICUBIC)
                if rng.random() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                arr = np.asarray(img, dtype=np.int16)
                arr = arr + rng.normal(0, 2.5, size=arr.shape).astype(np.int16)  # sensor noise
                buf = io.BytesIO()
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG",
                                                                          quality=quality)
                key = f"{s:05d}{i:04d}"
                caption = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 25))))
                meta = {"key": key, "caption": caption, "width": img.width, "height": img.height,
                        "status": "success"}
                for ext, data in (("jpg", buf.getvalue()), ("txt", caption.encode()),
                                  ("json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return os.path.join(out_dir, "{%05d..%05d}.tar" % (0, n_shards - 1))


# ------------------------------------------------------------------------------ throughput
def _timed(it, batch: int, batches: int, warmup: int, waits: list | None = None) -> float:
    for _ in range(warmup):  # worker start, shuffle-buffer fill: every worker's first batch
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        t = time.perf_counter()
        next(it)
        if waits is not None:  # the main process's wait per batch: stalls show in the tail
            waits.append(time.perf_counter() - t)
    return batches * batch / (time.perf_counter() - t0)


def measure_flip(shards: str, workers: int, image_size: int, batch: int, batches: int,
                 waits: list | None = None, decode: str = "cpu") -> float:
    cfg = DataConfig(train_shards=shards, tokenizer="builtin", image_size=image_size, workers=workers,
                     resampled=True, shuffle_buffer=1000, decode=decode)
    loader = build_train_loader(cfg, text_length=32, global_batch_size=batch, seed=0, rank=0,
                                world_size=1)
    it = iter(loader)
    try:
        return _timed(it, batch, batches, max(1, workers) + 1, waits)
    finally:
        it.close()


def measure_open_clip(shards: str, workers: int, image_size: int, batch: int,
                      batches: int) -> float:
    """open_clip's own training input pipeline: get_wds_dataset with its training transform
    (RandomResizedCrop(0.9-1) bicubic, ToTensor, Normalize) and tokenizer."""
    import open_clip  # noqa: PLC0415 - optional (dev extra)

    preprocess = open_clip.image_transform(image_size, is_train=True)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    args = types.SimpleNamespace(train_data=shards, val_data=None, dataset_resampled=True,
                                 train_num_samples=10**8, train_data_upsampling_factors=None,
                                 seed=0, batch_size=batch, world_size=1, workers=workers)
    try:
        import open_clip_train.data as ocd  # noqa: PLC0415
    except ImportError:
        get_wds_dataset = _wds_pipeline
    else:
        get_wds_dataset = ocd.get_wds_dataset
        _patch_open_clip_eof(ocd)
    dl = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=tokenizer).dataloader
    it = iter(dl)
    try:
        return _timed(it, batch, batches, max(1, workers) + 1)
    finally:
        del it


def _patch_open_clip_eof(ocd) -> None:
    """webdataset >= 0.2.100 ends each shard's file stream with an empty {} marker that
    open_clip_train 3.x's group_by_keys_nothrow does not expect (KeyError 'fname'); read the
    tars without the marker, everything else in open_clip's pipeline unchanged."""
    import webdataset as wds  # noqa: PLC0415

    def tarfile_to_samples_nothrow(src, handler=ocd.log_and_continue):
        streams = wds.tariterators.url_opener(src, handler=handler)
        files = wds.tariterators.tar_file_expander(streams, handler=handler, eof_value=None)
        return ocd.group_by_keys_nothrow(files, handler=handler)

    ocd.tarfile_to_samples_nothrow = tarfile_to_samples_nothrow


def _wds_pipeline(args, preprocess, is_train, epoch, tokenizer):
    """open_clip_train's stages with the webdataset package, when open_clip_train is absent."""
    import webdataset as wds  # noqa: PLC0415

    ds = wds.DataPipeline(
        wds.ResampledShards(args.train_data), wds.tarfile_to_samples(),
        wds.shuffle(5000, initial=1000), wds.decode("pilrgb"),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda t: tokenizer(t)[0]),
        wds.to_tuple("image", "text"), wds.batched(args.batch_size, partial=False))
    return types.SimpleNamespace(dataloader=wds.WebLoader(ds, batch_size=None,
                                                          num_workers=args.workers))


def measure_resume(shards: str, workers: int, image_size: int, batch: int, batches: int) -> dict:
    """Kill-and-resume cost: after `batches` batches, a fresh loader restores the state; report
    the raw bytes (and samples) each stream re-read to get back to its exact position, the
    bound (one chunk of shards_per_chunk shards), and the time to the first resumed batch."""
    cfg = DataConfig(train_shards=shards, tokenizer="builtin", image_size=image_size, workers=workers,
                     resampled=True, shuffle_buffer=1000)
    kw = dict(text_length=32, global_batch_size=batch, seed=0, rank=0, world_size=1)
    first = build_train_loader(cfg, **kw)
    it = iter(first)
    for _ in range(batches):
        next(it)
    sd = first.state_dict()
    it.close()
    resumed = build_train_loader(cfg, **kw)
    resumed.load_state_dict(sd)
    t0 = time.perf_counter()
    it = iter(resumed)
    next(it)
    for _ in range(max(1, workers) - 1):  # every stream has emitted once: all replays reported
        next(it)
    dt = time.perf_counter() - t0
    it.close()
    urls = expand_shards(shards)
    mean_shard = sum(os.path.getsize(u) for u in urls) / len(urls) if all(
        os.path.isfile(u) for u in urls) else float("nan")
    return {"after_batches": batches, "first_batches_s": round(dt, 2),
            "replayed_bytes": {str(k): v[0] for k, v in sorted(resumed.replayed.items())},
            "replayed_samples": {str(k): v[1] for k, v in sorted(resumed.replayed.items())},
            "bound_bytes": round(8 * mean_shard)}  # shards_per_chunk (8) x mean shard size


# ------------------------------------------------------------------------------- profile
class _Replay(IterableDataset):
    """Yields fresh copies of one batch: what the main process pays to receive a worker batch."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        for _ in range(self.n):
            yield {k: v.clone() for k, v in self.batch.items()}


def transfer_ms(batch: dict, n: int = 20) -> float:
    """Main-process ms per batch handed over by one DataLoader worker (shared-memory pickling
    and the queue), minus the worker-side clone that makes each copy fresh."""
    t0 = time.perf_counter()
    for _ in range(n):
        {k: v.clone() for k, v in batch.items()}
    clone = (time.perf_counter() - t0) / n
    dl = DataLoader(_Replay(batch, n + 2), batch_size=None, num_workers=1)
    it = iter(dl)
    next(it)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    return max(0.0, (time.perf_counter() - t0) / n - clone) * 1e3


def raw_samples(shards: str, samples: int):
    """The shards' raw samples, cycled until `samples` have been read (profiles read in-process)."""
    urls = expand_shards(shards)
    counters: Counter = Counter()
    return (s for u in urls * (1 + samples // 100) for s in iter_tar_samples(u, counters))


def per_image_ms(t: dict[str, float], last_batch: dict, n: int, n_batches: int, batch: int) -> dict[str, float]:
    """Stage seconds -> ms per image (collate and transfer per batch, spread over its images),
    with the transfer of the last batch timed here for every batch, and the total."""
    t = {**t, "transfer": transfer_ms(last_batch) / 1e3 * n_batches}
    ms = {k: round(v / (n_batches * batch if k in ("collate", "transfer") else n) * 1e3, 3)
          for k, v in t.items()}
    ms["total"] = round(sum(ms.values()), 3)
    return ms


def _profile(shards: str, samples: int, batch: int, stages: tuple[str, ...], work, collate) -> dict[str, float]:
    """A worker's loop, in-process: read, tokenise, `work(sample, n, t)` (the image stages, which
    add their own seconds to t; returns the image item), collate per batch, transfer."""
    torch.set_num_threads(1)  # as in a loader worker
    tok = load_tokenizer("builtin", 32)
    t = dict.fromkeys(("read", *stages, "tokenise", "collate", "transfer"), 0.0)
    items, n, last = [], 0, None
    clock = time.perf_counter
    samples_it = raw_samples(shards, samples)
    while n < samples:
        t0 = clock()
        sample = next(samples_it)
        t1 = clock()
        ids = tok.encode_caption(sample["txt"].decode("utf-8", errors="replace").strip())
        t["read"] += t1 - t0
        t["tokenise"] += clock() - t1
        items.append((work(sample, n, t), ids, sample_index(sample["__key__"])))
        n += 1
        if len(items) == batch:
            t0 = clock()
            last = collate(items)
            t["collate"] += clock() - t0
            items = []
    return per_image_ms(t, last, n, samples // batch, batch)


def profile_worker(shards: str, image_size: int, batch: int, samples: int) -> dict[str, float]:
    """One worker's stages, in-process, on the loader's own functions: ms per image."""
    clock = time.perf_counter

    def work(sample, n, t):
        t2 = clock()
        draws = T.sample_draws(0, n)
        img = T.open_image(sample["jpg"])
        box = T.random_resized_crop_box(img.width, img.height, draws, image_size)
        pixels, box = T.decode_for_crop(img, sample["jpg"], box, image_size)
        t3 = clock()
        out = T.crop_resize(pixels, box, image_size)
        t4 = clock()
        out = T.maybe_flip(out, draws)[0]
        t5 = clock()
        arr = out  # already uint8 [3,S,S] contiguous: normalising happens on the device
        t6 = clock()
        for k, a, b in (("decode", t2, t3), ("crop_resize", t3, t4), ("flip", t4, t5), ("convert", t5, t6)):
            t[k] += b - a
        return arr

    return _profile(shards, samples, batch, ("decode", "crop_resize", "flip", "convert"), work,
                    T.collate_samples)


def profile_worker_device(shards: str, image_size: int, batch: int, samples: int) -> dict[str, float]:
    """One decode=device worker's stages (ms per image): read, parse (JPEG header + crop box +
    flip draw; a non-JPEG decodes here), tokenise, collate (flat bytes + boxes), transfer."""
    transform = T.train_transform(image_size)
    clock = time.perf_counter

    def work(sample, n, t):
        t2 = clock()
        enc = encode_for_device(sample["jpg"], T.sample_draws(0, n), transform)
        t["parse"] += clock() - t2
        return enc

    return _profile(shards, samples, batch, ("parse",), work, lambda items: collate_encoded(items, image_size))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_device_side(shards: str, image_size: int, batch: int, batches: int, device: str,
                        repeats: int = 3) -> dict:
    """The step's side of decode=device, in this (main) process on `device`: images/s of
    decode_batch_on_device over `batches` real loader batches (best of `repeats` passes, one
    warm-up batch first), and the pixel difference from the decode=cpu batches of the same
    samples (same seed: same order, boxes and flips)."""
    dev = torch.device(device)
    kw = dict(train_shards=shards, tokenizer="builtin", image_size=image_size, workers=0,
              resampled=True, shuffle_buffer=1000)
    lkw = dict(text_length=32, global_batch_size=batch, seed=0, rank=0, world_size=1)
    enc = list(itertools.islice(build_train_loader(DataConfig(**kw, decode="device"), **lkw), batches))
    pix = list(itertools.islice(build_train_loader(DataConfig(**kw), **lkw), batches))
    if dev.type == "cuda":  # pinned host bytes, as data.pin_memory=true gives a GPU run
        enc = [{k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
               for b in enc]
    decode_batch_on_device(enc[0], dev)  # warm-up (nvJPEG handles, kernels)
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = [decode_batch_on_device(b, dev) for b in enc]
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    diffs, jpeg_bytes, drafted = [], 0, []
    for e, p, o in zip(enc, pix, out):
        assert torch.equal(e["index"], p["index"]), "decode=device changed the sample order"
        diffs.append((o.cpu().int() - p["images"].int()).abs())
        jpeg_bytes += int(e["jpeg"].numel())
        w, h = e["crop_boxes"][:, 2], e["crop_boxes"][:, 3]
        # crops the CPU path decodes at reduced DCT scale (transforms.decode_for_crop)
        drafted.append((w >= 2 * image_size) & (h >= 2 * image_size))
    d = torch.cat(diffs).float()
    drafted = torch.cat(drafted)
    full = d[~drafted]
    n = batches * batch
    return {"device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
            "images_per_s": round(n / best, 1), "ms_per_batch": round(best / batches * 1e3, 2),
            "batch": batch, "jpeg_kb_per_image": round(jpeg_bytes / n / 1e3, 1),
            "parity_vs_cpu": {"mean_abs": round(float(d.mean()), 3),
                              "p99_abs": float(np.percentile(d.numpy(), 99)),
                              "max_abs": int(d.max()),
                              "max_abs_full_decode_crops": int(full.max()) if len(full) else None,
                              "cpu_reduced_dct_fraction": round(float(drafted.float().mean()), 3)}}


# ------------------------------------------------------------------------------ reporting
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # The load average says whether other work shared the cores during the measurement.
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, Pillow {Image.__version__}, load average {load:.1f} at start")


def run_decode_device(args, shards: str) -> dict:
    """--decode device: decode=device and decode=cpu loaders alternating in one invocation,
    then the device side in the main process."""
    res: dict = {"workers": args.workers, "image_size": args.image_size, "decode": "device"}
    if not args.no_profile:
        res["per_stage_ms"] = profile_worker_device(shards, args.image_size, args.batch,
                                                    args.profile_samples)
        res["cpu_decode_per_stage_ms"] = profile_worker(shards, args.image_size, args.batch,
                                                        args.profile_samples)
    dev, cpu = [], []
    for _ in range(args.rounds):
        dev.append(measure_flip(shards, args.workers, args.image_size, args.batch, args.batches,
                                decode="device"))
        cpu.append(measure_flip(shards, args.workers, args.image_size, args.batch, args.batches))
    per = max(1, args.workers)
    res["images_per_s"] = round(max(dev), 1)
    res["images_per_s_per_worker"] = round(max(dev) / per, 1)
    res["rounds"] = [round(x, 1) for x in dev]
    res["cpu_decode_images_per_s"] = round(max(cpu), 1)
    res["cpu_decode_images_per_s_per_worker"] = round(max(cpu) / per, 1)
    res["cpu_decode_rounds"] = [round(x, 1) for x in cpu]
    res["worker_speedup_vs_cpu_decode"] = round(max(dev) / max(cpu), 2)
    res["device_side"] = measure_device_side(shards, args.image_size, args.batch,
                                             args.device_batches, args.device)
    return res


def run(args, shards: str) -> dict:
    if args.decode == "device" and not args.resume:
        return run_decode_device(args, shards)
    res: dict = {"workers": args.workers, "image_size": args.image_size}
    if not args.no_profile and not args.resume:
        res["per_stage_ms"] = profile_worker(shards, args.image_size, args.batch,
                                             args.profile_samples)
    if args.resume:
        res["resume"] = measure_resume(shards, args.workers, args.image_size, args.batch,
                                       args.batches)
        return res
    flip, oc, waits = [], [], []
    for _ in range(args.rounds):  # alternate, so both pipelines see the same load
        flip.append(measure_flip(shards, args.workers, args.image_size, args.batch, args.batches,
                                 waits))
        if args.compare_open_clip:
            oc.append(measure_open_clip(shards, args.workers, args.image_size, args.batch,
                                        args.batches))
    per = max(1, args.workers)
    res["images_per_s"] = round(max(flip), 1)
    res["images_per_s_per_worker"] = round(max(flip) / per, 1)
    res["rounds"] = [round(x, 1) for x in flip]
    w = np.sort(np.array(waits)) * 1e3
    res["batch_wait_ms"] = {"p50": round(float(np.percentile(w, 50)), 1),
                            "p99": round(float(np.percentile(w, 99)), 1),
                            "max": round(float(w[-1]), 1)}
    if oc:
        res["open_clip_images_per_s_per_worker"] = round(max(oc) / per, 1)
        res["open_clip_images_per_s"] = round(max(oc), 1)
        res["open_clip_rounds"] = [round(x, 1) for x in oc]
        res["ratio_vs_open_clip"] = round(max(flip) / max(oc), 2)
    return res


def print_decode_device(res: dict, args) -> None:
    w = args.workers
    for key, name in (("per_stage_ms", "decode=device"), ("cpu_decode_per_stage_ms", "decode=cpu")):
        if key in res:
            print(f"one {name} worker, ms per image: "
                  + ", ".join(f"{k} {v}" for k, v in res[key].items()))
    print(f"decode=device workers: {res['images_per_s']} images/s with {w} worker(s), "
          f"{res['images_per_s_per_worker']} per worker (rounds {res['rounds']})")
    print(f"decode=cpu workers:    {res['cpu_decode_images_per_s']} images/s with {w} worker(s), "
          f"{res['cpu_decode_images_per_s_per_worker']} per worker (rounds {res['cpu_decode_rounds']})")
    print(f"worker speed-up decode=device / decode=cpu: {res['worker_speedup_vs_cpu_decode']}")
    d = res["device_side"]
    p = d["parity_vs_cpu"]
    print(f"device side on {d['device']}: {d['images_per_s']} images/s "
          f"({d['ms_per_batch']} ms per batch of {d['batch']}, {d['jpeg_kb_per_image']} kB JPEG per image)")
    print(f"parity with decode=cpu: mean abs {p['mean_abs']}, p99 {p['p99_abs']}, max {p['max_abs']} "
          f"uint8 levels ({p['cpu_reduced_dct_fraction']:.0%} of crops reduced-DCT decoded on the CPU path; "
          f"max over the other crops {p['max_abs_full_decode_crops']})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", help="existing shards (brace pattern/dir/glob); default: build "
                                    "photo-like shards in a temporary folder")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers (0: in-process)")
    p.add_argument("--batches", type=int, default=20, help="timed batches per round")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds (best kept)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--samples", type=int, default=1000, help="samples to build (no --shards)")
    p.add_argument("--profile-samples", type=int, default=256)
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--compare-open-clip", action="store_true",
                   help="also run open_clip's get_wds_dataset pipeline on the same shards")
    p.add_argument("--resume", action="store_true",
                   help="measure a resume after --batches batches: bytes replayed per stream")
    p.add_argument("--decode", choices=("cpu", "device"), default="cpu",
                   help="device: data.decode=device side by side with decode=cpu (see above)")
    p.add_argument("--device", default="cpu", help="--decode device: where the step-side decode "
                                                   "is timed (cpu, cuda)")
    p.add_argument("--device-batches", type=int, default=4,
                   help="--decode device: batches timed on --device (and compared with decode=cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON line only")
    args = p.parse_args()
    host = machine()
    warnings.simplefilter("ignore", UserWarning)
    with tempfile.TemporaryDirectory() as d:
        shards = args.shards or write_photo_shards(d, args.samples)
        res = run(args, shards)
    if args.json:
        print(json.dumps(res))
        return
    print(f"machine: {host}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='minutes')}")
    print("command: python bench/bench_loader.py " + " ".join(sys.argv[1:]))
    if "resume" in res:
        r = res["resume"]
        for k, b in r["replayed_bytes"].items():
            print(f"resume after {r['after_batches']} batches: stream {k} replayed {b / 1e6:.1f} MB "
                  f"({r['replayed_samples'][k]} samples) of raw tar bytes; bound: one chunk, "
                  f"~{r['bound_bytes'] / 1e6:.0f} MB")
        print(f"first batch from every stream after the resume: {r['first_batches_s']} s")
        return
    if res.get("decode") == "device":
        print_decode_device(res, args)
        return
    if "per_stage_ms" in res:
        print("one worker, ms per image: " + ", ".join(f"{k} {v}" for k, v in
                                                      res["per_stage_ms"].items()))
    print(f"flip-scale: {res['images_per_s']} images/s with {args.workers} worker(s), "
          f"{res['images_per_s_per_worker']} per worker (rounds {res['rounds']})")
    bw = res["batch_wait_ms"]
    print(f"flip-scale batch wait in the main process: p50 {bw['p50']} ms, p99 {bw['p99']} ms, "
          f"max {bw['max']} ms")
    if "open_clip_images_per_s" in res:
        oc = res["open_clip_images_per_s"]
        print(f"open_clip:  {oc} images/s with {args.workers} worker(s), "
              f"{oc / max(1, args.workers):.1f} per worker (rounds {res['open_clip_rounds']})")
        print(f"ratio flip-scale / open_clip: {res['ratio_vs_open_clip']}")


if __name__ == "__main__":
    main()
