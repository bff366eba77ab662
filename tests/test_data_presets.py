"""`prep download --preset`: each open set's real column names and layout, served from 127.0.0.1;
missing filter columns, failed shards and unsupported outputs as one-line errors; training on the
manifest the download wrote."""

import io
import json
import os
import re
import subprocess
import tarfile

import numpy as np
import pytest

pytest.importorskip("img2dataset")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from PIL import Image  # noqa: E402

from conftest import ROOT, TINY, cli  # noqa: E402
from test_data_download import server  # noqa: E402,F401 - the 127.0.0.1 image server fixture

from flip_scale.data.download import (DownloadConfig, download, filter_metadata,  # noqa: E402
                                      resolve_columns, shard_name_digits)
from flip_scale.data.shards import expand_shards  # noqa: E402
from flip_scale.data.synthetic import write_synthetic_parquet  # noqa: E402

SIZE = 64
FACE = [0.25, 0.25, 0.75, 0.75]  # DataComp's face_bboxes: [x0, y0, x1, y1] relative to the image


def _checkerboard(path, seed):
    """High-frequency grey stripes: a blur shows as a large change, JPEG re-encoding as a small
    one (grey, so JPEG's chroma subsampling has nothing to smear)."""
    rng = np.random.default_rng(seed)
    tile = (np.indices((SIZE, SIZE)).sum(0) // 4 % 2).astype(np.uint8)
    lo, hi = int(rng.integers(0, 60)), int(rng.integers(190, 256))
    colours = np.array([[lo] * 3, [hi] * 3], dtype=np.uint8)
    Image.fromarray(colours[tile]).save(path, format="PNG")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def _datacomp_folder(root, image_dir, base):
    """DataComp's layout (xlarge/0/*.parquet in nested folders) and columns; 12 rows, 4 below
    0.3 on the B/32 score, 2 of those above it on the L/14 score."""
    originals, parts = {}, [[], []]
    for k in range(12):
        name = f"{k:04d}.png"
        originals[k] = _checkerboard(os.path.join(image_dir, name), k)
        parts[k % 2].append({
            "uid": f"{k:032x}", "url": f"{base}/img/{name}", "text": f"a checkerboard number {k}",
            "original_width": SIZE, "original_height": SIZE,
            "clip_b32_similarity_score": 0.2 if k in (1, 4, 7, 10) else 0.33,
            "clip_l14_similarity_score": 0.31 if k in (1, 4) else 0.25 if k in (7, 10) else 0.3,
            "face_bboxes": [FACE] if k % 3 == 0 else [],
            "sha256": "0" * 64})
    for i, rows in enumerate(parts):
        d = os.path.join(root, "xlarge", str(i))
        os.makedirs(d)
        pq.write_table(pa.Table.from_pylist(rows), os.path.join(d, f"{i:08d}.parquet"))
    return originals


def _samples(out):
    got = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                got.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return got


def test_datacomp_preset_nested_folder_filters_saves_uid_and_blurs_faces(tmp_path, server):  # noqa: F811
    base, image_dir, _ = server
    originals = _datacomp_folder(str(tmp_path / "datacomp"), image_dir, base)
    out = tmp_path / "shards"
    r = subprocess.run(cli("prep", "download", "--preset", "datacomp", "--url-list", tmp_path / "datacomp",
                           "--output", out, "--min-similarity", 0.3, "--image-size", SIZE, "--resize-mode", "no",
                           "--processes", 1, "--threads", 4, "--samples-per-shard", 10, "--timeout", 5),
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    said = next(line for line in r.stdout.splitlines() if line.startswith("preset datacomp"))
    assert "url_col=url caption_col=text" in said and "similarity_col=clip_b32_similarity_score" in said
    assert "saving uid" in said and "blur faces from face_bboxes" in said
    m = json.loads((out / "manifest.json").read_text())
    assert m["filter"]["rows_in"] == 12 and m["filter"]["dropped_similarity"] == 4
    assert m["attempted"] == m["filter"]["rows_kept"] == 8 and m["samples"] == 8
    samples = _samples(out)
    assert len(samples) == 8
    blurred = plain = 0
    for s in samples.values():
        meta = json.loads(s["json"])
        k = int(meta["uid"], 16)  # uid saved beside each sample, as DataComp's downloader does
        assert k not in (1, 4, 7, 10) and s["txt"].decode() == f"a checkerboard number {k}"
        img = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"), dtype=np.float32)
        diff = np.abs(img - originals[k]).mean(axis=2)
        inside, corner = diff[24:40, 24:40].mean(), diff[:8, :8].mean()
        assert corner < 12, (k, corner)  # outside the box: only JPEG's re-encoding
        if k % 3 == 0:
            assert inside > 40, (k, inside)  # the face box is blurred to its mean colour
            blurred += 1
        else:
            assert inside < 12, (k, inside)
            plain += 1
    assert blurred == 4 and plain == 4


def test_explicit_flags_override_the_preset(tmp_path):
    originals_dir = tmp_path / "img"
    originals_dir.mkdir()
    _datacomp_folder(str(tmp_path / "dc"), str(originals_dir), "http://127.0.0.1:9")
    files = sorted(str(p) for p in (tmp_path / "dc").rglob("*.parquet"))
    cfg, said = resolve_columns(DownloadConfig(url_list="", output="", preset="datacomp",
                                               similarity_col="clip_l14_similarity_score", bbox_col="",
                                               min_similarity=0.3))
    assert cfg.similarity_col == "clip_l14_similarity_score" and cfg.bbox_col is None
    assert "similarity_col=clip_l14_similarity_score" not in said and "url_col=url" in said
    kept, stats = filter_metadata(cfg, str(tmp_path / "meta"), files)
    assert stats["dropped_similarity"] == 2 and sum(kept) == 10  # rows 7 and 10: L/14 score 0.25


def test_relaion2b_preset_file_url_output_and_training_on_its_manifest(tmp_path, server):  # noqa: F811
    base, image_dir, _ = server
    meta = tmp_path / "relaion" / "part-00000.parquet"
    write_synthetic_parquet(str(meta), image_dir, 24, seed=1, base_url=f"{base}/img", image_size=40)
    t = pq.read_table(meta)
    n = t.num_rows
    # Re-LAION's lowercase columns; quality columns where present.
    t = pa.table({"url": t["URL"], "caption": t["TEXT"], "width": t["WIDTH"], "height": t["HEIGHT"],
                  "similarity": [0.1 if k == 5 else 0.3 for k in range(n)],
                  "punsafe": [0.9 if k in (6, 7) else 0.01 for k in range(n)],
                  "pwatermark": [0.2] * n})
    pq.write_table(t, meta)
    out = tmp_path / "shards"
    m = download(DownloadConfig(url_list=str(meta.parent), output=f"file://{out}", preset="relaion2b",
                                min_similarity=0.28, max_punsafe=0.5, image_size=32, processes=1, threads=4,
                                samples_per_shard=7, timeout_s=5), quiet=True)
    assert not (ROOT / "file:").exists() and m["output"] == str(out)
    assert m["filter"]["dropped_similarity"] == 1 and m["filter"]["dropped_punsafe"] == 2
    assert m["attempted"] == 21 and m["samples"] == 21 and m["shards"] == 3
    s = next(iter(_samples(out).values()))
    assert {"similarity", "punsafe", "pwatermark"} <= set(json.loads(s["json"]))
    # Train on exactly the manifest's shards: a decoy tar beside them is never read, and the
    # relative names resolve from any working directory.
    (out / "99999.tar").write_bytes(b"not a tar: reading it would count a shard_error")
    listed = sorted(str(out / e["shard"]) for e in m["shard_list"])
    assert expand_shards(str(out / "manifest.json")) == listed
    run = tmp_path / "run"
    r = subprocess.run(cli("train", TINY, f"data.train_shards={out / 'manifest.json'}", f"train.out_dir={run}",
                           "train.samples=96", "train.warmup_samples=32", "train.global_batch_size=16", "checkpoint.every_steps=0",
                           "train.log_every_steps=2", "data.shuffle_buffer=8"),
                       capture_output=True, text=True, cwd=tmp_path, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["samples_seen"] == 96 and not summary.get("skipped", {}).get("shard_error"), summary


def test_laion400m_preset_failed_shard_exits_non_zero(tmp_path, server):  # noqa: F811
    base, image_dir, _ = server
    meta = tmp_path / "laion400m.parquet"
    write_synthetic_parquet(str(meta), image_dir, 14, seed=2, base_url=f"{base}/img", image_size=40,
                            extra_rows=[{"URL": f"{base}/img/000001.jpg", "TEXT": "x", "NSFW": "NSFW"}])
    out = tmp_path / "shards"
    (out / "00001.tar").mkdir(parents=True)  # shard 1 cannot be written: img2dataset gives up on it
    r = subprocess.run(cli("prep", "download", "--preset", "laion400m", "--url-list", meta, "--output", out,
                           "--drop-nsfw", "--image-size", 32, "--processes", 1, "--threads", 4,
                           "--samples-per-shard", 10, "--timeout", 5),
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("flip-scale prep download: error: 1 of 2 shards failed (4 rows;"), last
    assert f"failed_shards in {out / 'manifest.json'}" in last
    m = json.loads((out / "manifest.json").read_text())
    assert m["failed_shards"] == ["00001.tar"] and m["attempted"] == m["filter"]["rows_kept"] == 14
    assert m["samples"] == 10 and "failed shards 1 (4 rows)" in r.stdout
    with tarfile.open(out / "00000.tar") as tar:
        first_json = next(m for m in tar.getmembers() if m.name.endswith(".json"))
        assert "SAMPLE_ID" in json.loads(tar.extractfile(first_json).read())


def _parquet(path, **cols):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return str(path)


@pytest.mark.parametrize("preset,flags,cols,message", [
    ("datacomp", {"drop_nsfw": True}, ["uid", "url", "text", "clip_b32_similarity_score", "face_bboxes"],
     "--drop-nsfw: the datacomp preset has no column for it (columns: uid, url, text, "
     "clip_b32_similarity_score, face_bboxes); name one with --nsfw-col or drop --drop-nsfw"),
    ("relaion2b", {"max_punsafe": 0.5}, ["url", "caption", "similarity"],
     "--max-punsafe needs column 'punsafe', which {file} lacks (columns: url, caption, similarity)"),
    (None, {"min_similarity": 0.3}, ["URL", "TEXT", "NSFW"],
     "--min-similarity needs column 'similarity', which {file} lacks (columns: URL, TEXT, NSFW)"),
    ("datacomp", {}, ["uid", "url", "text"],
     "--bbox-col needs column 'face_bboxes', which {file} lacks (columns: uid, url, text)"),
])
def test_a_filter_whose_column_is_missing_fails_before_download(tmp_path, preset, flags, cols, message):
    values = {"uid": ["a"], "url": ["http://127.0.0.1:9/x.jpg"], "URL": ["http://127.0.0.1:9/x.jpg"],
              "text": ["t"], "TEXT": ["t"], "caption": ["t"], "NSFW": ["UNLIKELY"], "similarity": [0.3],
              "clip_b32_similarity_score": [0.3], "face_bboxes": [[]]}
    f = _parquet(tmp_path / "in" / "a" / "p.parquet", **{c: values[c] for c in cols})
    out = tmp_path / "out"
    with pytest.raises(ValueError) as e:
        download(DownloadConfig(url_list=str(tmp_path / "in"), output=str(out), preset=preset, **flags))
    assert str(e.value) == message.format(file=f)
    assert not out.exists()


def test_cli_one_line_errors(tmp_path):
    f = _parquet(tmp_path / "in.parquet", url=["http://127.0.0.1:9/x.jpg"], caption=["t"], similarity=[0.1])
    in_process = [
        ({"preset": "relaion2b", "distributor": "pyspark", "spark_master": "http://x:7077"},
         "--spark-master 'http://x:7077': not a Spark master URL"),
        ({"url_col": "url", "caption_col": "caption", "drop_nsfw": True}, "--drop-nsfw needs column 'NSFW'"),
        ({"preset": "relaion2b", "distributor": "ray"}, "--distributor 'ray': use multiprocessing"),
    ]
    for flags, message in in_process:
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            download(DownloadConfig(url_list=f, output=str(tmp_path / "out"), **flags))
    cli_cases = [  # the command line prints such errors as one line and exits 2
        (["--preset", "relaion2b", "--min-similarity", "0.3"],
         "nothing to download: the filters kept 0 of 1 rows in --url-list"),
        (["--preset", "relaion2b", "--output", "s3://bucket/shards"],
         "--output 's3://bucket/shards': only local or shared-filesystem paths are supported"),
    ]
    for flags, message in cli_cases:
        args = ["prep", "download", "--url-list", f, "--output", tmp_path / "out", *flags]
        r = subprocess.run(cli(*args), capture_output=True, text=True, cwd=ROOT, timeout=120)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith("flip-scale prep download: error: " + message), lines[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_shard_names_have_the_digits_the_whole_input_needs():
    # LAION-2B at 10,000 a shard: 232,200 shards -> 000000..232199, the recipes' pattern.
    assert shard_name_digits(232_200) == 6 and shard_name_digits(100_000) == 5
    assert shard_name_digits(100_001) == 6 and shard_name_digits(1) == 5


def test_spark_master_from_flag_then_environment_then_local_mode(monkeypatch):
    from flip_scale.data.spark import resolve_master

    monkeypatch.delenv("SPARK_MASTER_URL", raising=False)
    assert resolve_master(None, 4) == "local[4]"
    monkeypatch.setenv("SPARK_MASTER_URL", "spark://head:7077")
    assert resolve_master(None, 4) == "spark://head:7077"
    assert resolve_master("spark://other:7077", 4) == "spark://other:7077"


def test_an_img2dataset_error_does_not_leave_its_logger_process_behind(tmp_path):
    """img2dataset starts its (non-daemon) logger before it picks the distributor; an error after
    that would otherwise keep our interpreter waiting at exit."""
    import multiprocessing

    from img2dataset import download as img2dataset_download

    from flip_scale.data.download import _run_img2dataset

    meta = _parquet(tmp_path / "m.parquet", url=["http://127.0.0.1:9/x.jpg"], caption=["t"])
    with pytest.raises(ValueError, match="Distributor bogus not supported"):
        _run_img2dataset(img2dataset_download, dict(
            url_list=meta, input_format="parquet", url_col="url", caption_col="caption",
            output_folder=str(tmp_path / "out"), output_format="webdataset", distributor="bogus",
            enable_wandb=False))
    assert not [c for c in multiprocessing.active_children() if type(c).__name__ == "LoggerProcess"]
