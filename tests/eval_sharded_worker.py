"""One rank of tests/test_eval_sharded.py: a seeded random tiny model (metrics only need to be
deterministic, not good), zero-shot and retrieval through the evaluation API on RANK/WORLD_SIZE
(gloo when WORLD_SIZE > 1). Prints one JSON line per rank: the metrics and the shards it read.

usage: eval_sharded_worker.py ZEROSHOT_DIR RETRIEVAL_DIR BATCH_SIZE
"""
import json
import sys

import torch

import flip_scale.eval.common as common
from flip_scale.data.tokenizer import load_tokenizer
from flip_scale.distributed.env import cleanup, detect_env, init_distributed
from flip_scale.eval import evaluate_retrieval, evaluate_zeroshot
from flip_scale.models import create_model


def main(zeroshot_dir, retrieval_dir, batch_size):
    denv = detect_env()
    device = torch.device("cpu")
    init_distributed(denv, device)
    torch.manual_seed(0)
    model = create_model("tiny")
    tokenizer = load_tokenizer("builtin", model.size.text_length)
    read = []  # the shards this rank opened: wrap the reader the evaluation uses
    real = common.iter_tar_samples

    def spy(url, *a, **k):
        parts = url.split("/")  # .../<set>/test/<k>.tar
        read.append(f"{parts[-3]}/{parts[-1]}")
        return real(url, *a, **k)

    common.iter_tar_samples = spy
    kw = dict(rank=denv.rank, world_size=denv.world_size, batch_size=int(batch_size))
    zs = evaluate_zeroshot(model, tokenizer, model.size.image_size, zeroshot_dir, device, **kw)
    ret = evaluate_retrieval(model, tokenizer, model.size.image_size, retrieval_dir, device, **kw)
    print(json.dumps({"rank": denv.rank, "zeroshot": zs, "retrieval": ret, "read": read}), flush=True)
    if denv.distributed:
        cleanup(synchronize=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
