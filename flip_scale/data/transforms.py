"""Image transforms: FLIP's training augmentation and the evaluation resize/crop.

Training images leave the loader as uint8 [3,S,S] (4x fewer bytes to collate, hand from the
worker to the main process and copy to the device than float32) and are normalised and cast
where the model consumes them (`float_images`, called by FlipModel.encode_image/forward).

A sample's augmentation draws its randomness from `sample_draws(seed, *key)`: a counter-based
hash (splitmix64, as models/masking.py) of (seed, data position), so it does not depend on
which worker or rank processed the sample, nor on global RNG state: runs are reproducible and
resume gives the same batches. No per-sample RNG object is built (a SeedSequence plus a
torch.Generator cost more than the draws they served).

The training path, from the encoded bytes (`TrainTransform.apply`):
  1. header only (PIL, lazy), so the crop box is drawn before decoding;
  2. decode: JPEG with libjpeg-turbo through torchvision.io.decode_jpeg (faster than PIL's
     decode + RGB conversion), or, when the crop is at least 2x the output size in both
     directions, PIL's reduced-scale DCT decode (draft) at 1/2, 1/4 or 1/8; other formats PIL;
  3. one crop + antialiased bicubic resize on the uint8 pixels (torch's vectorised uint8
     kernel, ~1.5x PIL's resize here);
  4. horizontal flip.
The decode choice depends only on the image size and the crop, so it is as deterministic as
the crop itself.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models.preprocess import INV_STD_255, MEAN, MEAN_255, STD, float_images  # noqa: F401 - MEAN, STD, float_images re-exported

try:  # libjpeg-turbo via torchvision; PIL decodes everything when it is missing
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - torchvision is installed with torch here
    decode_jpeg = None

# The model's own normalisation (models/preprocess.py); the evaluation path applies it here.
_MEAN_255 = MEAN_255.numpy()
_INV_STD_255 = INV_STD_255.numpy()
TRAIN_SCALE = (0.5, 1.0)          # FLIP Table 10: RandomResizedCrop area (0.5, 1)
TRAIN_RATIO = (3 / 4, 4 / 3)

# splitmix64 (the seeder of Java's SplittableRandom), on Python ints modulo 2**64.
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix64(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class Draws:
    """A sample's stream of uniform draws: draw n is splitmix64(key + n * golden)."""

    __slots__ = ("key", "n")

    def __init__(self, key: int):
        self.key, self.n = key, 0

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        self.n += 1
        u = (_mix64((self.key + self.n * _GOLDEN) & _MASK) >> 11) * 2.0 ** -53
        return lo + (hi - lo) * u

    def randint(self, n: int) -> int:
        """Uniform integer in [0, n)."""
        return min(n - 1, int(self.uniform() * n))


def sample_draws(seed: int, *key: int) -> Draws:
    """The draws of one sample, keyed by (seed, *key) (e.g. its data position)."""
    h = _mix64(int(seed) & _MASK)
    for k in key:
        h = _mix64(((h ^ (int(k) & _MASK)) + _GOLDEN) & _MASK)
    return Draws(h)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3,H,W], ImageNet-normalised (evaluation path)."""
    # numpy on the HWC array, one contiguous CHW copy at the end: ~10x faster than the same
    # arithmetic on a permuted torch view, and it spawns no intra-op threads in workers.
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - _MEAN_255) * _INV_STD_255
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


# The authors' centre crop keeps image_size / (image_size + CROP_PADDING) of the short side
# (facebookresearch/flip utils/transform_util.py:11,82-100: 224/256 at 224 px).
CROP_PADDING = 32


def center_crop_box(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
    """The authors' fallback window (utils/transform_util.py:82-100, `_get_center_crop_window`):
    a centred square of int(image_size / (image_size + 32) * short side), offset
    ((side - size) + 1) // 2, the product taken in float32 as tf does."""
    frac = np.float32(image_size / (image_size + CROP_PADDING))
    size = max(1, int(frac * np.float32(min(width, height))))
    return (width - size + 1) // 2, (height - size + 1) // 2, size, size


def random_resized_crop_box(width: int, height: int, draws: Draws, image_size: int = 224,
                            scale=TRAIN_SCALE, ratio=TRAIN_RATIO) -> tuple[int, int, int, int]:
    """RandomResizedCrop box sampling as the authors' crop v4 (utils/transform_util.py:17-65,
    after timm/torchvision): (left, top, crop_w, crop_h). `image_size` sizes the fallback."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * draws.uniform(*scale)
        aspect = math.exp(draws.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = draws.randint(height - h + 1)
            left = draws.randint(width - w + 1)
            return left, top, w, h
    # No try fitted (16% of views of a 16:9 image, 44% at 2:1): the authors' fallback
    # (transform_util.py:54-58) is their eval centre crop, a square of 224/256 of the short side,
    # not torchvision's whole-height 4:3 box (which the square resize would squash).
    return center_crop_box(width, height, image_size)


def open_image(data: bytes) -> Image.Image:
    """The image's header (size, format, mode); pixels are decoded later, as the crop needs."""
    return Image.open(io.BytesIO(data))


