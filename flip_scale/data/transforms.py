"""Image transforms: FLIP's training augmentation and the evaluation resize/crop.

The training transform draws its randomness from an explicit torch.Generator, normally seeded
from (seed, global sample index) by `sample_generator`, so a sample's augmentation does not
depend on which worker or rank processed it, nor on global RNG state: runs are reproducible
and resume gives the same batches. Written with PIL + torch only (one crop+resize call per
image) so it does not depend on torchvision's version.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

# ImageNet statistics, as FLIP's release and OpenCLIP's ViT-B/L(LAION) configs normalise.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_MEAN_255 = np.array(MEAN, dtype=np.float32) * 255.0
_INV_STD_255 = 1.0 / (np.array(STD, dtype=np.float32) * 255.0)
TRAIN_SCALE = (0.5, 1.0)          # FLIP Table 10: RandomResizedCrop area (0.5, 1)
TRAIN_RATIO = (3 / 4, 4 / 3)


def sample_generator(seed: int, *key: int) -> torch.Generator:
    """A torch.Generator seeded by mixing (seed, *key) (e.g. the global sample index)."""
    state = np.random.SeedSequence([seed, *key]).generate_state(2, np.uint32)
    g = torch.Generator()
    g.manual_seed((int(state[0]) << 31) ^ int(state[1]))  # < 2**63: accepted by manual_seed
    return g


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3,H,W], ImageNet-normalised."""
    # numpy on the HWC array, one contiguous CHW copy at the end: ~10x faster than the same
    # arithmetic on a permuted torch view, and it spawns no intra-op threads in workers.
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - _MEAN_255) * _INV_STD_255
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def random_resized_crop_box(width: int, height: int, g: torch.Generator,
                            scale=TRAIN_SCALE, ratio=TRAIN_RATIO) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box sampling: (left, top, crop_w, crop_h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(g, *scale)
        aspect = math.exp(_uniform(g, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            return left, top, w, h
    # Fallback (extreme aspect ratios): central crop clamped to the allowed ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class TrainTransform:
    """RandomResizedCrop(area 0.5-1, aspect 3/4-4/3) + horizontal flip + normalise."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment one image; pass `generator` (see sample_generator) for determinism."""
        return self.apply(img, generator)[0]

    def apply(self, img: Image.Image, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, bool]:
        """Augment one image; also say whether it was mirrored (captions naming left/right
        must then be mirrored too, as the synthetic data does)."""
        g = generator if generator is not None else torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,))))
        img = img.convert("RGB")
        left, top, w, h = random_resized_crop_box(img.width, img.height, g)
        out = img.resize((self.image_size, self.image_size), Image.BICUBIC,
                         box=(left, top, left + w, top + h))
        flipped = float(torch.rand((), generator=g)) < 0.5
        if flipped:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(out), flipped


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
    """FLIP's training augmentation at `image_size` px; call as t(img, generator)."""
    return TrainTransform(image_size)


def eval_transform(image_size: int) -> EvalTransform:
    """Evaluation preprocessing at `image_size` px; call as t(img)."""
    return EvalTransform(image_size)
