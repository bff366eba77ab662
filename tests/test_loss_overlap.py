"""The text features' all-gather overlapped with the image tower (issue 12, item 3): on 2 real
gloo processes the overlapped loss and gradients equal the plain ones, the gather is issued
before the image tower's first op and waited for only in the loss, and an unarmed forward
(evaluation) starts none."""
import json
import os

import pytest
import torch
import torch.multiprocessing as mp

from conftest import free_port

pytestmark = pytest.mark.slow


def _worker(rank, port, result):
    import torch.distributed as dist
    from torch.utils._python_dispatch import TorchDispatchMode

    from flip_scale.loss import TextGatherOverlap, clip_loss
    from flip_scale.models import create_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)

    class Order(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(f"{func.namespace}.{func.__name__.split('.')[0]}")
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = create_model("tiny", mask_ratio=0.5).train()
    g = torch.Generator().manual_seed(rank)
    images, tokens = torch.rand(8, 3, 32, 32, generator=g), torch.randint(1, 60, (8, 16), generator=g)
    noise = torch.rand(8, model.size.num_patches, generator=g, dtype=torch.float64)
    plain = clip_loss(*model(images, tokens, noise)[:3])
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    overlap = TextGatherOverlap(model.text)
    order = Order()
    with order:
        with overlap.armed():
            out = model(images, tokens, noise)
        forward_ops = len(order.ops)
        pending = overlap.take()
        # Nothing in forward waited for it: the functional collective's tensor is still unwaited.
        unwaited = type(pending).__name__ == "AsyncCollectiveTensor" and not pending.completed
        loss = clip_loss(*out[:3], gathered_text=pending)
    loss.backward()
    diff = max((p.grad - q).abs().max().item() for p, q in zip(model.parameters(), plain_grads))
    gather = order.ops.index("_c10d_functional.all_gather_into_tensor")
    conv = order.ops.index("aten.convolution")  # the image tower's patch embedding
    with torch.no_grad():  # evaluation: not armed, no gather started
        model.encode_text(tokens)
    res = {"plain": plain.item(), "overlap": loss.item(), "grad_diff": diff, "gather": gather, "conv": conv,
           "unwaited_after_forward": unwaited, "forward_ops": forward_ops, "pending_after_eval": overlap.take() is not None}
    with open(f"{result}.{rank}", "w") as f:
        json.dump(res, f)
    dist.destroy_process_group()


def test_overlapped_text_gather_gives_the_same_loss_and_gradients(tmp_path):
    result = tmp_path / "r"
    mp.start_processes(_worker, args=(free_port(), str(result)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        r = json.loads((tmp_path / f"r.{rank}").read_text())
        assert r["overlap"] == pytest.approx(r["plain"], rel=1e-6, abs=1e-6), r
        assert r["grad_diff"] < 1e-5, r
        # Issued after the text tower, before the image tower starts; waited for in the loss.
        assert r["gather"] < r["conv"] < r["forward_ops"] and r["unwaited_after_forward"], r
        assert not r["pending_after_eval"], r
