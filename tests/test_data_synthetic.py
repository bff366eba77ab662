"""Synthetic data: determinism in (seed, index), img2dataset shard layout, eval-set layout."""

import json
import os
import tarfile

import numpy as np

from flip_scale.data import synthetic


def test_render_is_a_function_of_seed_and_index():
    a_img, a_cap = synthetic.render_sample(3, 17, 48)
    b_img, b_cap = synthetic.render_sample(3, 17, 48)
    assert a_cap == b_cap and np.array_equal(np.asarray(a_img), np.asarray(b_img))
    c_img, _ = synthetic.render_sample(4, 17, 48)
    assert not np.array_equal(np.asarray(a_img), np.asarray(c_img))
    assert a_img.size == (48, 48) and a_img.mode == "RGB"


def test_captions_name_the_drawn_attributes():
    for i in range(50):
        _, cap = synthetic.render_sample(0, i, 32)
        assert any(c in cap for c in synthetic.COLORS)
        assert any(s in cap for s in synthetic.SHAPES)
        assert any(s in cap for s in synthetic.SIZES)
    assert synthetic.mirror_caption("a small red star at the top left") == \
        "a small red star at the top right"


def test_shards_have_img2dataset_layout(tmp_path):
    paths = synthetic.write_synthetic_shards(str(tmp_path), 10, 4, seed=1, image_size=32)
    assert [os.path.basename(p) for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
        assert names[:3] == ["000000000.jpg", "000000000.txt", "000000000.json"]
        assert len(names) == 12
        cap = tar.extractfile("000000001.txt").read().decode()
        meta = json.loads(tar.extractfile("000000001.json").read())
    assert cap == synthetic.render_sample(1, 1, 32)[1] and meta["key"] == "000000001"
    assert json.load(open(tmp_path / "00002_stats.json"))["successes"] == 2
    # start_index continues the stream: keys and content follow the global index
    more = synthetic.write_synthetic_shards(str(tmp_path / "b"), 2, 2, seed=1, image_size=32,
                                            start_index=10)
    with tarfile.open(more[0]) as tar:
        assert tar.getnames()[0] == "000000010.jpg"


def test_eval_sets_use_clip_benchmark_layout(tmp_path):
    zs = synthetic.write_synthetic_zeroshot(str(tmp_path / "zs"), 30, image_size=32,
                                            samples_per_shard=16)
    assert open(os.path.join(zs, "test", "nshards.txt")).read().strip() == "2"
    assert open(os.path.join(zs, "classnames.txt")).read().split("\n")[0] == synthetic.CLASSNAMES[0]
    assert "{c}" in open(os.path.join(zs, "zeroshot_classification_templates.txt")).read()
    with tarfile.open(os.path.join(zs, "test", "0.tar")) as tar:
        label = int(tar.extractfile("s0000000.cls").read())
    assert 0 <= label < len(synthetic.CLASSNAMES)
    rt = synthetic.write_synthetic_retrieval(str(tmp_path / "rt"), 5, image_size=32)
    assert open(os.path.join(rt, "dataset_type.txt")).read().strip() == "retrieval"
    with tarfile.open(os.path.join(rt, "test", "0.tar")) as tar:
        caps = tar.extractfile("s0000000.txt").read().decode().split("\n")
    assert len(caps) == 2 and all(caps)
