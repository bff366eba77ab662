from .flip import FlipModel, count_params, create_model
from .flops import flops_per_sample, image_flops, text_flops, train_flops_per_sample
from .masking import masking_noise, num_kept, random_masking
from .sizes import PAPER_PARAMS_M, PAPER_TOTAL_PARAMS_M, PAPER_VOCAB_SIZE, SIZES, ModelSize, get_size

__all__ = ["FlipModel", "count_params", "create_model", "flops_per_sample", "image_flops", "text_flops",
           "train_flops_per_sample", "masking_noise", "num_kept", "random_masking", "PAPER_PARAMS_M", "PAPER_TOTAL_PARAMS_M",
           "PAPER_VOCAB_SIZE", "SIZES", "ModelSize", "get_size"]
