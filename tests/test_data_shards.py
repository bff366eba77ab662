"""Training loader on real webdataset tar files: epochs, resampling, bad data, remote shards, resume."""

import functools
import http.server
import io
import json
import logging
import os
import shutil
import tarfile
import threading

import pytest
import torch

from flip_scale.config import DataConfig
from flip_scale.data.loader import build_train_loader
from flip_scale.data.shards import expand_shards
from flip_scale.data.synthetic import write_synthetic_shards

from conftest import take


def _cfg(shards, **kw):
    base = dict(train_shards=shards, tokenizer="builtin", image_size=16, workers=0,
                shuffle_buffer=8, shard_retry_delay_s=0.01, shards_per_chunk=2, resampled=False)
    base.update(kw)
    return DataConfig(**base)


def _loader(cfg, batch=4, rank=0, world=1, seed=0):
    return build_train_loader(cfg, text_length=10, global_batch_size=batch, seed=seed, rank=rank,
                              world_size=world)


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    # 7 shards of uneven size (60 samples): the last shard is short, as in real downloads.
    write_synthetic_shards(str(d), 60, 9, seed=0, image_size=20)
    return str(d)


def test_spec_forms(shard_dir):
    all_tars = sorted(os.path.join(shard_dir, f) for f in os.listdir(shard_dir)
                      if f.endswith(".tar"))
    assert expand_shards(shard_dir) == all_tars
    assert expand_shards(os.path.join(shard_dir, "{00000..00006}.tar")) == all_tars
    assert expand_shards(",".join(all_tars[:2])) == all_tars[:2]
    assert expand_shards("pipe:cat x/{0..2}.tar") == [f"pipe:cat x/{i}.tar" for i in range(3)]
    assert expand_shards("http://h/{a,b}.tar,http://h/c.tar") == \
        ["http://h/a.tar", "http://h/b.tar", "http://h/c.tar"]


@pytest.mark.parametrize("epochs", [1, 2])
def test_two_ranks_two_workers_exact_epochs_see_each_sample_once_per_epoch(shard_dir, epochs):
    seen = []
    for rank in range(2):
        cfg = _cfg(shard_dir, workers=2, epochs=epochs, drop_last=False)
        loader = _loader(cfg, batch=8, rank=rank, world=2)
        for b in loader:
            assert b["images"].shape[1:] == (3, 16, 16) and len(b["index"]) <= 4
            seen += b["index"].tolist()
        assert sum(loader.counters().values()) == 0
    assert sorted(seen) == sorted(list(range(60)) * epochs)


def test_resampled_is_seeded_and_endless(shard_dir):
    def run(seed):
        cfg = _cfg(shard_dir, resampled=True, workers=2)
        # 30 batches of 4 = 120 samples, twice the dataset: the stream does not end.
        return torch.cat([b["index"] for b in take(_loader(cfg, seed=seed), 30)])

    a, b, c = run(1), run(1), run(2)
    assert len(a) == 120 and torch.equal(a, b) and not torch.equal(a, c)
    assert len(set(a.tolist())) < 120  # drawn with replacement: repeats occur


