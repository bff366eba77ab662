"""Pieces shared by zero-shot and retrieval evaluation: rank slices, lockstep batches, gathers,
the progress line.

Why lockstep: under FSDP every forward (encode_image / encode_text registered as forward
methods) all-gathers parameters, a collective. If one rank ran one batch more than another,
the job would hang. So every rank runs the same number of encoder calls: a rank whose slice
is exhausted runs a throw-away batch of one while the others finish.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from ..distributed.collectives import any_rank, gather_ragged_rows, sum_over_ranks
from ..data.eval_datasets import IMAGE_FILE_EXTS, EvalDataset, _imagefolder_classes, open_eval_dataset
from ..data.loader import IMAGE_EXTS
from ..data.shards import iter_tar_samples
from ..models.masking import num_kept


def distributed(world_size: int) -> bool:
    if world_size <= 1:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(f"world_size={world_size} but torch.distributed is not initialised")
    return True


def open_dataset(dataset_dir: str, transform_or_image_size) -> EvalDataset:
    """EvalDataset with the model's own eval transform when one is given."""
    if isinstance(transform_or_image_size, int):
        return open_eval_dataset(dataset_dir, transform_or_image_size)
    size = int(getattr(transform_or_image_size, "image_size", 224))
    ds = open_eval_dataset(dataset_dir, size)
    ds.transform = transform_or_image_size
    return ds


SHARD_INDEX_BITS = 24  # sample j of shard k has index k << 24 | j: dataset order, any world size


def _parse_eval_sample(ds: EvalDataset, s: dict):
    """(image bytes, target) of a CLIP_benchmark sample, or None (counted) when incomplete."""
    ext = next((e for e in IMAGE_EXTS if e in s), None)
    target = s.get("txt" if ds.kind == "retrieval" else "cls")
    if ext is None or target is None:
        ds.skipped["incomplete_sample"] += 1
        return None
    text = target.decode("utf-8").strip()
    return s[ext], ([c for c in text.split("\n") if c.strip()] if ds.kind == "retrieval" else int(text))


def eval_shards(ds: EvalDataset) -> list[str]:
    """The test shards of a CLIP_benchmark set, in order."""
    test = os.path.join(ds.path, "test")
    with open(os.path.join(test, "nshards.txt")) as f:
        n = int(f.read().split()[0])
    return [os.path.join(test, f"{k}.tar") for k in range(n)]


def _raw_rank_slice(ds: EvalDataset, rank: int, world_size: int) -> Iterator[tuple[int, bytes, object]]:
    """(index, image bytes, target) of this rank's samples, reading as little as possible.

    CLIP_benchmark sets with at least world_size shards: rank r reads only shards k with
    k % world_size == r (a rank no longer streams the whole set to keep 1/world of it).
    Fewer shards than ranks: every rank streams them and keeps samples j % world_size == r.
    ImageFolder: rank r opens only its files i % world_size == r. Indices sort in dataset order
    and do not depend on the world size, so gathered results are the 1-process ones.
    """
    if ds.webdataset:
        shards = eval_shards(ds)
        by_shard = len(shards) >= world_size
        n = 0
        for k, url in enumerate(shards):
            if by_shard and k % world_size != rank:
                continue
            for j, s in enumerate(iter_tar_samples(url, ds.skipped, retries=0)):
                if j >> SHARD_INDEX_BITS:
                    raise ValueError(f"{url}: more than {1 << SHARD_INDEX_BITS} samples in one shard")
                item = _parse_eval_sample(ds, s)
                if item is None:
                    continue
                n += 1
                if by_shard or (n - 1) % world_size == rank:
                    yield (k << SHARD_INDEX_BITS) | j, item[0], item[1]
        return
    i = -1
    for label, cls in enumerate(_imagefolder_classes(ds.path)):
        folder = os.path.join(ds.path, cls)
        for name in sorted(os.listdir(folder)):
            if not name.lower().endswith(IMAGE_FILE_EXTS):
                continue
            i += 1
            if i % world_size == rank:
                with open(os.path.join(folder, name), "rb") as f:
                    yield i, f.read(), label


def iter_rank_slice(ds: EvalDataset, rank: int, world_size: int) -> Iterator[tuple[int, torch.Tensor, object]]:
    """(index, image, target) of this rank's slice of the set (see _raw_rank_slice).

    Only this rank's shards (or files) are read and only its images decoded, which is where
    the speed-up of a distributed evaluation comes from on CPU-bound decoding.
    """
    for i, data, target in _raw_rank_slice(ds, rank, world_size):
        try:
            img = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception:  # noqa: BLE001 - like EvalDataset.__iter__: count and skip bad images
            ds.skipped["bad_image"] += 1
            continue
        yield i, ds.transform(img), target


