"""data.decode=device: JPEG decode and crop/resize/flip on the training device (issue 13 item 4).

The work is split so a loader worker costs a header parse per image instead of a decode:
  worker  `encode_for_device`: open the JPEG header (PIL, lazy), draw the crop box and the flip
          from the sample's draws exactly as TrainTransform.apply does (same draws, same order:
          box then flip), keep the encoded bytes. `collate_encoded` packs a batch as ONE flat
          uint8 tensor + offsets (one shared-memory segment per batch through DataLoader IPC,
          not one per image), an int32 [B,4] box tensor (left, top, w, h) and a bool [B] flip
          tensor, next to tokens and index as decode=cpu ships them.
  step    `batch_images` (TrainStep's one call): decode=cpu batches are copied to the device;
          decode=device batches go through `decode_batch_on_device`: torchvision.io.decode_jpeg
          on the device (one batched call: nvJPEG on CUDA; the same call decodes on the CPU),
          then per image the crop + antialiased bicubic resize of transforms.crop_resize and the
          flip, stacked to uint8 [B,3,S,S] that float_images normalises as today.

Samples that still decode in the worker and travel as pixels (`worker_images`, rows
`worker_rows`), exactly as decode=cpu would produce them: non-JPEG images (PNG, WebP), JPEGs
torchvision does not decode (CMYK), and JPEGs without their end-of-image marker (truncated
downloads: the worker's decode then fails and the sample is skipped and counted as bad_image,
as with decode=cpu). An unreadable header is skipped and counted in the worker too.

Parity with decode=cpu: same boxes, flips and sample order. Pixels are identical where the CPU
path decodes the full image with libjpeg-turbo; where it uses PIL's reduced-scale DCT (crops
>= 2x the output) the device decodes full size and resizes further, so pixels differ by
resampling only (tests/test_device_decode.py measures and bounds it).

A JPEG whose header and end marker are intact but whose body fails on the device is retried
alone on the device, then decoded with PIL on the host; if that fails too its row becomes the
ImageNet mean colour (zero after normalisation) and is counted as `device_decode_failed` in the
loader's counters: the batch keeps its size, which the contrastive gather across ranks needs.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from .transforms import (MEAN, Draws, TrainTransform, _pil_pixels, open_image,
                         random_resized_crop_box)

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision is installed with torch here
    decode_jpeg = None

_EOI = b"\xff\xd9"
# The row a failed decode leaves: the mean colour normalises to ~0, i.e. no signal.
_MEAN_UINT8 = tuple(round(255 * m) for m in MEAN)


class Encoded(NamedTuple):
    """A worker's output for one JPEG decoded on the device."""
    data: bytes
    box: tuple[int, int, int, int]  # (left, top, w, h) in full-size pixels
    flip: bool


def _ends_with_eoi(data: bytes) -> bool:
    # In entropy-coded data 0xFF is stuffed with 0x00, so FF D9 near the end is the real marker;
    # a little slack for the zero padding / trailing bytes some encoders leave.
    return data.find(_EOI, max(0, len(data) - 64)) >= 0


def encode_for_device(data: bytes, draws: Draws, transform: TrainTransform) -> Encoded | torch.Tensor:
    """Worker side of decode=device: Encoded (bytes + box + flip) for a JPEG the device can
    decode, else the augmented uint8 [3,S,S] pixels decoded here as decode=cpu does.
    Raises (the caller counts bad_image) on an unreadable header or undecodable fallback."""
    header = open_image(data)
    if (decode_jpeg is not None and header.format == "JPEG" and header.mode in ("RGB", "L")
            and _ends_with_eoi(data)):
        box = random_resized_crop_box(header.width, header.height, draws, transform.image_size)
        return Encoded(data, box, draws.uniform() < 0.5)  # maybe_flip's draw, in its order
    return transform.apply(data, draws)[0]