def _pil_pixels(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 [3,H,W] view of a (writable) HWC copy of its RGB pixels."""
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def decode_for_crop(img: Image.Image, data: bytes | None, box, size: int):
    """Decode `img` (header from open_image; `data` its bytes) for a crop `box` resized to
    `size`: uint8 [3,h,w] pixels and the box in their coordinates. Raises on undecodable data."""
    left, top, w, h = box
    if img.format == "JPEG":
        s = next((s for s in (8, 4, 2) if w >= s * size and h >= s * size), 1)
        if s > 1:  # reduced-scale DCT: 1/s of the pixels decoded, still >= size in the crop
            width = img.width
            img.draft("RGB", (img.width // s, img.height // s))
            pixels = _pil_pixels(img)
            f = pixels.shape[2] / width  # 1/s, as draft rounds the size up
            H, W = pixels.shape[1:]
            x0, y0 = min(W - 1, round(left * f)), min(H - 1, round(top * f))
            return pixels, (x0, y0, max(1, min(W - x0, round(w * f))),
                            max(1, min(H - y0, round(h * f))))
        if decode_jpeg is not None and img.mode in ("RGB", "L"):
            try:
                pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                     mode=ImageReadMode.RGB)
                return pixels, box
            except RuntimeError:
                pass  # a JPEG variant torchvision rejects: PIL decodes it or raises the error
    return _pil_pixels(img), box


def crop_resize(pixels: torch.Tensor, box, size: int) -> torch.Tensor:
    """One crop + antialiased bicubic resize: uint8 [3,h,w] -> contiguous uint8 [3,size,size]."""
    left, top, w, h = box
    crop = pixels[None, :, top:top + h, left:left + w]
    if crop.shape[-2:] == (size, size):
        return crop[0].contiguous()
    return F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True)[0].contiguous()


def maybe_flip(pixels: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, bool]:
    """Horizontal flip with p = 0.5; says whether it flipped."""
    flipped = draws.uniform() < 0.5
    return (pixels.flip(-1) if flipped else pixels), flipped


def collate_samples(items) -> dict[str, torch.Tensor]:
    """[(uint8 [3,S,S], caption ids, sample index), ...] -> the batch dict."""
    images, ids, index = zip(*items)
    return {"images": torch.stack(images), "tokens": torch.tensor(ids, dtype=torch.long),
            "index": torch.tensor(index, dtype=torch.long)}


class TrainTransform:
    """RandomResizedCrop(area 0.5-1, aspect 3/4-4/3) + horizontal flip -> uint8 [3,S,S]."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, img, draws: Draws | None = None) -> torch.Tensor:
        """Augment one image (PIL image or encoded bytes); pass `draws` for determinism."""
        return self.apply(img, draws)[0]

    def apply(self, img, draws: Draws | None = None) -> tuple[torch.Tensor, bool]:
        """Augment one image (a PIL image, or encoded bytes: decoded only as the crop needs);
        also say whether it was mirrored (captions naming left/right must then be mirrored
        too, as the synthetic data does)."""
        if draws is None:
            draws = Draws(int(torch.randint(0, 2**62, (1,))))
        S = self.image_size
        if isinstance(img, (bytes, bytearray, memoryview)):
            header = open_image(bytes(img))
            box = random_resized_crop_box(header.width, header.height, draws, S)
            pixels, box = decode_for_crop(header, img, box, S)
        else:
            box = random_resized_crop_box(img.width, img.height, draws, S)
            pixels = _pil_pixels(img)
        return maybe_flip(crop_resize(pixels, box, S), draws)


class EvalTransform:
    """Resize the short side to image_size (bicubic), center crop, normalise."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = img.convert("RGB")
        s = self.image_size
        scale = s / min(img.width, img.height)
        w, h = max(s, round(img.width * scale)), max(s, round(img.height * scale))
        img = img.resize((w, h), Image.BICUBIC)
        left, top = (w - s) // 2, (h - s) // 2
        return to_normalized_tensor(img.crop((left, top, left + s, top + s)))


def train_transform(image_size: int) -> TrainTransform:
    """FLIP's training augmentation at `image_size` px; call as t(img, sample_draws(...))."""
    return TrainTransform(image_size)


def eval_transform(image_size: int) -> EvalTransform:
    """Evaluation preprocessing at `image_size` px; call as t(img)."""
    return EvalTransform(image_size)
