"""Evaluation at scale (issue 13 item 7): each rank reads only its slice of the eval set's
shards, and the metrics are exactly the 1-process ones (2 real gloo processes vs 1)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, free_port
from flip_scale.data.synthetic import write_synthetic_retrieval, write_synthetic_zeroshot
from flip_scale.data.eval_datasets import open_eval_dataset
from flip_scale.eval.common import SHARD_INDEX_BITS, _raw_rank_slice, iter_rank_slice, open_dataset

WORKER = ROOT / "tests" / "eval_sharded_worker.py"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalsets")
    # 97 images in shards of 13: 8 shards (the last one short), so ranks get unequal counts.
    zs = write_synthetic_zeroshot(str(root / "zs"), 97, image_size=32, seed=3, samples_per_shard=13)
    ret = write_synthetic_retrieval(str(root / "ret"), 61, image_size=32, seed=3, samples_per_shard=9)
    return zs, ret


def _run(world, zs, ret, batch=8):
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if world == 1:
            env = {k: v for k, v in env.items() if k not in ("RANK", "WORLD_SIZE")}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), zs, ret, str(batch)], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]


def test_each_rank_reads_only_its_shards_and_metrics_equal_one_process(sets):
    zs, ret = sets
    (one,) = _run(1, zs, ret)
    two = _run(2, zs, ret)
    for r, res in enumerate(two):
        assert res["rank"] == r
        for name, n in (("zs", 8), ("ret", 7)):
            mine = sorted(p for p in res["read"] if p.startswith(name + "/"))
            assert mine == sorted(f"{name}/{k}.tar" for k in range(r, n, 2)), mine  # its shards only
        for key, value in one["zeroshot"].items():
            assert res["zeroshot"][key] == pytest.approx(value, abs=1e-12) if key != "dataset" else True, key
        for key, value in one["retrieval"].items():
            assert res["retrieval"][key] == pytest.approx(value, abs=1e-12) if key != "dataset" else True, key
    assert one["zeroshot"]["n"] == 97 and one["retrieval"]["n"] == 61
    assert sorted(one["read"]) == sorted([f"zs/{k}.tar" for k in range(8)] + [f"ret/{k}.tar" for k in range(7)])


def test_rank_slices_partition_the_set_in_dataset_order(sets, tmp_path):
    zs, _ = sets
    ds = open_dataset(zs, 32)
    whole = [i for i, _, _ in iter_rank_slice(ds, 0, 1)]
    assert whole == sorted(whole) and len(whole) == 97
    for world in (2, 3, 8, 9):  # 9 > 8 shards: falls back to every rank streaming, sample j % 9
        parts = [[i for i, _, _ in iter_rank_slice(open_dataset(zs, 32), r, world)] for r in range(world)]
        assert sorted(sum(parts, [])) == whole, world
        if world <= 8:
            for r, part in enumerate(parts):
                assert {i >> SHARD_INDEX_BITS for i in part} <= set(range(r, 8, world))
    # ImageFolder: files dealt i % world, dense indices.
    for c in ("a", "b"):
        os.makedirs(tmp_path / c)
        for k in range(3):
            (tmp_path / c / f"{k}.png").write_bytes(b"")  # only listed and read here, not decoded
    folder = [[i for i, _, _ in _raw(str(tmp_path), r, 2)] for r in range(2)]
    assert folder == [[0, 2, 4], [1, 3, 5]]


def _raw(path, rank, world):
    return _raw_rank_slice(open_eval_dataset(path, 32), rank, world)
