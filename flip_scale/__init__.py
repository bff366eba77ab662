"""flip-scale: train FLIP (CLIP with image-patch masking) at scale."""
from .config import Config, ConfigError, load_recipe
from .models import FlipModel, count_params, create_model, flops_per_sample, train_flops_per_sample

__version__ = "0.1.0"


def load_checkpoint(path, device="cpu"):
    """(model, tokenizer, transform) from a run directory or checkpoint, whichever backend saved it."""
    from .inference import load_for_inference

    return load_for_inference(path, device=device)


__all__ = ["Config", "ConfigError", "load_recipe", "FlipModel", "count_params", "create_model",
           "flops_per_sample", "train_flops_per_sample", "load_checkpoint", "__version__"]
