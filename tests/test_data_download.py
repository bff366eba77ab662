"""img2dataset download against a real HTTP server on 127.0.0.1: counts, filters, manifest, resume."""

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest

pytest.importorskip("img2dataset")
pytest.importorskip("pyarrow")

from flip_scale.data.download import DownloadConfig, download  # noqa: E402
from flip_scale.data.synthetic import write_synthetic_parquet  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Handler(http.server.SimpleHTTPRequestHandler):
    """/img/X serves a file, /missing/X 404s, /text/X is not an image, /slow/X is late,
    /hang/X waits until the test releases it (to interrupt a run mid-shard)."""

    release: threading.Event

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        kind, _, name = self.path.lstrip("/").partition("/")
        if kind == "missing":
            self.send_error(404)
            return
        if kind == "text":
            body = b"<html>this is not an image</html>"
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")  # lies, as real servers do
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if kind == "slow":
            time.sleep(1.5)
        if kind == "hang":
            self.release.wait(60)
        self.path = "/" + name
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    release = threading.Event()
    handler = functools.partial(type("H", (_Handler,), {"release": release}),
                                directory=str(image_dir))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", str(image_dir), release
    release.set()
    srv.shutdown()
    srv.server_close()


def _tar_samples(path):
    with tarfile.open(path) as tar:
        names = tar.getnames()
        caps = {n[:-4]: tar.extractfile(n).read().decode() for n in names if n.endswith(".txt")}
    return names, caps


def test_download_counts_filters_and_manifest(tmp_path, server, capsys):
    base, image_dir, _ = server
    extra = ([{"URL": f"{base}/missing/{i}.jpg", "TEXT": "gone"} for i in range(3)]
             + [{"URL": f"{base}/text/{i}.jpg", "TEXT": "html page"} for i in range(2)]
             + [{"URL": f"{base}/slow/000001.jpg", "TEXT": "a slow server"}]
             + [{"URL": f"{base}/img/000002.jpg", "TEXT": "unsafe", "NSFW": "NSFW"}] * 2
             + [{"URL": f"{base}/img/000003.jpg", "TEXT": "unrelated", "similarity": 0.1}]
             # LAION-2B's punsafe column: above max_punsafe is dropped, exactly at it is kept; the
             # other rows have no punsafe value (null), which the filter keeps.
             + [{"URL": f"{base}/img/000004.jpg", "TEXT": "probably unsafe", "punsafe": 0.9},
                {"URL": f"{base}/img/000005.jpg", "TEXT": "borderline", "punsafe": 0.5}])
    meta = str(tmp_path / "meta.parquet")
    rows = write_synthetic_parquet(meta, image_dir, 20, seed=0, base_url=f"{base}/img",
                                   image_size=40, extra_rows=extra)
    assert rows == 31
    out = str(tmp_path / "shards")
    m = download(DownloadConfig(url_list=meta, output=out, image_size=32, processes=1, threads=4,
                                samples_per_shard=10, timeout_s=5, drop_nsfw=True,
                                max_punsafe=0.5, min_similarity=0.28))
    # 31 rows - 2 NSFW - 1 punsafe 0.9 - 1 low similarity = 27 kept: 20 synthetic images, the
    # punsafe-0.5 image, 3 dead links, 2 html bodies, 1 slow image.
    assert m["filter"] == {"rows_in": 31, "rows_kept": 27, "dropped_nsfw": 2,
                           "dropped_punsafe": 1, "dropped_similarity": 1}
    assert m["shards"] == 3 and m["attempted"] == 27 and m["samples"] == 22
    assert m["failures"] == {"download_error": 3, "decode_resize_error": 2}
    assert m["success_rate"] == round(22 / 27, 4) and m["bytes"] > 0
    assert json.load(open(os.path.join(out, "manifest.json")))["samples"] == 22
    all_caps = [c for k in range(3) for c in _tar_samples(os.path.join(out, f"{k:05d}.tar"))[1].values()]
    assert len(all_caps) == 22 and "borderline" in all_caps and "probably unsafe" not in all_caps
    names, caps = _tar_samples(os.path.join(out, "00000.tar"))
    assert len(caps) == 10 and {n.rsplit(".", 1)[1] for n in names} == {"jpg", "txt", "json"}
    key = sorted(caps)[0]
    assert caps[key].startswith(("a ", "in the", "at the"))
    sample_meta = json.loads(tarfile.open(os.path.join(out, "00000.tar"))
                             .extractfile(key + ".json").read())
    assert "similarity" in sample_meta and "NSFW" in sample_meta  # extra columns kept
    assert "success rate" in capsys.readouterr().out


def test_interrupted_download_resumes_missing_shards(tmp_path, server):
    base, image_dir, release = server
    meta = str(tmp_path / "meta.parquet")
    write_synthetic_parquet(meta, image_dir, 19, seed=0, base_url=f"{base}/img", image_size=40,
                            extra_rows=[{"URL": f"{base}/hang/000000.jpg", "TEXT": "late"}])
    out = str(tmp_path / "shards")
    cmd = [sys.executable, "-m", "flip_scale.data.prep_cli", "download", "--url-list", meta,
           "--output", out, "--image-size", "32", "--processes", "1", "--threads", "2",
           "--samples-per-shard", "10", "--timeout", "30"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(out, "00000_stats.json")
    try:
        deadline = time.time() + 90
        while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert os.path.exists(first), "first shard never finished"
        time.sleep(0.5)
        assert proc.poll() is None, "the run should still be waiting on the hanging URL"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole img2dataset process tree we started
        proc.wait()
    assert not os.path.exists(os.path.join(out, "00001_stats.json"))
    done_mtime = os.path.getmtime(os.path.join(out, "00000.tar"))
    release.set()
    m = download(DownloadConfig(url_list=meta, output=out, image_size=32, processes=1,
                                threads=2, samples_per_shard=10, timeout_s=10), quiet=True)
    assert os.path.getmtime(os.path.join(out, "00000.tar")) == done_mtime  # kept, not redone
    assert m["shards"] == 2 and m["samples"] == 20 and m["success_rate"] == 1.0
    assert len(_tar_samples(os.path.join(out, "00001.tar"))[1]) == 10


def test_a_missing_column_fails_before_any_download_and_leaves_nothing(tmp_path):
    meta = str(tmp_path / "meta.parquet")
    write_synthetic_parquet(meta, str(tmp_path / "img"), 4, seed=0, base_url="http://127.0.0.1:9/img", image_size=16)
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match="--caption-col needs column 'NOPE', which .*meta.parquet lacks \(columns: SAMPLE_ID, URL, TEXT"):
        download(DownloadConfig(url_list=meta, output=str(out), caption_col="NOPE", processes=1, threads=1))
    assert not out.exists()