def batched(items: Iterable, batch_size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def lockstep(batches: Iterator, world_size: int, device: torch.device) -> Iterator:
    """Yield this rank's batches, then None while any other rank still has one (see module doc)."""
    for batch in batches:
        if distributed(world_size):
            _any_left(True, device)
        yield batch
    if distributed(world_size):
        while _any_left(False, device):
            yield None


def _any_left(mine: bool, device: torch.device) -> bool:
    return any_rank(torch.tensor([1.0 if mine else 0.0], device=device))[0]


def gather_rows(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate every rank's rows (row counts may differ), in rank order."""
    return gather_ragged_rows(x) if distributed(world_size) else x


def all_reduce_sum(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Elementwise sum over the ranks (counts stay integers)."""
    return sum_over_ranks(x) if distributed(world_size) else x


class Progress:
    """A one-line progress report on stderr (rank 0 only): in place on a terminal, else every 10 s."""

    def __init__(self, label: str, enabled: bool, total: int | None = None):
        self.label, self.enabled, self.total = label, enabled, total
        self.done, self.start = 0, time.time()
        self.last = self.start  # off a terminal: the first line after 10 s, not at once
        self.tty = enabled and sys.stderr.isatty()
        self.last_written = -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.time()
        if self.enabled and (self.tty or now - self.last >= 10.0):
            self.last = now
            self._write("\r" if self.tty else "", "" if self.tty else "\n")

    def close(self) -> None:
        if self.enabled and (self.tty or self.last_written != self.done):
            self._write("\r" if self.tty else "", "\n")

    def _write(self, head: str, tail: str) -> None:
        rate = self.done / max(time.time() - self.start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        sys.stderr.write(f"{head}{self.label}: {self.done}{of} ({rate:.1f}/s){tail}")
        self.last_written = self.done
        sys.stderr.flush()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Eval mode (full images, no masking) and no autograd; the caller's mode is restored, so
    the trainer can call evaluation between steps."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def encode_texts(model, tokenizer, texts: list[str], device, batch_size: int,
                 on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Normalised text embeddings [len(texts), D] in fp32 (no lockstep: callers make counts equal)."""
    out = []
    for chunk in batched(texts, batch_size):
        out.append(model.encode_text(tokenizer(chunk).to(device)).float())
        if on_batch:
            on_batch(len(chunk))
    return torch.cat(out) if out else torch.zeros(0)


def ensemble_views(num_patches: int, mask_ratio: float) -> int:
    """Masked views of a mask ensemble: enough disjoint kept sets to cover every patch
    (2 at 50%, 4 at 75% for 196 or 256 patches)."""
    keep = num_kept(num_patches, mask_ratio)
    return -(-num_patches // keep)


def complementary_noise(batch: int, num_patches: int, mask_ratio: float, device) -> list[torch.Tensor]:
    """One masking noise per view such that the views' kept patches are disjoint and together
    cover the image: one random order per image, view k keeps its k-th run of `keep` patches
    (the last view wraps around when `keep` does not divide the patch count)."""
    keep = num_kept(num_patches, mask_ratio)
    ranks = torch.rand(batch, num_patches, device=device).argsort(dim=1).argsort(dim=1)  # a permutation
    return [((ranks - k * keep) % num_patches).double() / num_patches
            for k in range(ensemble_views(num_patches, mask_ratio))]


def encode_images(model, images: torch.Tensor, mask_ratio: float = 0.0, ensemble: bool = False) -> torch.Tensor:
    """Normalised image embeddings; unmasked unless mask_ratio > 0 (Table 1d's ablation).

    ensemble: Table 1d's mask ensemble: average the normalised embeddings of complementary masked
    views (together they see every patch once), then renormalise.
    """
    # Pass the ratio only when masking, so any encode_image(images) (e.g. a wrapper's) works.
    if mask_ratio <= 0:
        return model.encode_image(images)
    if not ensemble:
        return model.encode_image(images, mask_ratio=mask_ratio)
    n = model.visual.num_patches  # a FlipModel (FSDP2 keeps the class; callers unwrap DDP)
    views = [model.encode_image(images, mask_ratio=mask_ratio, noise=noise).float()
             for noise in complementary_noise(images.shape[0], n, mask_ratio, images.device)]
    return F.normalize(torch.stack(views).mean(0), dim=-1)
