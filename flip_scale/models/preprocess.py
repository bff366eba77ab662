"""The input the model expects: ImageNet-normalised float images. Owned by the model (the data
pipeline and export read these constants from here), so models/ imports nothing from data/."""
from __future__ import annotations

import torch

# ImageNet statistics, as FLIP's release and OpenCLIP's ViT-B/L(LAION) configs normalise.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


# Per-channel mean and 1/std in uint8 units, float32, computed once: the training step's
# float_images and the evaluation path's numpy normalisation (data/transforms.py) use these numbers.
MEAN_255 = torch.tensor(MEAN, dtype=torch.float32) * 255.0
INV_STD_255 = 1.0 / (torch.tensor(STD, dtype=torch.float32) * 255.0)


def float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] (the training loader's batches) -> float32, ImageNet-normalised, on the
    tensor's own device; float images (eval, export) are returned unchanged."""
    if images.dtype != torch.uint8:
        return images
    mean = MEAN_255.to(images.device).view(1, 3, 1, 1)
    inv_std = INV_STD_255.to(images.device).view(1, 3, 1, 1)
    return (images.float() - mean) * inv_std
