"""Zero-shot image-text retrieval (COCO / Flickr30k style: several captions per image).

Metric names follow CLIP_benchmark (INTERFACE.md):
    image_retrieval_recall@K  a caption as query: is its image among the top K images?
                              (mean over captions)
    text_retrieval_recall@K   an image as query: is any of its captions among the top K
                              texts? (mean over images)
Distributed: rank r embeds images i with i % world == r and their captions; the embeddings
are gathered and put back in dataset order, so the ranking is the single-process one.
"""
from __future__ import annotations

import torch

from .common import Progress, batched, encode_images, eval_mode, gather_rows, iter_rank_slice, lockstep, open_dataset

RECALL_AT = (1, 5, 10)
_MAX_CAPTIONS = 1 << 16  # caption j of image i sorts as i * _MAX_CAPTIONS + j


def retrieval_recalls(image_emb: torch.Tensor, text_emb: torch.Tensor, text_owner: torch.Tensor,
                      ks=RECALL_AT, chunk: int = 1024) -> dict:
    """Recall@K both ways. text_owner[t] = row of text t's image in image_emb.

    Scores are computed in chunks of queries: a full COCO matrix (5k x 25k) would not need to
    sit in memory at once.
    """
    n_img, n_txt, kmax = image_emb.shape[0], text_emb.shape[0], max(ks)
    img_hits = {k: 0.0 for k in ks}
    for s in range(0, n_txt, chunk):
        top = (text_emb[s:s + chunk] @ image_emb.T).topk(min(kmax, n_img), dim=1).indices
        owner = text_owner[s:s + chunk, None]
        for k in ks:
            img_hits[k] += float((top[:, :k] == owner).any(dim=1).sum())
    txt_hits = {k: 0.0 for k in ks}
    for s in range(0, n_img, chunk):
        top = (image_emb[s:s + chunk] @ text_emb.T).topk(min(kmax, n_txt), dim=1).indices
        query = torch.arange(s, min(s + chunk, n_img), device=image_emb.device)[:, None]
        for k in ks:
            txt_hits[k] += float((text_owner[top[:, :k]] == query).any(dim=1).sum())
    out = {f"image_retrieval_recall@{k}": img_hits[k] / max(n_txt, 1) for k in ks}
    out.update({f"text_retrieval_recall@{k}": txt_hits[k] / max(n_img, 1) for k in ks})
    return out


def evaluate_retrieval(model, tokenizer, transform_or_image_size, dataset_dir: str, device, *, rank: int = 0,
                       world_size: int = 1, batch_size: int = 256, progress: bool = False,
                       image_mask_ratio: float = 0.0, image_mask_ensemble: bool = False) -> dict:
    """Recall@1/5/10 image->text and text->image on a retrieval set (KEY.txt: a caption a line).

    Same calling rules as evaluate_zeroshot (collective when world_size > 1, mode restored).
    Returns {"dataset", "image_retrieval_recall@1/5/10", "text_retrieval_recall@1/5/10", "n"}
    with n the number of images (and "n_texts").
    """
    device = torch.device(device)
    ds = open_dataset(dataset_dir, transform_or_image_size)
    if ds.kind != "retrieval":
        raise ValueError(f"{dataset_dir}: a {ds.kind} set, not a retrieval set "
                         f"(dataset_type.txt must say 'retrieval')")
    size = ds.transform.image_size
    img_emb, img_idx, txt_emb, txt_key = [], [], [], []
    dim = 0  # embedding width, learnt from any encoder call (a rank may have no images)
    with eval_mode(model):
        bar = Progress("images", progress and rank == 0)
        for batch in lockstep(batched(iter_rank_slice(ds, rank, world_size), batch_size), world_size, device):
            if batch is None:  # keep FSDP's per-call collectives in step (common.py)
                dim = encode_images(model, torch.zeros(1, 3, size, size, device=device), image_mask_ratio,
                                    image_mask_ensemble).shape[1]
                model.encode_text(tokenizer([""]).to(device))
                continue
            images = torch.stack([b[1] for b in batch]).to(device)
            img_emb.append(encode_images(model, images, image_mask_ratio, image_mask_ensemble).float())
            dim = img_emb[-1].shape[1]
            img_idx.append(torch.tensor([b[0] for b in batch], device=device))
            captions = [(b[0] * _MAX_CAPTIONS + j, c) for b in batch for j, c in enumerate(b[2])]
            # A batch whose images have no caption still calls the text tower (lockstep).
            txt_emb.append(model.encode_text(tokenizer([c for _, c in captions] or [""]).to(device)).float()
                           [: len(captions)])
            txt_key.append(torch.tensor([k for k, _ in captions], dtype=torch.long, device=device))
            bar.update(len(batch) * world_size)
        bar.close()
    if not dim:
        raise ValueError(f"{dataset_dir}: no readable images")
    img_emb = _cat(img_emb, dim, device)
    txt_emb = _cat(txt_emb, dim, device)
    img_idx = gather_rows(_cat(img_idx, None, device), world_size)
    txt_key = gather_rows(_cat(txt_key, None, device), world_size)
    img_emb, txt_emb = gather_rows(img_emb, world_size), gather_rows(txt_emb, world_size)
    # Back to dataset order, so results do not depend on the world size.
    order = img_idx.argsort()
    img_idx, img_emb = img_idx[order], img_emb[order]
    order = txt_key.argsort()
    txt_key, txt_emb = txt_key[order], txt_emb[order]
    owner = torch.searchsorted(img_idx, txt_key // _MAX_CAPTIONS)
    result = {"dataset": ds.name, **retrieval_recalls(img_emb, txt_emb, owner),
              "n": int(img_emb.shape[0]), "n_texts": int(txt_emb.shape[0])}
    return result


def _cat(parts: list[torch.Tensor], dim: int | None, device) -> torch.Tensor:
    if parts:
        return torch.cat(parts)
    return torch.zeros((0, dim) if dim else (0,), dtype=torch.float32 if dim else torch.long, device=device)
