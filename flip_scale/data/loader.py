"""Training loader: the built-in synthetic stream or webdataset shards, resumable and deterministic.

Two sources, one interface (`build_train_loader` -> TrainLoader yielding
{"images" [B,3,H,W] uint8, "tokens" [B,L] int64, "index" [B] int64}; the model normalises
the uint8 pixels on its device, transforms.float_images). With data.decode=device (shards only)
the batches carry JPEG bytes + crop boxes + flips instead of "images", and the training step
decodes them on its device (device_decode.py; `batch_images` takes either kind of batch):

synthetic  Step s's global batch is samples s*G .. s*G+G-1 (G = global batch), rank r takes
           the contiguous slice r*B .. r*B+B-1. Each sample is rendered and augmented from
           (seed, index) alone, so the global batch does not depend on world size or workers.

shards     webdataset tars (local, http(s), pipe:). Each rank runs `workers` independent
           streams (one per DataLoader worker). A stream is a sequence of *chunks* of a few
           shards; a chunk's shard list, its shuffle buffer and each sample's augmentation are
           seeded from (seed, rank, stream, epoch, chunk, offset), and the shuffle buffer drains
           at the chunk's end. A stream's position is therefore (epoch, chunk, offset), and a
           resumed stream replays at most one chunk of raw bytes (no decoding) to get back to
           the exact sample. Exact-epoch mode deals every shard to exactly one stream per
           epoch; resampled mode draws shards with replacement, endlessly.

DataLoader returns worker batches strictly round-robin, so the loader can tell which stream
produced each consumed batch and record that stream's position; on resume the workers are
rotated so the round-robin continues with the stream that was next. Together: the batches after
a resume are the batches an uninterrupted run would have seen (endless modes; with a finite
`epochs`, exhausted streams end the round-robin early and order after resume may differ).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import warnings
from collections import Counter
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from .device_decode import collate_encoded, encode_for_device
from .shards import expand_shards, iter_tar_samples
from .synthetic import mirror_caption, render_sample
from .tokenizer import TextTokenizer, load_tokenizer
from .transforms import Draws, TrainTransform, collate_samples, sample_draws, train_transform

# Tokenizers' Rust thread pool does not survive fork; workers tokenise one batch at a time
# anyway, so parallelism inside the tokenizer buys nothing.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Counter names reported by TrainLoader.counters(); always present (zero when nothing skipped).
COUNTER_NAMES = ("corrupt_member", "bad_image", "empty_caption", "incomplete_sample",
                 "shard_error", "shard_retry")

def _cfg(data_cfg, name: str):
    """A field of the one data config type (flip_scale.config.DataConfig: its defaults and docs
    are the only ones; recipes, tests and benchmarks all build that type)."""
    return getattr(data_cfg, name)


def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    # One decode thread per worker: workers are the parallelism; torch's intra-op threads
    # would oversubscribe the cores the trainer needs.
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- synthetic source
class _SyntheticSamples(Dataset):
    """Map-style view: position p -> (augmented image, caption, sample index)."""

    def __init__(self, seed: int, image_size: int, num_distinct: int | None):
        self.seed, self.image_size, self.num_distinct = seed, image_size, num_distinct
        self.transform = train_transform(image_size)

    def __len__(self) -> int:  # endless stream; DataLoader only needs this for len()
        return 2**62

    def __getitem__(self, position: int):
        index = position % self.num_distinct if self.num_distinct else position
        img, caption = render_sample(self.seed, index, self.image_size)
        # Seeded by the stream position: a repeated sample (finite synthetic_samples) gets a
        # fresh augmentation, yet every rank/worker layout computes the same one.
        image, flipped = self.transform.apply(img, sample_draws(self.seed, position))
        # The captions name left/right; a mirrored image needs the mirrored caption or the
        # position words become noise.
        return image, mirror_caption(caption) if flipped else caption, index


class _StepBatches(Sampler):
    """Rank r's slice of global batch s, for s = start_step, start_step+1, ... forever."""

    def __init__(self, start_sample: int, global_batch: int, rank: int, local_batch: int):
        self.start_sample, self.global_batch = start_sample, global_batch
        self.rank, self.local_batch = rank, local_batch

    def __iter__(self):
        for s in itertools.count():
            lo = self.start_sample + s * self.global_batch + self.rank * self.local_batch
            yield list(range(lo, lo + self.local_batch))