@pytest.mark.parametrize("resampled", [False, True])
def test_shard_resume_continues_with_the_same_batches(shard_dir, resampled):
    cfg = _cfg(shard_dir, workers=2, shuffle_buffer=5, resampled=resampled)
    ref = take(_loader(cfg), 9)
    first = _loader(cfg)
    take(first, 5)
    sd = first.state_dict()
    resumed = _loader(cfg)
    resumed.load_state_dict(sd)
    rest = take(resumed, 4)
    assert len(ref) == 9 and len(rest) == 4  # a resumed loader yielding nothing must fail
    for a, b in zip(ref[5:], rest):
        assert torch.equal(a["index"], b["index"])
        assert torch.equal(a["images"], b["images"])
    # Replay is reported per stream and bounded by one chunk (2 shards here) of raw tar bytes.
    biggest = max(os.path.getsize(os.path.join(shard_dir, f)) for f in os.listdir(shard_dir))
    assert set(resumed.replayed) == {0, 1}
    for stream, (nbytes, nsamples) in resumed.replayed.items():
        skip = sd["positions"][str(stream)][2]
        assert nsamples >= skip and (nbytes > 0) == (skip > 0)
        assert nbytes <= 2 * biggest and nsamples <= 2 * 9
    assert first.replayed == {0: (0, 0), 1: (0, 0)}  # a fresh start replays nothing


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_corrupt_members_are_skipped_and_counted(tmp_path):
    good = write_synthetic_shards(str(tmp_path / "good"), 6, 6, seed=0, image_size=20)[0]
    members = []
    with tarfile.open(good) as tar:
        for m in tar.getmembers():
            members.append((m.name, tar.extractfile(m).read()))
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as tar:
        for name, data in members:
            if name == "000000001.jpg":
                data = b"this is not an image"
            if name == "000000002.txt":
                data = b"   "
            if name == "000000003.jpg":
                data = data[: len(data) // 3]  # truncated JPEG body
            if name == "000000005.txt":
                data = "\u200b\ufeff\x01".encode()  # not blank, yet no token: an empty text
            _add(tar, name, data)
        _add(tar, "000000009.jpg", members[0][1])  # no caption
    # A second shard whose last member is cut off mid-data (a download that died).
    trunc = tmp_path / "trunc.tar"
    with tarfile.open(trunc, "w") as tar:
        for name, data in members:
            _add(tar, name.replace("00000000", "10000000"), data)
    with tarfile.open(trunc) as tar:
        last = tar.getmembers()[-1]
    raw = trunc.read_bytes()
    trunc.write_bytes(raw[: last.offset_data + last.size // 2])  # cut inside the last member
    cfg = _cfg(f"{bad},{trunc}", epochs=1, drop_last=False, shuffle_buffer=1)
    loader = _loader(cfg, batch=2)
    seen = [i for b in loader for i in b["index"].tolist()]
    counts = loader.counters()
    assert counts["bad_image"] == 2 and counts["empty_caption"] == 2
    assert counts["incomplete_sample"] == 1 and counts["corrupt_member"] == 1
    assert {0, 4} <= set(seen) and not {1, 2, 3, 5} & set(seen)
    assert len([i for i in seen if i >= 100000000]) == 5  # the cut-off last sample is lost


@pytest.fixture()
def http_base(shard_dir):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=shard_dir)
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_and_pipe_shards_with_a_dead_url(shard_dir, http_base):
    spec = f"{http_base}/{{00000..00006}}.tar,{http_base}/missing.tar"
    loader = _loader(_cfg(spec, workers=2, epochs=1, drop_last=False), batch=4)
    seen = [i for b in loader for i in b["index"].tolist()]
    assert sorted(seen) == list(range(60))
    counts = loader.counters()
    assert counts["shard_error"] == 1 and counts["shard_retry"] == 2  # 2 retries, then skipped
    pipe = f"pipe:cat {shard_dir}/{{00000..00001}}.tar"
    loader = _loader(_cfg(pipe, epochs=1, drop_last=False), batch=4)
    assert sorted(i for b in loader for i in b["index"].tolist()) == list(range(18))


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_with_another_layout_restarts_the_epoch(shard_dir, resampled):
    loader = _loader(_cfg(shard_dir, workers=2, resampled=resampled))
    take(loader, 20)  # past the first epoch (60 samples) for at least one stream
    sd = loader.state_dict()
    other = _loader(_cfg(shard_dir, workers=1, resampled=resampled))
    with pytest.warns(UserWarning, match="restarting shard streams"):
        other.load_state_dict(sd)
    assert len(take(other, 2)) == 2
    assert other.counters() == loader.counters()


def _rank0_expansion_worker(rank, world, init_file, spec, out_dir):
    import json

    import torch.distributed as dist

    import flip_scale.data.loader as L

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    if rank != 0:  # only rank 0 may touch the filesystem's shard list
        def forbidden(*a, **k):
            raise AssertionError(f"rank {rank} expanded or probed the shard pattern")
        L.expand_shards = L.probe_shards = forbidden
    result = {}
    for name, s in (("good", spec), ("bad", spec + "/nothing-{0..3}.tar")):
        try:
            loader = _loader(_cfg(s), batch=4, rank=rank, world=world)
            result[name] = loader.shards
        except ValueError as e:
            result[name] = f"ValueError: {e}"
    with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


def test_shard_pattern_is_expanded_on_rank0_and_broadcast(shard_dir, tmp_path):
    """Two real gloo ranks: rank 1 never lists or probes the shards (it would fail if it did),
    yet gets rank 0's list; a pattern matching nothing fails on every rank with rank 0's line."""
    import json

    import torch.multiprocessing as mp

    mp.spawn(_rank0_expansion_worker, args=(2, str(tmp_path / "init"), shard_dir, str(tmp_path)),
             nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1))
    assert r0["good"] == r1["good"] == expand_shards(shard_dir)
    assert r0["bad"] == r1["bad"] and r0["bad"].startswith("ValueError: ") and "matches no shards" in r0["bad"]


def test_shuffle_buffer_refills_incrementally():
    """A stream starting a chunk reads a fifth of the buffer before its first sample, not the
    whole buffer (the refill stall of issue 13 item 5), and still emits each input once."""
    import numpy as np

    from flip_scale.data.loader import _shuffle

    read = []

    def source(n):
        for i in range(n):
            read.append(i)
            yield i

    out = _shuffle(source(5000), 1000, np.random.default_rng(0))
    next(out)
    assert len(read) == 200
    rest = list(out)
    assert len(rest) == 4999
    assert sorted(rest) != rest  # shuffled
    again = list(_shuffle(iter(range(5000)), 1000, np.random.default_rng(0)))
    assert sorted(again) == list(range(5000))
    assert again == list(_shuffle(iter(range(5000)), 1000, np.random.default_rng(0)))  # deterministic


def _manifest(folder, entries):
    """The shard_list part of the manifest.json `prep download` writes (download.summarize_shards)."""
    path = folder / "manifest.json"
    path.write_text(json.dumps({"shards": len(entries), "samples": sum(n for _, n in entries),
                                "shard_list": [{"shard": s, "samples": n, "count": n, "bytes": 1}
                                               for s, n in entries]}))
    return path


def test_manifest_lists_the_shards_relative_to_its_folder(tmp_path, shard_dir):
    folder = tmp_path / "moved"
    shutil.copytree(shard_dir, folder)  # a manifest keeps working when its folder moves
    (folder / "00099.tar").write_bytes(b"a tar the download did not list")
    path = _manifest(folder, [("00000.tar", 9), ("00001.tar", 9), ("00002.tar", 0), ("00003.tar", 9)])
    assert expand_shards(str(path)) == [str(folder / f"0000{k}.tar") for k in (0, 1, 3)]  # empty shard left out
    os.remove(folder / "00001.tar")
    with pytest.raises(ValueError, match=r"manifest .*manifest.json lists 1 shard\(s\) that do not exist "
                                         r"\(first: .*00001.tar\)"):
        expand_shards(str(path))
    with pytest.raises(ValueError, match=r"manifest .*nope.json does not exist"):
        expand_shards(str(folder / "nope.json"))
    (folder / "other.json").write_text('{"samples": 3}')
    with pytest.raises(ValueError, match="is not a manifest written by `flip-scale prep download`"):
        expand_shards(str(folder / "other.json"))


def test_a_pattern_missing_over_one_percent_fails_below_it_warns_once(tmp_path, caplog):
    for k in range(200):
        if k != 7:
            (tmp_path / f"{k:06d}.tar").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="flip_scale"):
        got = expand_shards(str(tmp_path / "{000000..000199}.tar"))
    assert len(got) == 199
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith("1 of 200 shards of") and "000007.tar" in warned[0]
    # The LAION-2B mistake: a 6-digit pattern over 5-digit names misses nearly all of them.
    with pytest.raises(ValueError, match=r"^150 of 152 shards of .* do not exist \(more than 1%; first: "
                                         r"0000000.tar, 0000001.tar, 0000002.tar\)"):
        expand_shards(str(tmp_path / "{0000000..0000149}.tar") + "," + str(tmp_path / "000000.tar")
                      + "," + str(tmp_path / "000001.tar"))


def test_training_refuses_a_pattern_with_many_missing_shards_in_one_line(tmp_path, shard_dir):
    import subprocess

    from conftest import ROOT, TINY, cli

    r = subprocess.run(cli("train", TINY, f"data.train_shards={shard_dir}/{{00000..00009}}.tar",
                           f"train.out_dir={tmp_path / 'run'}"),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "data.train_shards" in lines[0] and "3 of 10 shards of" in lines[0] and "00007.tar" in lines[0]
