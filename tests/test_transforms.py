"""FLIP's training augmentation (FLIP_FACTS.md "Pretraining recipe"): RandomResizedCrop with area
(0.5, 1) and aspect (3/4, 4/3), horizontal flip, fixed output size; deterministic per generator.

The end-to-end checks feed a coordinate image (red = x, green = y) through the real transform and
read the crop box and the mirroring back from the output pixels, so they test what the transform
does to an image, not only the box sampler."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from flip_scale.data.transforms import MEAN, STD, random_resized_crop_box, sample_generator, train_transform

AREA = (0.5, 1.0)        # FLIP_FACTS.md: RandomResizedCrop area (0.5, 1)
ASPECT = (3 / 4, 4 / 3)  # FLIP_FACTS.md: aspect (3/4, 4/3)
DRAWS = 1000


def test_crop_boxes_area_and_aspect_within_flip_ranges():
    W = H = 1000  # large, so integer rounding of the box moves area/aspect by < 0.2%
    areas, aspects = [], []
    for i in range(DRAWS):
        left, top, w, h = random_resized_crop_box(W, H, sample_generator(0, i))
        assert 0 <= left and left + w <= W and 0 <= top and top + h <= H
        areas.append(w * h / (W * H))
        aspects.append(w / h)
    assert AREA[0] * 0.998 <= min(areas) and max(areas) <= AREA[1]
    assert ASPECT[0] * 0.998 <= min(aspects) and max(aspects) <= ASPECT[1] * 1.002
    # The whole range is used (a sampler stuck on full-image crops would pass the bounds alone).
    assert min(areas) < 0.52 and max(areas) > 0.97
    assert min(aspects) < 0.77 and max(aspects) > 1.30
    # torchvision's sampler: area uniform in (0.5, 1), aspect log-uniform, a draw whose box does
    # not fit is redrawn. On a square image a box fits iff area <= min(r, 1/r), so the accepted
    # area has mean E[A; A <= e^-|log r|] / P(A <= e^-|log r|), integrated over |log r| below;
    # log-aspect has mean 0 by symmetry. (SE over 1000 draws: ~0.004 area, ~0.005 log-aspect.)
    u = np.linspace(0.0, math.log(ASPECT[1]), 100001)
    c = np.exp(-u)
    accept = np.mean((c - AREA[0]) / (AREA[1] - AREA[0]))
    mean_area = np.mean((c ** 2 - AREA[0] ** 2) / 2 / (AREA[1] - AREA[0])) / accept
    assert np.mean(areas) == pytest.approx(mean_area, abs=0.015)
    assert np.mean(np.log(aspects)) == pytest.approx(0.0, abs=0.025)


def _coordinate_image(size=256):
    x = np.arange(size, dtype=np.uint8)
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[..., 0] = x[None, :]  # red = column
    arr[..., 1] = x[:, None]  # green = row
    return Image.fromarray(arr)


def _pixels(t):
    """Normalised [3,S,S] tensor back to 0..255 values."""
    mean = torch.tensor(MEAN).view(3, 1, 1) * 255
    std = torch.tensor(STD).view(3, 1, 1) * 255
    return (t * std + mean).numpy()


def _box_from_output(t):
    """(crop width, crop height, mirrored) read back from the output of the coordinate image.

    Output column j samples source x = left + (j + 0.5) w / S (pixel k holds the value k at
    coordinate k + 0.5); interior columns are exact for a linear ramp under bicubic resampling."""
    px = _pixels(t)
    S = t.shape[-1]
    j0, j1 = 3, S - 4
    red = px[0].mean(axis=0)
    green = px[1].mean(axis=1)
    w = abs(red[j1] - red[j0]) * S / (j1 - j0)
    h = (green[j1] - green[j0]) * S / (j1 - j0)
    return w, h, bool(red[j1] < red[j0])


def test_train_transform_output_shape_crop_and_flip_statistics():
    S = 32
    transform = train_transform(S)
    img = _coordinate_image(256)
    flips, areas, aspects = 0, [], []
    for i in range(DRAWS):
        out, flipped = transform.apply(img, sample_generator(7, i))
        assert out.shape == (3, S, S) and out.dtype == torch.float32
        w, h, mirrored = _box_from_output(out)
        assert mirrored == flipped, i  # the flag says what happened to the pixels
        flips += flipped
        areas.append(w * h / 256 ** 2)
        aspects.append(w / h)
    # Read back through box rounding at 256 px, resampling and 8-bit values: allow 2.5%.
    assert AREA[0] * 0.975 <= min(areas) and max(areas) <= AREA[1] * 1.025
    assert ASPECT[0] * 0.975 <= min(aspects) and max(aspects) <= ASPECT[1] * 1.025
    assert min(areas) < 0.55 and max(areas) > 0.95
    # Horizontal flip with p = 0.5: binomial SD over 1000 draws is sqrt(1000/4) = 15.8; allow 4 SD.
    assert abs(flips - DRAWS / 2) <= 4 * math.sqrt(DRAWS / 4), flips


def test_same_generator_seed_same_output_and_other_seeds_differ():
    transform = train_transform(32)
    img = _coordinate_image(128)
    a = transform(img, sample_generator(3, 42))
    b = transform(img, sample_generator(3, 42))
    assert torch.equal(a, b)
    others = [transform(img, sample_generator(3, 43)), transform(img, sample_generator(4, 42))]
    assert all(not torch.equal(a, o) for o in others)


def test_output_size_does_not_depend_on_the_input_shape():
    transform = train_transform(48)
    for size in ((640, 480), (300, 900), (48, 48), (20, 30)):
        img = Image.new("RGB", size, (10, 200, 30))
        out = transform(img, sample_generator(0, 1))
        assert out.shape == (3, 48, 48) and out.dtype == torch.float32
        # A flat colour stays that colour after crop, resize and flip (normalised per channel).
        want = (torch.tensor([10, 200, 30]) / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
        assert torch.allclose(out.mean(dim=(1, 2)), want, atol=0.02)