class _Collate:
    """Stack images, tokenise captions (in the worker), keep indices."""

    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items):
        images, captions, index = zip(*items)
        return {"images": torch.stack(images), "tokens": self.tokenizer(list(captions)),
                "index": torch.tensor(index, dtype=torch.long)}


# ---------------------------------------------------------------------------- shard source
def sample_index(key: str) -> int:
    """Global sample index from a webdataset key: the number for img2dataset's numeric keys,
    else a stable 56-bit hash (unique enough to tell samples apart in logs and tests)."""
    base = key.rsplit("/", 1)[-1]
    if base.isdigit():
        return int(base)
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=7).digest(), "big")


def _interleave(iterators: list[Iterator]) -> Iterator:
    """Round-robin over a chunk's shards: consecutive samples come from different shards, so a
    shuffle buffer much smaller than a shard (1k vs LAION's 10k) still mixes several shards."""
    active = list(iterators)
    while active:
        still = []
        for it in active:
            try:
                yield next(it)
                still.append(it)
            except StopIteration:
                pass
        active = still


def _count_read(samples: Iterator[dict], read: list) -> Iterator[dict]:
    """Pass samples through, adding their bytes and count to read[0], read[1]."""
    for s in samples:
        read[0] += sum(len(v) for v in s.values() if isinstance(v, bytes))
        read[1] += 1
        yield s


