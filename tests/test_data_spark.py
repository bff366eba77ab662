"""`prep download --distributor pyspark` on real Spark: local mode, and a standalone master plus
one worker started here on 127.0.0.1. Both must write the shards `--distributor multiprocessing`
writes (every member byte for byte), and on the cluster the tasks must run in the worker's executor."""

import functools
import glob
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request

import pytest

pytest.importorskip("img2dataset")
pytest.importorskip("pyarrow")
pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None:
    pytest.skip("no java (make test installs openjdk-17-jre-headless)", allow_module_level=True)

from conftest import ROOT, cli, free_port  # noqa: E402
from test_data_download import _Handler  # noqa: E402 - the 127.0.0.1 image server

from flip_scale.data.download import DownloadConfig, download  # noqa: E402
from flip_scale.data.synthetic import write_synthetic_parquet  # noqa: E402

pytestmark = pytest.mark.slow
ROWS, PER_SHARD = 17, 5  # 4 shards, the last one short


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Metadata served from 127.0.0.1, and the shards the multiprocessing distributor writes."""
    tmp_path = tmp_path_factory.mktemp("spark-ref")
    image_dir = str(tmp_path / "images")
    os.makedirs(image_dir)
    handler = functools.partial(type("H", (_Handler,), {"release": threading.Event()}), directory=image_dir)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    meta = tmp_path / "meta" / "part-0.parquet"
    write_synthetic_parquet(str(meta), image_dir, ROWS - 1, seed=3, base_url=f"{base}/img", image_size=40,
                            extra_rows=[{"URL": f"{base}/missing/x.jpg", "TEXT": "gone"}])
    ref = tmp_path / "ref"
    m = download(DownloadConfig(url_list=str(meta), output=str(ref), image_size=32, processes=1, threads=4,
                                samples_per_shard=PER_SHARD, timeout_s=5), quiet=True)
    assert m["shards"] == 4 and m["samples"] == ROWS - 1
    yield meta, ref
    srv.shutdown()
    srv.server_close()


def _spark_env(tmp_path) -> dict:
    """Small JVMs (a 2-core shared machine) and loopback only. PYSPARK_PYTHON is left unset and
    this interpreter's folder off PATH: Spark's Python workers then find only a `python3`
    without img2dataset, unless the download points them at this interpreter."""
    conf = tmp_path / "spark-conf"
    conf.mkdir(exist_ok=True)
    (conf / "spark-defaults.conf").write_text(
        "spark.driver.memory 512m\nspark.executor.memory 512m\nspark.executor.cores 1\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not p.startswith(sys.prefix))
    return dict(env, PATH=path, SPARK_CONF_DIR=str(conf), SPARK_LOCAL_IP="127.0.0.1", SPARK_DAEMON_MEMORY="256m",
                SPARK_LOG_DIR=str(tmp_path / "spark-logs"),
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _download_cli(meta, out, env, *extra, cwd=None):
    # Relative paths on purpose: executors resolve paths from their own working directory.
    cmd = cli("prep", "download", "--url-list", os.path.relpath(meta, cwd), "--output", os.path.relpath(out, cwd),
              "--image-size", 32, "--processes", 1, "--threads", 4, "--samples-per-shard", PER_SHARD,
              "--timeout", 5, "--distributor", "pyspark", *extra)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _members(path):
    with tarfile.open(path) as tar:
        return sorted((m.name, tar.extractfile(m).read()) for m in tar.getmembers())


def _same_shards(ref, out):
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ref, "*.tar")))
    assert names == sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*.tar")))
    for name in names:
        # Byte for byte, member by member: webdataset's TarWriter stamps each header with the
        # time of writing, and img2dataset's threads write samples in the order downloads finish
        # (as two multiprocessing runs also differ), so the tar files differ in exactly that.
        assert _members(ref / name) == _members(out / name), name
    m = json.loads((out / "manifest.json").read_text())
    assert m["samples"] == ROWS - 1 and m["attempted"] == ROWS and m["failed_shards"] == []


def test_spark_local_mode_writes_the_multiprocessing_shards(tmp_path, reference):
    meta, ref = reference
    out = tmp_path / "spark-local"
    r = _download_cli(meta, out, _spark_env(tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "on local[1]" in r.stdout and f"PYSPARK_PYTHON={sys.executable}" in r.stdout
    _same_shards(ref, out)


def _get_json(url):
    with urllib.request.urlopen(url, timeout=5) as f:  # noqa: S310 - the test's own master
        return json.load(f)


def _spark_class(*args, env, log):
    spark_home = os.path.dirname(pyspark.__file__)
    return subprocess.Popen([os.path.join(spark_home, "bin", "spark-class"), *args],
                            env=dict(env, SPARK_HOME=spark_home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_spark_standalone_cluster_runs_tasks_on_the_worker(tmp_path, reference):
    meta, ref = reference
    env = _spark_env(tmp_path)
    port, ui = free_port(), free_port()
    master_url, json_url = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}/json/"
    work = tmp_path / "worker-work"
    procs = []
    try:
        with open(tmp_path / "master.log", "w") as mlog, open(tmp_path / "worker.log", "w") as wlog:
            procs.append(_spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                      "--port", str(port), "--webui-port", str(ui), env=env, log=mlog))
            procs.append(_spark_class("org.apache.spark.deploy.worker.Worker", master_url, "--host", "127.0.0.1",
                                      "--cores", "1", "--memory", "1g", "--work-dir", str(work),
                                      "--webui-port", str(free_port()), env=env, log=wlog))
        deadline = time.time() + 120
        state = {}
        while time.time() < deadline:  # as slurm/download_spark.sh waits: every worker registered
            try:
                state = _get_json(json_url)
                if state.get("aliveworkers") == 1:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert state.get("aliveworkers") == 1, (tmp_path / "worker.log").read_text()[-2000:]
        out = tmp_path / "spark-cluster"
        r = _download_cli(meta, out, env, "--spark-master", master_url, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"on {master_url}" in r.stdout
        _same_shards(ref, out)
        # The master ran one application, and the worker's executor ran every task of it.
        apps = _get_json(json_url)["completedapps"]
        assert [a["name"] for a in apps] == ["flip-scale-download"], apps
        app_id = apps[0]["id"]
        executor_logs = glob.glob(str(work / app_id / "*" / "stderr"))
        assert executor_logs, list(work.rglob("*"))
        text = "".join(open(p).read() for p in executor_logs)
        finished = {line.split("Finished task ")[1].split(" ")[0]
                    for line in text.splitlines() if "Finished task " in line}
        assert len(finished) == 4, text[-3000:]  # one task per shard, all in the executor
    finally:
        for p in reversed(procs):
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
