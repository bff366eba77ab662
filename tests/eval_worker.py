"""One rank of the FSDP evaluation test (tests/test_eval.py): join gloo from RANK/WORLD_SIZE,
shard the loaded model with FSDP2 exactly as the fsdp backend does, then call the in-training
evaluation API. Rank 0 prints the results as one JSON line.

usage: eval_worker.py RUN_DIR ZEROSHOT_DIR RETRIEVAL_DIR BATCH_SIZE
"""
import json
import sys

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import register_fsdp_forward_method

import flip_scale
from flip_scale.distributed.backends.fsdp import apply_fsdp
from flip_scale.distributed.env import cleanup, detect_env, init_distributed
from flip_scale.eval import evaluate_retrieval, evaluate_zeroshot


def main(run_dir, zeroshot_dir, retrieval_dir, batch_size):
    denv = detect_env()
    device = torch.device("cpu")
    init_distributed(denv, device)
    model, tokenizer, transform = flip_scale.load_checkpoint(run_dir)
    apply_fsdp(model, init_device_mesh("cpu", (denv.world_size,)), "fp32")
    for method in ("encode_image", "encode_text"):
        register_fsdp_forward_method(model, method)
    model.train()  # as the trainer would hold it; evaluation must switch to eval and back
    kw = dict(rank=denv.rank, world_size=denv.world_size, batch_size=int(batch_size))
    zs = evaluate_zeroshot(model, tokenizer, transform, zeroshot_dir, device, **kw)
    ret = evaluate_retrieval(model, tokenizer, transform.image_size, retrieval_dir, device, **kw)
    if denv.rank == 0:
        print(json.dumps({"zeroshot": zs, "retrieval": ret, "training_after": model.training}), flush=True)
    cleanup(synchronize=True)  # as the CLI does: wait for in-flight FSDP2 gloo work before teardown


if __name__ == "__main__":
    main(*sys.argv[1:])
