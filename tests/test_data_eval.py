"""Evaluation set readers and builders: CLIP_benchmark layout and ImageFolder."""

import pytest
import torch

from flip_scale.data import synthetic
from flip_scale.data.eval_datasets import open_eval_dataset, write_clip_benchmark_from_imagefolder
from flip_scale.data.imagenet_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES_7, \
    OPENAI_IMAGENET_TEMPLATES_80


def test_shipped_imagenet_metadata():
    # OpenAI's list repeats two names (e.g. "crane" the bird and the machine), as ImageNet does.
    assert len(IMAGENET_CLASSNAMES) == 1000 and len(set(IMAGENET_CLASSNAMES)) == 998
    assert len(OPENAI_IMAGENET_TEMPLATES_80) == 80 and len(OPENAI_IMAGENET_TEMPLATES_7) == 7
    assert all("{c}" in t for t in OPENAI_IMAGENET_TEMPLATES_80)


def test_synthetic_zeroshot_reads_back(tmp_path):
    synthetic.write_synthetic_zeroshot(str(tmp_path), 25, image_size=32, samples_per_shard=10)
    ds = open_eval_dataset(str(tmp_path), 24)
    assert ds.kind == "classification" and ds.classnames == synthetic.CLASSNAMES
    assert ds.templates == synthetic.TEMPLATES
    batches = list(ds.batches(10))
    assert [b[0].shape[0] for b in batches] == [10, 10, 5]
    assert batches[0][0].shape == (10, 3, 24, 24) and batches[0][1].dtype == torch.long
    expected = [synthetic.render_labeled(synthetic.DEFAULT_EVAL_SEED, i, 32)[1] for i in range(10)]
    assert batches[0][1].tolist() == expected


def test_synthetic_retrieval_reads_back(tmp_path):
    synthetic.write_synthetic_retrieval(str(tmp_path), 6, image_size=32)
    ds = open_eval_dataset(str(tmp_path), 24)
    assert ds.kind == "retrieval"
    images, captions = next(ds.batches(6))
    assert images.shape == (6, 3, 24, 24) and all(len(c) == 2 for c in captions)


def test_imagefolder_and_builder(tmp_path):
    src = tmp_path / "folder"
    for c, cls in enumerate(["red_circle", "blue_square"]):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            synthetic.render_sample(0, c * 10 + i, 20)[0].save(src / cls / f"{i}.png")
    (src / "blue_square" / "broken.jpg").write_bytes(b"not an image")
    folder = open_eval_dataset(str(src), 16)
    assert folder.classnames == ["blue square", "red circle"]
    labels = [y for _, y in folder]
    assert labels == [0, 0, 0, 1, 1, 1] and folder.skipped["bad_image"] == 1
    n = write_clip_benchmark_from_imagefolder(str(src), str(tmp_path / "wds"), templates="openai80",
                                              samples_per_shard=4)
    assert n == 7
    wds = open_eval_dataset(str(tmp_path / "wds"), 16)
    assert wds.classnames == folder.classnames and len(wds.templates) == 80
    assert [y for _, y in wds] == labels


def test_not_a_dataset(tmp_path):
    with pytest.raises(ValueError, match="neither"):
        open_eval_dataset(str(tmp_path), 16)


def test_prep_commands_write_readable_sets(tmp_path):
    from flip_scale.data.prep_cli import main_prep

    assert main_prep(["synthetic", "--kind", "zeroshot", "--samples", "12", "--image-size", "24",
                      "--output", str(tmp_path / "zs")]) == 0
    assert open_eval_dataset(str(tmp_path / "zs"), 16).kind == "classification"
    assert main_prep(["synthetic", "--kind", "train", "--samples", "12", "--samples-per-shard",
                      "5", "--image-size", "24", "--output", str(tmp_path / "tr")]) == 0
    assert sorted(p.name for p in (tmp_path / "tr").glob("*.tar")) == \
        ["00000.tar", "00001.tar", "00002.tar"]
    src = tmp_path / "folder" / "cls_a"
    src.mkdir(parents=True)
    synthetic.render_sample(0, 0, 20)[0].save(src / "0.jpg")
    assert main_prep(["evalset", "--imagefolder", str(tmp_path / "folder"), "--output",
                      str(tmp_path / "ev")]) == 0
    assert open_eval_dataset(str(tmp_path / "ev"), 16).classnames == ["cls a"]
