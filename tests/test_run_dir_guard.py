"""The run directory is one run's (issue 21): a second start is refused naming the holder, a
resume under another recipe is refused leaving every byte as it was, a full or read-only disk
ends the run with one line and a status Slurm does not requeue. Real processes, real files, real
(tmpfs) mounts."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from ftutil import finish, launch_ranks, read_metrics, train_args, wait_for

# One line per failure: flip-scale's own error line, no traceback.
def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("flip-scale: error")]


def _tree_hashes(root: Path) -> dict:
    """Every file under root (hidden ones too) -> sha256 of its bytes; folders by name."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def _train(run, *over, timeout=300, env=None):
    return subprocess.run(train_args(run, *over), cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


# -- the lock --------------------------------------------------------------------------------

def test_lock_names_its_holder_and_comes_back_when_the_holder_dies(tmp_path):
    from flip_scale.run_lock import RunLock, RunLocked

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from flip_scale.run_lock import RunLock; "
                               "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)",
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as refused:
            RunLock(tmp_path).acquire()
        assert f"pid={holder.pid}" in str(refused.value) and f"host={socket.gethostname()}" in str(refused.value)
        assert "started=" in str(refused.value) and "\n" not in str(refused.value)
    finally:
        holder.kill()  # SIGKILL: no clean-up code runs; the kernel drops the lock
        holder.wait()
    lock = RunLock(tmp_path).acquire()  # a requeued job: the directory is free again
    assert f"pid={os.getpid()}" in (tmp_path / ".lock").read_text()
    lock.release()
    assert (tmp_path / ".lock").read_text() == ""  # a clean release leaves no holder behind
    RunLock(tmp_path).acquire().release()  # and the same process may take it again


@pytest.mark.slow
def test_a_second_train_on_the_same_out_dir_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    # The interpreter and torch imports alone, on this machine now: the part of a refusal's time
    # that no lock can shorten (seconds on an idle machine, far more on a loaded CI runner).
    t0 = time.time()
    subprocess.run(train_args(run, "--print-config"), cwd=ROOT, capture_output=True, timeout=300, check=True)
    startup = time.time() - t0
    # A checkpoint every step, each held 3 s before publishing (the fault-injection delay): the
    # first run lasts over a minute however fast the machine, so it is surely still running.
    first = subprocess.Popen(train_args(run, "train.samples=1280", "train.log_every_steps=1",
                                        "checkpoint.every_steps=1", "checkpoint.keep=1"),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "FLIP_SCALE_TEST_SAVE_DELAY_S": "3"})
    wait_for(lambda: read_metrics(run), procs=[first], timeout=300, poll=0.1)  # training, lock held
    t0 = time.time()
    second = _train(run, "train.seed=1", "model.mask_ratio=0.75", timeout=300)
    took = time.time() - t0
    assert first.poll() is None, "the first run ended before the second start was refused: inconclusive"
    (rc, err), = finish([first])
    assert rc == 0, err[-3000:]
    assert second.returncode == 2, second.stderr[-3000:]
    assert took < 30 + startup, (took, startup)
    lines = _error_lines(second.stderr)
    assert len(lines) == 1 and "in use by another training run" in lines[0] and f"pid={first.pid}" in lines[0]
    # The first run is whole: every record, its own config and summary.
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 21))
    assert "mask_ratio: 0.5" in (run / "config.yaml").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["mask_ratio"] == 0.5 and summary["steps"] == 20 and summary["resumed_at_step"] == 0


@pytest.mark.slow
def test_every_rank_of_a_refused_start_exits_with_rank_0s_error(tmp_path):
    """Rank 0 cannot lock: the other ranks learn it right after the rendezvous and exit 2 too,
    instead of waiting in a collective rank 0 never joins; nothing is written."""
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from flip_scale.run_lock import RunLock; "
                               "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(300)",
                               str(run)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        results = finish(launch_ranks(run, 2, ["parallel.backend=ddp", "train.samples=640"]), timeout=240)
    finally:
        holder.kill()
        holder.wait()
    assert [rc for rc, _ in results] == [2, 2], [err[-2000:] for _, err in results]
    line, = _error_lines(results[0][1])
    assert f"pid={holder.pid}" in line and "in use by another training run" in line
    assert _error_lines(results[1][1]) == []  # one line for the job, from rank 0
    assert sorted(p.name for p in run.iterdir()) == [".lock"]


# -- resume only what the config says -----------------------------------------------------------

