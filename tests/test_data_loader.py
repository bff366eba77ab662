"""Training loader on the synthetic source: batch layout, world-size invariance, resume."""


import pytest
import torch

from flip_scale.config import DataConfig
from flip_scale.data.loader import build_train_loader

from conftest import take


def _cfg(**kw):
    base = dict(train_shards="synthetic", tokenizer="builtin", image_size=24, workers=0, resampled=False)
    base.update(kw)
    return DataConfig(**base)


def test_batch_layout():
    loader = build_train_loader(_cfg(), text_length=12, global_batch_size=6, seed=0, rank=0,
                                world_size=1)
    (b,) = take(loader, 1)
    assert b["images"].shape == (6, 3, 24, 24) and b["images"].dtype == torch.uint8  # normalised on the device
    assert b["tokens"].shape == (6, 12) and b["tokens"].dtype == torch.int64
    assert b["index"].tolist() == list(range(6))
    # The authors' tokens by default (data.text_cls_token false): word pieces from position 0.
    assert not (b["tokens"] == loader.tokenizer.cls_id).any() and (b["tokens"][:, 0] > 4).all()
    with_cls = build_train_loader(_cfg(text_cls_token=True), text_length=12, global_batch_size=6,
                                  seed=0, rank=0, world_size=1)
    (c,) = take(with_cls, 1)
    assert (c["tokens"][:, 0] == with_cls.tokenizer.cls_id).all()
    assert torch.equal(c["tokens"][:, 1:3], b["tokens"][:, :2])  # same captions, shifted by [CLS]


def test_global_batch_is_independent_of_world_size_and_workers():
    single = take(build_train_loader(_cfg(), text_length=12, global_batch_size=8, seed=5,
                                      rank=0, world_size=1), 2)
    parts = [take(build_train_loader(_cfg(workers=2), text_length=12, global_batch_size=8,
                                      seed=5, rank=r, world_size=2), 2) for r in range(2)]
    for step in range(2):
        for key in ("images", "tokens", "index"):
            joined = torch.cat([parts[0][step][key], parts[1][step][key]])
            assert torch.equal(joined, single[step][key]), key
    assert single[1]["index"].tolist() == list(range(8, 16))


def test_resume_gives_the_same_batches():
    ref = take(build_train_loader(_cfg(), text_length=12, global_batch_size=4, seed=1, rank=0,
                                   world_size=1), 5)
    loader = build_train_loader(_cfg(), text_length=12, global_batch_size=4, seed=1, rank=0,
                                world_size=1)
    take(loader, 3)
    sd = loader.state_dict()
    fresh = build_train_loader(_cfg(), text_length=12, global_batch_size=4, seed=1, rank=0,
                               world_size=1)
    fresh.load_state_dict(sd)
    rest = take(fresh, 2)
    assert len(ref) == 5 and len(rest) == 2  # a resumed loader yielding nothing must fail
    for a, b in zip(ref[3:], rest):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["tokens"], b["tokens"])


def test_bad_batch_split_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        build_train_loader(_cfg(), text_length=12, global_batch_size=5, seed=0, rank=0,
                           world_size=2)


def test_missing_shards_raise_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="matches no shards"):
        build_train_loader(_cfg(train_shards=str(tmp_path / "x-{000..003}.tar")), text_length=8,
                           global_batch_size=2, seed=0, rank=0, world_size=1)