def _shuffle(items: Iterator, bufsize: int, rng: np.random.Generator) -> Iterator:
    """Shuffle buffer that fills incrementally and drains completely when the input ends.

    The first sample comes out once the buffer holds a fifth of `bufsize`; from there each
    output reads two inputs until the buffer is full (as webdataset's `initial`). A worker
    starting a chunk therefore reads bufsize / 5 raw samples before its next batch, not
    bufsize: the refill no longer stalls its rank for a whole buffer (issue 13 item 5). Still
    a pure function of (inputs, rng), so a replayed chunk reproduces it exactly."""
    if bufsize <= 1:
        yield from items
        return
    initial = max(1, bufsize // 5)
    buf: list = []
    it = iter(items)
    for x in it:
        buf.append(x)
        if len(buf) < bufsize:  # grow by one per output while filling
            for y in it:
                buf.append(y)
                break
        if len(buf) < initial:
            continue
        k = int(rng.integers(len(buf)))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()
    while buf:
        k = int(rng.integers(len(buf)))
        buf[k], buf[-1] = buf[-1], buf[k]
        yield buf.pop()


def decode_sample(sample: dict, counters: Counter, tokenizer: TextTokenizer | None = None,
                  transform: TrainTransform | None = None, draws: Draws | None = None,
                  decode: str = "cpu") -> tuple[Any, list[int] | None] | None:
    """(image, caption ids) of a raw webdataset sample, or None (counted) when unusable.

    The image is the decoded RGB PIL image, or with `transform` the augmented uint8 [3,S,S]
    tensor (drawn from `draws`), decoded from the bytes only as far as the crop needs; with
    decode="device" as well, a JPEG is not decoded: device_decode.Encoded (bytes, box, flip).
    With a tokenizer the caption is tokenised here, once (ids are None without one), and a
    caption that yields no token (only zero-width or control characters) counts as empty too.
    The caption is checked first: a sample without one costs no image decode."""
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None or "txt" not in sample:
        counters["incomplete_sample"] += 1
        return None
    caption = sample["txt"].decode("utf-8", errors="replace").strip()
    ids = tokenizer.encode_caption(caption) if caption and tokenizer is not None else None
    if not caption or (tokenizer is not None and ids is None):
        counters["empty_caption"] += 1
        return None
    try:
        if transform is not None and decode == "device":
            return encode_for_device(sample[ext], draws, transform), ids
        if transform is not None:
            return transform(sample[ext], draws), ids
        img = Image.open(io.BytesIO(sample[ext]))
        img = img.convert("RGB")  # forces the full decode, so truncated files fail here
    except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes; all mean "skip"
        counters["bad_image"] += 1
        return None
    return img, ids


class _ShardStreams(IterableDataset):
    """Per-worker streams of ready batches over webdataset shards (see module docstring)."""

    def __init__(self, shards: list[str], *, tokenizer: TextTokenizer, image_size: int,
                 local_batch: int, seed: int, rank: int, world_size: int, num_streams: int,
                 resampled: bool, epochs: int | None, shuffle_buffer: int, shards_per_chunk: int,
                 retries: int, retry_delay_s: float, timeout_s: float, drop_last: bool,
                 positions: dict[int, tuple[int, int, int]], rotation: int, decode: str = "cpu"):
        self.shards = shards
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.local_batch = local_batch
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_streams = num_streams
        self.resampled, self.epochs = resampled, epochs
        self.shuffle_buffer, self.shards_per_chunk = shuffle_buffer, shards_per_chunk
        self.retries, self.retry_delay_s, self.timeout_s = retries, retry_delay_s, timeout_s
        self.drop_last = drop_last
        self.positions, self.rotation = positions, rotation
        self.decode = decode

    def chunks(self, stream: int, epoch0: int, chunk0: int) -> Iterator[tuple[int, int, list[str]]]:
        """(epoch, chunk, shard urls) of one stream, starting at (epoch0, chunk0)."""
        n, c = len(self.shards), self.shards_per_chunk
        if self.resampled:
            for chunk in itertools.count(chunk0):
                rng = np.random.default_rng([self.seed, self.rank, stream, chunk, 0x5A])
                yield 0, chunk, [self.shards[i] for i in rng.integers(0, n, size=c)]
            return
        slots = self.world_size * self.num_streams
        slot = self.rank * self.num_streams + stream
        epochs = itertools.count(epoch0) if self.epochs is None else range(epoch0, self.epochs)
        for epoch in epochs:
            # One permutation per epoch, identical on every rank/worker: the slots partition it,
            # so each shard is read by exactly one stream per epoch.
            perm = np.random.default_rng([self.seed, epoch, 0xE0]).permutation(n)
            mine = [self.shards[i] for i in perm[slot::slots]]
            first = chunk0 if epoch == epoch0 else 0
            for chunk in range(first, -(-len(mine) // c)):
                yield epoch, chunk, mine[chunk * c:(chunk + 1) * c]

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        stream = (physical + self.rotation) % self.num_streams
        yield from self.stream_batches(stream)

    def stream_batches(self, stream: int) -> Iterator[dict]:
        epoch0, chunk0, skip = self.positions.get(stream, (0, 0, 0))
        raw_counts: Counter = Counter()
        decode_counts: Counter = Counter()
        baseline: Counter = Counter()  # raw counts already reported before the resume point
        transform = train_transform(self.image_size)
        batch: list = []
        empty_chunks = 0
        pos = (epoch0, chunk0, skip)
        replayed = (0, 0)  # (bytes, samples) read again to restore the resume position
        for epoch, chunk, urls in self.chunks(stream, epoch0, chunk0):
            replay = skip if (epoch, chunk) == (epoch0, chunk0) else 0
            rng = np.random.default_rng([self.seed, self.rank, stream, epoch, chunk, 0x5F])
            raw = _interleave([iter_tar_samples(url, raw_counts, self.retries,
                                                self.retry_delay_s, self.timeout_s)
                               for url in urls])
            read = [0, 0]
            if replay:
                raw = _count_read(raw, read)
            produced = False
            for offset, sample in enumerate(_shuffle(raw, self.shuffle_buffer, rng)):
                if offset < replay:
                    if offset == replay - 1:
                        baseline = raw_counts.copy()
                        replayed = (read[0], read[1])  # the buffer's read-ahead included
                    continue
                pos = (epoch, chunk, offset + 1)
                draws = sample_draws(self.seed, self.rank, stream, epoch, chunk, offset)
                decoded = decode_sample(sample, decode_counts, self.tokenizer, transform, draws,
                                        self.decode)
                if decoded is None:
                    continue
                produced = True
                image, ids = decoded
                batch.append((image, ids, sample_index(sample["__key__"])))
                if len(batch) == self.local_batch:
                    yield self._emit(batch, stream, pos, raw_counts - baseline + decode_counts,
                                     replayed)
                    batch = []
            # A stream whose shards all fail (or hold no decodable image) would otherwise spin
            # forever in endless modes: give up after what amounts to two passes over the shards.
            empty_chunks = 0 if produced or replay else empty_chunks + 1
            limit = max(4, 2 * -(-len(self.shards) // self.shards_per_chunk))
            if empty_chunks >= limit:
                raise ValueError(f"data.train_shards: rank {self.rank} stream {stream} read {limit} "
                                 f"consecutive chunks of shards without one usable sample")
        if batch and not self.drop_last:
            yield self._emit(batch, stream, pos, raw_counts - baseline + decode_counts, replayed)
        # The final counts (e.g. a corrupt last shard) travel with an empty marker batch.
        yield {"_stream": stream, "_pos": pos, "_counters": dict(raw_counts - baseline
                                                                 + decode_counts),
               "_replayed": replayed, "_end": True}

    def _emit(self, batch, stream, pos, counts: Counter, replayed) -> dict:
        # captions were tokenised as they were decoded
        images = (collate_encoded(batch, self.image_size) if self.decode == "device"
                  else collate_samples(batch))
        return {**images, "_stream": stream, "_pos": pos,
                "_counters": dict(counts), "_replayed": replayed}


# ---------------------------------------------------------------------------------- loader
class TrainLoader:
    """Iterable over training batches with a resumable position and skip counters.

    Iterating again (or after load_state_dict) continues from the recorded position.
    """

    def __init__(self, data_cfg, *, text_length: int, global_batch_size: int, seed: int,
                 rank: int, world_size: int, tokenizer: TextTokenizer | None = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank/world_size {rank}/{world_size}")
        if global_batch_size % world_size:
            raise ValueError(f"train.global_batch_size {global_batch_size} is not divisible by "
                             f"the world size {world_size}")
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.image_size = int(_cfg(data_cfg, "image_size"))
        self.workers = int(_cfg(data_cfg, "workers"))
        self.prefetch_factor = int(_cfg(data_cfg, "prefetch_factor"))
        self.pin_memory = bool(_cfg(data_cfg, "pin_memory"))
        self.loader_timeout_s = float(_cfg(data_cfg, "loader_timeout_s"))
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(
            str(_cfg(data_cfg, "tokenizer")), text_length, bool(_cfg(data_cfg, "text_cls_token")))
        spec = str(_cfg(data_cfg, "train_shards"))
        self.synthetic = spec == "synthetic"
        self.decode = str(_cfg(data_cfg, "decode"))  # cpu | device, checked with the config (DataConfig.check)
        self._counter_base: Counter = Counter()
        self._stream_counts: dict[int, dict] = {}
        # decode=device: images the step could not decode (device_decode), counted in this
        # process as batches are decoded; the batches carry this Counter to the step.
        self._device_counts: Counter = Counter()
        if self.synthetic:
            n = _cfg(data_cfg, "synthetic_samples")
            self.synthetic_samples = int(n) if n else None
            self.next_sample = 0
            return
        self.num_streams = max(1, self.workers)
        self.resampled = bool(_cfg(data_cfg, "resampled"))
        epochs = _cfg(data_cfg, "epochs")
        self.epochs = int(epochs) if epochs is not None else None
        slots = world_size * self.num_streams

        def resolve() -> list[str]:
            shards = expand_shards(spec)
            if not self.resampled and len(shards) < slots:
                raise ValueError(f"data.train_shards {spec!r} has {len(shards)} shard(s), fewer "
                                 f"than ranks x workers = {slots}; use data.resampled=true or "
                                 f"fewer workers")
            probe_shards(shards, spec, timeout_s=float(_cfg(data_cfg, "shard_timeout_s")))
            return shards

        self.shards = on_rank0(resolve, world_size)
        self.stream_kw = dict(
            shuffle_buffer=int(_cfg(data_cfg, "shuffle_buffer")),
            shards_per_chunk=int(_cfg(data_cfg, "shards_per_chunk")),
            retries=int(_cfg(data_cfg, "shard_retries")),
            retry_delay_s=float(_cfg(data_cfg, "shard_retry_delay_s")),
            timeout_s=float(_cfg(data_cfg, "shard_timeout_s")),
            drop_last=bool(_cfg(data_cfg, "drop_last")))
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.batches = 0
        # Per stream, (bytes, samples) re-read after the last resume to restore its position:
        # at most one chunk (shards_per_chunk shards) of raw, undecoded tar bytes.
        self.replayed: dict[int, tuple[int, int]] = {}

    # -- iteration
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Counts reported by a previous iterator are folded into the base before restarting.
        for c in self._stream_counts.values():
            self._counter_base.update(c)
        self._stream_counts = {}
        if self.synthetic:
            yield from self._iter_synthetic()
        else:
            yield from self._iter_shards()

    def _loader_kw(self) -> dict:
        kw: dict[str, Any] = {"num_workers": self.workers, "pin_memory": self.pin_memory}
        if self.workers > 0:
            # A worker stuck on a dead mount fails the step after loader_timeout_s (a requeue
            # with the run's hang report) instead of waiting until the job's time limit.
            kw.update(prefetch_factor=self.prefetch_factor, worker_init_fn=_worker_init,
                      persistent_workers=False, timeout=self.loader_timeout_s)
        return kw

    def _iter_synthetic(self):
        ds = _SyntheticSamples(self.seed, self.image_size, self.synthetic_samples)
        sampler = _StepBatches(self.next_sample, self.global_batch_size, self.rank,
                               self.local_batch_size)
        dl = DataLoader(ds, batch_sampler=sampler, collate_fn=_Collate(self.tokenizer),
                        **self._loader_kw())
        for batch in dl:
            self.next_sample += self.global_batch_size
            yield batch

    def _iter_shards(self):
        ds = _ShardStreams(self.shards, tokenizer=self.tokenizer, image_size=self.image_size,
                           local_batch=self.local_batch_size, seed=self.seed, rank=self.rank,
                           world_size=self.world_size, num_streams=self.num_streams,
                           resampled=self.resampled, epochs=self.epochs,
                           positions=dict(self.positions),
                           rotation=self.batches % self.num_streams, decode=self.decode,
                           **self.stream_kw)
        dl = DataLoader(ds, batch_size=None, collate_fn=_identity, **self._loader_kw())
        for item in dl:
            stream = item.pop("_stream")
            self.positions[stream] = tuple(item.pop("_pos"))
            self._stream_counts[stream] = item.pop("_counters")
            self.replayed[stream] = tuple(item.pop("_replayed"))
            if item.pop("_end", False):
                continue
            self.batches += 1
            if self.decode == "device":
                item["decode_counters"] = self._device_counts
            yield item

    # -- position and counters
    def counters(self) -> dict[str, int]:
        """Cumulative skipped/failed counts: corrupt_member, bad_image, empty_caption, ..."""
        total = Counter({k: 0 for k in COUNTER_NAMES})
        if self.decode == "device":
            total["device_decode_failed"] = 0
        total.update(self._counter_base)
        for c in self._stream_counts.values():
            total.update(c)
        total.update(self._device_counts)
        return {k: int(v) for k, v in total.items()}

    def state_dict(self) -> dict:
        """Position (and counters) to checkpoint. For shards it is per rank: save one per rank."""
        if self.synthetic:
            return {"kind": "synthetic", "next_sample": self.next_sample,
                    "counters": self.counters()}
        return {"kind": "shards", "rank": self.rank, "world_size": self.world_size,
                "num_streams": self.num_streams, "batches": self.batches,
                "positions": {str(k): list(v) for k, v in self.positions.items()},
                "counters": self.counters()}

    def load_state_dict(self, sd: dict) -> None:
        """Continue from a state_dict() position at the next iteration."""
        kind = "synthetic" if self.synthetic else "shards"
        if sd.get("kind") != kind:
            raise ValueError(f"loader state is for {sd.get('kind')!r} data, this run uses {kind}")
        self._counter_base = Counter(sd.get("counters", {}))
        self._stream_counts = {}
        self._device_counts = Counter()
        if self.synthetic:
            self.next_sample = int(sd["next_sample"])
            return
        same = (sd["rank"], sd["world_size"], sd["num_streams"]) == (
            self.rank, self.world_size, self.num_streams)
        positions = {int(k): tuple(v) for k, v in sd["positions"].items()}
        if same:
            self.positions, self.batches = positions, int(sd["batches"])
            return
        # Another layout deals shards differently, so exact positions cannot carry over.
        # Exact epochs: restart at the start of the least advanced epoch seen (no sample lost,
        # some repeated). Resampled: continue with chunk numbers never drawn before, so the
        # resumed streams do not replay the draws the run started with.
        self.batches = 0
        if self.resampled:
            chunk = max((p[1] for p in positions.values()), default=-1) + 1
            self.positions = {s: (0, chunk, 0) for s in range(self.num_streams)}
            where = f"fresh shard draws (chunk {chunk})"
        else:
            epoch = min((p[0] for p in positions.values()), default=0)
            self.positions = {s: (epoch, 0, 0) for s in range(self.num_streams)}
            where = f"the start of epoch {epoch}"
        warnings.warn(f"loader state saved with rank/world/workers {sd['rank']}/{sd['world_size']}/"
                      f"{sd['num_streams']}, now {self.rank}/{self.world_size}/{self.num_streams}: "
                      f"restarting shard streams at {where}")


PROBE_SHARDS = 8


def on_rank0(fn, world_size: int):
    """fn() on rank 0 only, its result (or its error, as ValueError) broadcast to every rank.

    Used to expand and probe the shard pattern once per job: at 512 ranks x 400k LAION shards,
    every rank stat-ing every shard is ~10^8 metadata calls on a shared filesystem at start.
    Without an initialised process group of `world_size` ranks (tests that simulate ranks,
    single process) fn() runs locally."""
    if not (world_size > 1 and dist.is_available() and dist.is_initialized()
            and dist.get_world_size() == world_size):
        return fn()
    box: list = [None]
    error = None
    if dist.get_rank() == 0:
        try:
            box = [("ok", fn())]
        except Exception as e:  # noqa: BLE001 - forwarded so the other ranks do not hang
            error, box = e, [("error", str(e))]
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise ValueError(value)
    return value


def probe_shards(shards: list[str], spec: str, timeout_s: float = 60.0) -> None:
    """Fail at start, in one line, when the first shards hold no usable sample at all.

    Streams each probed shard only until its first decodable (image, caption) pair, so a healthy
    dataset costs one small read. Eight bad shards in a row is a broken pattern (wrong files,
    wrong format), not link rot; isolated bad shards are skipped and counted during training."""
    counters: Counter = Counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-line error below says it all
        for url in shards[:PROBE_SHARDS]:
            for sample in iter_tar_samples(url, counters, retries=0, timeout_s=timeout_s):
                if decode_sample(sample, counters) is not None:
                    return
    raise ValueError(f"data.train_shards: the first {min(len(shards), PROBE_SHARDS)} shard(s) of {spec!r} hold no "
                     f"usable sample (readable tar with an image and a caption); skipped: {dict(counters)}")


def build_train_loader(data_cfg, *, text_length: int, global_batch_size: int, seed: int,
                       rank: int, world_size: int, tokenizer: TextTokenizer | None = None
                       ) -> TrainLoader:
    """Build this rank's training loader (see TrainLoader); raises ValueError on bad input.

    `tokenizer` (optional) reuses an already loaded TextTokenizer (e.g. the run directory's
    snapshot) instead of loading data_cfg.tokenizer again.
    """
    return TrainLoader(data_cfg, text_length=text_length, global_batch_size=global_batch_size,
                       seed=seed, rank=rank, world_size=world_size, tokenizer=tokenizer)