BASE = ["train.global_batch_size=32", "train.samples=320", "train.log_every_steps=5", "checkpoint.every_steps=5",
        "checkpoint.keep=2"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("base") / "run"
    r = _train(run, *BASE)
    assert r.returncode == 0, r.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("override, named", [
    ("model.mask_ratio=0.75", "model.mask_ratio 0.5 -> 0.75"),
    ("train.global_batch_size=16", "train.global_batch_size 32 -> 16"),
    ("model.text_length=8", "model.text_length 16 -> 8"),  # a model shape change
])
def test_a_resume_under_another_recipe_is_refused_and_changes_nothing(finished_run, tmp_path, override, named):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _tree_hashes(run)
    r = _train(run, *BASE, override)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and named in lines[0] and "step_00000010" in lines[0], r.stderr
    assert _tree_hashes(run) == before  # nothing renamed, rewritten, appended or left behind


@pytest.mark.slow
def test_checkpoints_without_a_fingerprint_compare_with_config_yaml_or_are_a_misfit(finished_run, tmp_path):
    """Checkpoints written before run_config existed: compared with the run's config.yaml; with
    no config.yaml either, a warning, and a model that does not fit is a mismatch (one line),
    never renamed unreadable_*."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    for meta in run.glob("checkpoints/step_*/meta.json"):
        m = json.loads(meta.read_text())
        del m["run_config"]
        meta.write_text(json.dumps(m))
    before = _tree_hashes(run)
    r = _train(run, *BASE, "model.mask_ratio=0.75")
    assert r.returncode == 2
    line, = _error_lines(r.stderr)
    assert "model.mask_ratio 0.5 -> 0.75" in line and "config.yaml" in line
    assert _tree_hashes(run) == before

    (run / "config.yaml").unlink()
    before = _tree_hashes(run)
    r = _train(run, *BASE, "model.text_length=8")
    assert r.returncode == 2
    line, = _error_lines(r.stderr)
    assert "does not fit the model" in line and "size mismatch" in line, line
    assert "cannot check that this recipe matches the run" in r.stderr
    assert _tree_hashes(run) == before and not list(run.glob("checkpoints/unreadable_*"))


@pytest.mark.slow
def test_a_resume_that_changes_only_intervals_goes_on(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    over = [o for o in BASE if not o.startswith("train.samples")]
    r = _train(run, *over, "train.samples=320", "train.log_every_steps=2", "checkpoint.every_steps=3",
               "data.workers=1", "parallel.timeout_s=100")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "log_every_steps: 2" in (run / "config.yaml").read_text()
    # Lines said before the run directory was claimed (the checkpointer's notice) still reach the
    # rank's log file, ahead of the later ones.
    log = (run / "logs" / "rank0.log").read_text().split("\n")
    notice = max(i for i, line in enumerate(log) if "saves synchronously" in line)
    assert notice < max(i for i, line in enumerate(log) if "resumed from" in line)


# -- failing cleanly ----------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    if read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_with_one_line_keeping_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    # One tiny checkpoint is ~6.2 MB: the first fits, the second (kept beside it until published) does not.
    _mount_tmpfs(ckpts, "9m")
    try:
        r = _train(run, "train.samples=640", "checkpoint.every_steps=3", "checkpoint.keep=1", "train.log_every_steps=1")
        assert r.returncode == 74, r.stderr[-3000:]
        line, = _error_lines(r.stderr)
        assert "checkpoint save at step 6 failed" in line and "no space left" in line and "step_00000003" in line
        assert (ckpts / "latest").read_text().strip() == "step_00000003"
        assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000003"]  # no .tmp_* left
        assert json.loads((ckpts / "step_00000003" / "meta.json").read_text())["step"] == 3
    finally:
        subprocess.run(["umount", str(ckpts)], check=False)


@pytest.mark.slow
def test_a_read_only_checkpoints_dir_is_found_at_set_up(tmp_path):
    run = tmp_path / "run"
    _mount_tmpfs(run / "checkpoints", "1m", read_only=True)
    try:
        t0 = time.time()
        r = _train(run, "train.samples=640", timeout=120)
        assert r.returncode == 74, r.stderr[-3000:]
        line, = _error_lines(r.stderr)
        assert "checkpoints directory" in line and "read-only filesystem" in line
        assert time.time() - t0 < 60
        assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()
    finally:
        subprocess.run(["umount", str(run / "checkpoints")], check=False)


def test_the_slurm_template_does_not_requeue_a_storage_failure():
    from flip_scale.fileio import STORAGE_EXIT_CODE

    common = (ROOT / "slurm" / "common.sh").read_text()
    assert f"STORAGE_EXIT_CODE={STORAGE_EXIT_CODE}" in common
    assert 'FLIP_RC" -eq "$STORAGE_EXIT_CODE"' in common


def test_non_finite_base_lr_exits_2_with_one_line(tmp_path):
    r = _train(tmp_path / "run", "train.base_lr=nan", timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "flip-scale: error: command line (train.base_lr=nan): train.base_lr: must be a finite number, got nan"]
    assert not (tmp_path / "run").exists()


# -- config holes: each is one ConfigError naming its key ---------------------------------------

@pytest.mark.parametrize("override, key", [
    ("train.base_lr=nan", "train.base_lr"), ("train.weight_decay=.inf", "train.weight_decay"),
    ("parallel.timeout_s=.nan", "parallel.timeout_s"), ("data.shard_timeout_s=-.inf", "data.shard_timeout_s"),
    ("data.shards_per_chunk=0", "data.shards_per_chunk"), ("data.prefetch_factor=0", "data.prefetch_factor"),
    ("train.grad_clip=-1", "train.grad_clip"), ("train.warmup_samples=12801", "train.warmup_samples"),
    ("data.epochs=0", "data.epochs"),
])
def test_config_holes_are_one_line_naming_the_key(override, key):
    from flip_scale.config import ConfigError, load_recipe

    from conftest import TINY

    with pytest.raises(ConfigError) as e:
        load_recipe(TINY, [override])
    assert f": {key}: " in str(e.value) and "\n" not in str(e.value)


def test_warmup_longer_than_the_run_is_refused_and_as_long_is_allowed():
    """The issue's case: a paper warmup (49.8M samples) left in a short run trained at 6e-11;
    refused with the fix in the line. A warmup exactly as long as the run is still a schedule."""
    from flip_scale.config import ConfigError, load_recipe

    from conftest import TINY

    assert load_recipe(TINY, ["train.warmup_samples=12800"]).train.warmup_samples == 12800  # = train.samples
    with pytest.raises(ConfigError) as e:
        load_recipe(TINY, ["train.samples=409600", "train.warmup_samples=49807360"])
    msg = str(e.value)
    assert "train.warmup_samples: 49807360 is longer than the run (train.samples 409600)" in msg
    assert "0.82% of its peak" in msg and "train.warmup_samples=40960" in msg


def test_out_dir_that_is_a_file_is_one_line(tmp_path):
    from flip_scale.config import ConfigError, load_recipe

    from conftest import TINY

    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"train.out_dir: .* is a file, not a directory"):
        load_recipe(TINY, [f"train.out_dir={tmp_path / 'f'}"])


@pytest.mark.parametrize("text, says", [("model: {name: tiny\n  x: [\n", "not valid YAML"),
                                        ("- a\n- b\n", "not a resolved config")])
def test_report_on_a_malformed_config_yaml_is_one_line(tmp_path, capsys, text, says):
    from flip_scale.report.cli import main_report

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(text)
    assert main_report([str(tmp_path / "run"), "--output", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.yaml" in err[0] and says in err[0]


# -- finite data ----------------------------------------------------------------------------------

def _shards(tmp_path, manifest: bool) -> Path:
    from flip_scale.data.synthetic import write_synthetic_shards

    shards = tmp_path / "shards"
    write_synthetic_shards(str(shards), 256, 128, seed=0, image_size=32)
    if manifest:
        (shards / "manifest.json").write_text(json.dumps({"shards": 2, "samples": 256}))
    return shards


EPOCHS = ["data.resampled=false", "data.epochs=1", "train.samples=1280", "checkpoint.every_steps=0",
          "train.log_every_steps=1", "data.shuffle_buffer=16"]


def test_finite_data_known_too_small_is_refused_before_training(tmp_path):
    run = tmp_path / "run"
    r = _train(run, f"data.train_shards={_shards(tmp_path, manifest=True)}", *EPOCHS, timeout=120)
    assert r.returncode == 2
    line, = _error_lines(r.stderr)
    assert "data.epochs: 1 epoch(s)" in line and "hold 256 samples, fewer than train.samples 1280" in line
    assert not (run / "config.yaml").exists()


@pytest.mark.slow
def test_finite_data_running_out_saves_and_stops_with_one_line(tmp_path):
    run = tmp_path / "run"
    r = _train(run, f"data.train_shards={_shards(tmp_path, manifest=False)}", *EPOCHS)
    assert r.returncode == 2, r.stderr[-3000:]
    line, = _error_lines(r.stderr)
    assert "data.epochs: the data" in line and "ran out at step" in line and "saved" in line
    step = max(rec["step"] for rec in read_metrics(run))
    assert 1 <= step < 20
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{step:08d}"
