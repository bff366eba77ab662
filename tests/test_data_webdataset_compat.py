"""Our shards are webdataset shards, both ways, checked with the webdataset package itself:
shards written by `webdataset.TarWriter` train through flip_scale's loader, and the shards
flip_scale writes (img2dataset's layout) read back through `webdataset.WebDataset`."""
import io

import webdataset as wds
from PIL import Image

from flip_scale.config import DataConfig
from flip_scale.data.loader import build_train_loader
from flip_scale.data.shards import iter_tar_samples
from flip_scale.data.synthetic import write_synthetic_shards


def test_shards_written_by_webdataset_train_through_our_loader(tmp_path):
    captions = {}
    for s in range(2):
        with wds.TarWriter(str(tmp_path / f"{s:05d}.tar")) as sink:
            for i in range(6):
                idx = s * 6 + i
                buf = io.BytesIO()
                Image.new("RGB", (24, 20), (10 * i, 200, 30 * s)).save(buf, format="JPEG")
                captions[f"{idx:09d}"] = f"a green square number {idx}"
                sink.write({"__key__": f"{idx:09d}", "jpg": buf.getvalue(), "txt": captions[f"{idx:09d}"],
                            "json": {"similarity": 0.3}})
    samples = list(iter_tar_samples(str(tmp_path / "00001.tar")))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(6, 12)]
    assert samples[0]["txt"].decode() == captions["000000006"] and {"jpg", "txt", "json"} <= set(samples[0])
    cfg = DataConfig(train_shards=str(tmp_path), tokenizer="builtin", image_size=16, workers=0, resampled=False,
                     shuffle_buffer=4, shard_retry_delay_s=0.01, shards_per_chunk=2, epochs=1, drop_last=False)
    loader = build_train_loader(cfg, text_length=10, global_batch_size=4, seed=0, rank=0, world_size=1)
    seen = sorted(i for b in loader for i in b["index"].tolist())
    assert seen == list(range(12)) and not any(loader.counters().values())


def test_our_shards_read_with_webdataset(tmp_path):
    paths = write_synthetic_shards(str(tmp_path), 10, samples_per_shard=4, image_size=16)
    got = list(wds.WebDataset(paths, shardshuffle=False).decode("pil").to_tuple("__key__", "jpg", "txt"))
    assert [k for k, _, _ in got] == [f"{i:09d}" for i in range(10)]
    assert all(img.size == (16, 16) and isinstance(txt, str) and txt for _, img, txt in got)