def collate_encoded(items, image_size: int) -> dict[str, torch.Tensor]:
    """[(Encoded | uint8 [3,S,S], caption ids, sample index), ...] -> a decode=device batch."""
    chunks, offsets, boxes, flips, worker_images, worker_rows = [], [0], [], [], [], []
    for row, (enc, _, _) in enumerate(items):
        if isinstance(enc, Encoded):
            chunks.append(enc.data)
            boxes.append(enc.box)
            flips.append(enc.flip)
        else:  # decoded (and flipped) in the worker
            worker_images.append(enc)
            worker_rows.append(row)
            boxes.append((0, 0, 0, 0))
            flips.append(False)
        offsets.append(offsets[-1] + (len(enc.data) if isinstance(enc, Encoded) else 0))
    joined = bytearray().join(chunks)  # one copy (b"".join then bytearray() would be two)
    S = image_size
    _, ids, index = zip(*items)
    return {
        "jpeg": torch.frombuffer(joined, dtype=torch.uint8) if joined else torch.empty(0, dtype=torch.uint8),
        "jpeg_offsets": torch.tensor(offsets, dtype=torch.long),
        "crop_boxes": torch.tensor(boxes, dtype=torch.int32).reshape(-1, 4),
        "flips": torch.tensor(flips, dtype=torch.bool),
        # [K,3,S,S] (K may be 0: the shape still carries S to the device side)
        "worker_images": (torch.stack(worker_images) if worker_images
                          else torch.empty(0, 3, S, S, dtype=torch.uint8)),
        "worker_rows": torch.tensor(worker_rows, dtype=torch.long),
        "tokens": torch.tensor(ids, dtype=torch.long),
        "index": torch.tensor(index, dtype=torch.long),
    }


def _decode_all(datas: list[torch.Tensor], device: torch.device, counters: Counter | None):
    """Decoded uint8 [3,H,W] on `device` per encoded image (None where nothing decodes it)."""
    if not datas:
        return []
    try:  # one batched call: nvJPEG's batched decode on CUDA
        return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass  # the batched call returns nothing when one image fails: retry one by one
    out = []
    for d in datas:
        try:
            out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
            continue
        except RuntimeError:
            pass
        try:  # a variant the device decoder rejects but PIL reads
            out.append(_pil_pixels(Image.open(io.BytesIO(d.numpy().tobytes()))).to(device))
        except Exception:  # noqa: BLE001 - PIL raises many types for bad bytes
            if counters is not None:
                counters["device_decode_failed"] += 1
            out.append(None)
    return out


def resize_crop(pixels: torch.Tensor, box, size: int, uint8_kernel: bool | None = None) -> torch.Tensor:
    """transforms.crop_resize on any device: the same uint8 antialiased bicubic kernel on the
    CPU (identical pixels); elsewhere (CUDA has no uint8 antialiased bicubic) the same filter in
    float32, rounded and clamped back to uint8. `uint8_kernel` forces the choice (tests run the
    CUDA arithmetic on the CPU)."""
    left, top, w, h = box
    crop = pixels[None, :, top:top + h, left:left + w]
    if crop.shape[-2:] == (size, size):
        return crop[0]
    if crop.device.type == "cpu" if uint8_kernel is None else uint8_kernel:
        return F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)[0]
    out = F.interpolate(crop.float(), size=(size, size), mode="bicubic", antialias=True)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8)


def decode_batch_on_device(batch: dict, device: torch.device | str,
                           counters: Counter | None = None) -> torch.Tensor:
    """A collate_encoded batch -> uint8 [B,3,S,S] on `device`: decode, crop + resize, flip."""
    device = torch.device(device)
    S = batch["worker_images"].shape[-1]
    offsets = batch["jpeg_offsets"].tolist()
    B = len(offsets) - 1
    flat = batch["jpeg"]
    rows = [i for i in range(B) if offsets[i + 1] > offsets[i]]
    decoded = _decode_all([flat[offsets[i]:offsets[i + 1]] for i in rows], device, counters)
    out = torch.empty(B, 3, S, S, dtype=torch.uint8, device=device)
    boxes = batch["crop_boxes"].tolist()
    flips = batch["flips"].tolist()
    for i, pixels in zip(rows, decoded):
        if pixels is None:
            out[i] = torch.tensor(_MEAN_UINT8, dtype=torch.uint8, device=device).view(3, 1, 1)
            continue
        img = resize_crop(pixels, boxes[i], S)
        out[i] = img.flip(-1) if flips[i] else img
    if len(batch["worker_rows"]):
        out[batch["worker_rows"].to(device)] = batch["worker_images"].to(device, non_blocking=True)
    return out


def batch_images(batch: dict, device: torch.device) -> torch.Tensor:
    """The batch's uint8 [B,3,S,S] images on `device`, whichever data.decode built the batch:
    decode=cpu ships pixels (copied, non_blocking); decode=device ships JPEG bytes (decoded
    here, failures counted into the loader's counters the batch carries)."""
    if "images" in batch:
        return batch["images"].to(device, non_blocking=True)
    return decode_batch_on_device(batch, device, batch.get("decode_counters"))
