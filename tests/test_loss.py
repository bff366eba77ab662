"""The contrastive loss: open_clip cross-check, and 2 real gloo processes vs one process."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from flip_scale.loss import clip_loss

from conftest import free_port

GLOBAL_B, DIM, WORLD = 12, 16, 2


def features(seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(GLOBAL_B, DIM, generator=g), dim=-1)
    txt = F.normalize(torch.randn(GLOBAL_B, DIM, generator=g), dim=-1)
    return img, txt, torch.tensor(14.3)


def test_matches_open_clip_clip_loss():
    open_clip_loss = pytest.importorskip("open_clip.loss")
    img, txt, scale = features()
    ours = clip_loss(img, txt, scale)
    theirs = open_clip_loss.ClipLoss()(img, txt, scale)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_perfect_alignment_gives_low_loss_and_random_gives_about_log_b():
    img, _, _ = features()
    assert clip_loss(img, img, torch.tensor(100.0)).item() < 0.01
    a, b, _ = features(1)
    assert clip_loss(a, b, torch.tensor(1.0)).item() == pytest.approx(torch.log(torch.tensor(12.0)).item(), abs=0.3)


def test_bf16_inputs_are_computed_in_fp32():
    img, txt, scale = features()
    loss = clip_loss(img.bfloat16(), txt.bfloat16(), scale)
    assert loss.dtype == torch.float32


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    img, txt, scale = features()
    local = GLOBAL_B // WORLD
    sl = slice(rank * local, (rank + 1) * local)
    li = img[sl].clone().requires_grad_()
    lt = txt[sl].clone().requires_grad_()
    ls = scale.clone().requires_grad_()
    loss = clip_loss(li, lt, ls)
    loss.backward()
    # What DDP does with parameter gradients: average over ranks.
    gs = ls.grad.clone()
    dist.all_reduce(gs)
    lossavg = loss.detach().clone()
    dist.all_reduce(lossavg)
    torch.save({"loss": lossavg / WORLD, "gi": li.grad, "gt": lt.grad, "gs": gs / WORLD}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process_over_the_global_batch(tmp_path):
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    img, txt, scale = features()
    img.requires_grad_(), txt.requires_grad_(), scale.requires_grad_()
    loss = clip_loss(img, txt, scale)
    loss.backward()
    local = GLOBAL_B // WORLD
    for rank in range(WORLD):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
        sl = slice(rank * local, (rank + 1) * local)
        # Rank r's feature grads come from every rank's loss (gather with grad): summed over ranks,
        # they are WORLD x the gradient of the global-batch mean; averaging over ranks removes that.
        assert torch.allclose(r["gi"] / WORLD, img.grad[sl], atol=1e-7)
        assert torch.allclose(r["gt"] / WORLD, txt.grad[sl], atol=1e-7)
        assert r["gs"].item() == pytest.approx(scale.grad.item(), rel=1e-5)
