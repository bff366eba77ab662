"""Zero-shot classification, the CLIP recipe: for each class, embed every template filled with
the class name, average the (normalised) embeddings and renormalise; classify each unmasked
image by its most similar class embedding.

Distributed: rank r embeds a contiguous block of classes (blocks padded to equal size so every
rank makes the same number of encoder calls) and the images i with i % world == r; class
embeddings are all-gathered, and only integer counts (top-1/top-5 hits, per-class hits and
totals) are summed across ranks. Counts are exact, so any world size gives the same metrics.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.eval_datasets import resolve_templates
from .common import (Progress, all_reduce_sum, batched, distributed, encode_images, encode_texts, eval_mode,
                     gather_rows, iter_rank_slice, lockstep, open_dataset)

# `--templates 7|80` names OpenAI's ImageNet template sets (FLIP reported the 7).
TEMPLATE_SETS = {"7": "openai7", "80": "openai80"}


def fill_template(template: str, classname: str) -> str:
    # replace, not str.format: CLIP_benchmark template files may hold other braces.
    return template.replace("{c}", classname)


def class_embeddings(model, tokenizer, classnames: list[str], templates: list[str], device, *,
                     rank: int = 0, world_size: int = 1, batch_size: int = 256,
                     progress: bool = False) -> torch.Tensor:
    """[C, D] normalised classifier weights: mean over templates of normalised text embeddings."""
    C, T = len(classnames), len(templates)
    block = math.ceil(C / world_size)
    mine = list(range(rank * block, min((rank + 1) * block, C)))
    # Pad with copies so all ranks encode block * T texts (same call count, see common.py).
    padded = mine + [mine[-1] if mine else 0] * (block - len(mine))
    texts = [fill_template(t, classnames[c]) for c in padded for t in templates]
    bar = Progress("class texts", progress and rank == 0, total=C * T)
    emb = encode_texts(model, tokenizer, texts, device, batch_size,
                       on_batch=lambda n: bar.update(min(n, C * T - bar.done)))
    bar.close()
    emb = F.normalize(emb.view(block, T, -1).mean(dim=1), dim=-1)
    gathered = gather_rows(emb, world_size).view(world_size if distributed(world_size) else 1, block, -1)
    parts = [gathered[r, : max(0, min(block, C - r * block))] for r in range(gathered.shape[0])]
    return torch.cat(parts)[:C]


def evaluate_zeroshot(model, tokenizer, transform_or_image_size, dataset_dir: str, device, *, rank: int = 0,
                      world_size: int = 1, batch_size: int = 256, progress: bool = False,
                      templates: str | list[str] | None = None, image_mask_ratio: float = 0.0,
                      image_mask_ensemble: bool = False) -> dict:
    """Zero-shot top-1/top-5/mean per-class recall of `model` on a classification set.

    model: a FlipModel, or one wrapped by a backend (FSDP2 with encode_image/encode_text
        registered as forward methods; DDP's .module). Collective: with world_size > 1 every
        rank must call this. Its train/eval mode is restored on return.
    transform_or_image_size: the eval transform from load_checkpoint, or the image size.
    templates: None = the dataset's templates file (else OpenAI's 7); '7' / '80' = OpenAI's
        ImageNet sets; a path to a template file; or a list of template strings.
    image_mask_ratio: 0 = full images (FLIP); > 0 masks images at inference (Table 1d ablation).
    image_mask_ensemble: with a mask, average complementary masked views (Table 1d's ensemble).
    Returns {"dataset", "acc1", "acc5", "mean_per_class_recall", "n"} (CLIP_benchmark names).
    """
    device = torch.device(device)
    ds = open_dataset(dataset_dir, transform_or_image_size)
    if ds.kind != "classification":
        raise ValueError(f"{dataset_dir}: a {ds.kind} set, not a classification set (use retrieval)")
    if templates is None:
        template_list = ds.templates
    elif isinstance(templates, str):
        template_list = resolve_templates(TEMPLATE_SETS.get(templates, templates))
    else:
        template_list = list(templates)
    C = len(ds.classnames)
    k = min(5, C)
    with eval_mode(model):
        classifier = class_embeddings(model, tokenizer, ds.classnames, template_list, device, rank=rank,
                                      world_size=world_size, batch_size=batch_size, progress=progress)
        counts = torch.zeros(3, dtype=torch.float64, device=device)  # n, top-1 hits, top-k hits
        class_hits = torch.zeros(C, dtype=torch.float64, device=device)
        class_total = torch.zeros(C, dtype=torch.float64, device=device)
        size = ds.transform.image_size
        bar = Progress("images", progress and rank == 0)
        for batch in lockstep(batched(iter_rank_slice(ds, rank, world_size), batch_size), world_size, device):
            if batch is None:  # this rank is done; keep FSDP's collectives in step with the others
                encode_images(model, torch.zeros(1, 3, size, size, device=device), image_mask_ratio,
                              image_mask_ensemble)
                continue
            images = torch.stack([b[1] for b in batch]).to(device)
            labels = torch.tensor([b[2] for b in batch], device=device)
            if int(labels.max()) >= C or int(labels.min()) < 0:
                raise ValueError(f"{dataset_dir}: label {int(labels.max())} outside the {C} class names")
            logits = encode_images(model, images, image_mask_ratio, image_mask_ensemble).float() @ classifier.T
            topk = logits.topk(k, dim=1).indices
            hit1 = topk[:, 0] == labels
            counts += torch.stack([torch.tensor(float(len(batch)), device=device), hit1.sum().double(),
                                   (topk == labels[:, None]).any(dim=1).sum().double()])
            class_total.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
            class_hits.index_add_(0, labels, hit1.double())
            bar.update(len(batch) * world_size)
        bar.close()
    stats = all_reduce_sum(torch.cat([counts, class_hits, class_total]), world_size).cpu()
    n, hits1, hitsk = (float(v) for v in stats[:3])
    class_hits, class_total = stats[3:3 + C], stats[3 + C:]
    present = class_total > 0
    # Balanced accuracy over the classes present, as CLIP_benchmark (sklearn) computes it.
    mpcr = float((class_hits[present] / class_total[present]).mean()) if present.any() else 0.0
    return {"dataset": ds.name, "acc1": hits1 / max(n, 1), "acc5": hitsk / max(n, 1),
            "mean_per_class_recall": mpcr, "n": int(n)}

