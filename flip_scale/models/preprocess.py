"""The input the model expects: ImageNet-normalised float images. Owned by the model (the data
pipeline and export read these constants from here), so models/ imports nothing from data/."""
from __future__ import annotations

import torch

# ImageNet statistics, as FLIP's release and OpenCLIP's ViT-B/L(LAION) configs normalise.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] (the training loader's batches) -> float32, ImageNet-normalised, on the
    tensor's own device; float images (eval, export) are returned unchanged."""
    if images.dtype != torch.uint8:
        return images
    # float32 arithmetic, as the evaluation path's numpy normalisation (data/transforms.py) does.
    mean = torch.tensor(MEAN, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(STD, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0)
    return (images.float() - mean) * inv_std
