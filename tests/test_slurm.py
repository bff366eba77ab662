"""The Slurm templates, preemption/requeue and the launcher on a real two-node Slurm cluster.

tests/slurm_cluster.py starts munged, slurmctld and two slurmd (each in its own network namespace)
on this machine; these tests submit the real slurm/vith_laion2b.sh with real sbatch/srun. Where the
daemons cannot start (no root, no apt, ...) every test here skips with the reason printed.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from ftutil import read_metrics

sys.path.insert(0, str(Path(__file__).parent))
from slurm_cluster import ClusterUnavailable, SlurmCluster  # noqa: E402

pytestmark = pytest.mark.slow

TEMPLATE = ROOT / "slurm" / "vith_laion2b.sh"
# The command: 2 nodes x 1 task, no GPUs, on the tiny recipe (its backend is ddp).
TINY_JOB = ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10"]
STEPS = 40
OVERRIDES = f"train.samples={64 * STEPS} train.log_every_steps=1 checkpoint.every_steps=10"


@pytest.fixture(scope="session")
def cluster():
    c = SlurmCluster()
    reuse = c._load_record() and c.alive()  # one started by hand with `python tests/slurm_cluster.py start`
    if not reuse:
        t0 = time.time()
        try:
            c.start()
        except ClusterUnavailable as e:
            print(f"\nSKIP real-Slurm tests: {e}", file=sys.stderr)
            pytest.skip(f"real Slurm cluster unavailable: {e}")
        print(f"\ntest cluster ({c.mode}) up in {time.time() - t0:.1f} s", file=sys.stderr)
    yield c
    if not reuse:
        c.stop()


def submit_template(cluster, run_dir: Path, overrides=OVERRIDES) -> int:
    env = {"FLIP_RECIPE": "recipes/test/tiny.yaml", "FLIP_OUT": str(run_dir), "FLIP_OVERRIDES": overrides}
    log = run_dir.parent / f"{run_dir.name}-slurm-%j.out"
    return cluster.sbatch([*TINY_JOB, f"--output={log}", TEMPLATE], env_extra=env, cwd=ROOT)


def job_log(run_dir: Path, job_id: int) -> str:
    path = run_dir.parent / f"{run_dir.name}-slurm-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def losses(run_dir: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """An uninterrupted 2-node run of the template (test a checks it; test b compares with it)."""
    run = tmp_path_factory.mktemp("slurm") / "reference"
    t0 = time.time()
    job = submit_template(cluster, run)
    info = cluster.wait_job(job, timeout_s=240)
    print(f"\nreference job {job}: {info.get('JobState')} in {time.time() - t0:.1f} s", file=sys.stderr)
    return job, info, run


def test_template_trains_tiny_across_two_nodes_over_gloo(cluster, reference):
    job, info, run = reference
    log = job_log(run, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert info["NumNodes"] == "2" and info["NodeList"] == f"{cluster.nodes[0][:-1]}[1-2]", info
    assert f"2 node(s) [{info['NodeList']}], 2 task(s), master {cluster.nodes[0]}:" in log
    assert "training tiny (ddp, 2 process(es)" in log
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["backend"] == "ddp"
    assert summary["samples_seen"] == 64 * STEPS and summary["steps"] == STEPS
    assert sorted(losses(run)) == list(range(1, STEPS + 1))
    assert summary["final_loss"] < summary["first_logged_loss"]
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{STEPS:08d}" and (run / "checkpoints" / latest).is_dir()
    assert (run / "config.yaml").is_file()


def test_the_interface_command_runs_as_written(cluster, tmp_path):
    """INTERFACE.md's example verbatim: only FLIP_RECIPE and FLIP_OUT, no FLIP_OVERRIDES, the whole
    tiny recipe (200 steps) on 2 nodes x 1 task. (--output only keeps the log out of the checkout.)"""
    from flip_scale.config import load_recipe

    run = tmp_path / "verbatim"
    env = {"FLIP_RECIPE": "recipes/test/tiny.yaml", "FLIP_OUT": str(run)}
    job = cluster.sbatch([*TINY_JOB, f"--output={tmp_path}/verbatim-%j.out", TEMPLATE], env_extra=env, cwd=ROOT)
    info = cluster.wait_job(job, timeout_s=300)
    log = (tmp_path / f"verbatim-{job}.out").read_text(errors="replace")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    recipe = load_recipe(ROOT / "recipes" / "test" / "tiny.yaml")
    assert summary["world_size"] == 2 and summary["backend"] == recipe.parallel.backend == "ddp"
    assert summary["samples_seen"] == recipe.train.samples
    assert summary["final_loss"] < summary["first_logged_loss"]
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{recipe.train.samples // 64:08d}"


def test_usr1_checkpoints_requeues_and_resumes_to_the_same_result(cluster, reference, tmp_path):
    ref_job, ref_info, ref_run = reference
    assert ref_info["JobState"] == "COMPLETED"
    run = tmp_path / "preempted"
    t0 = time.time()
    job = submit_template(cluster, run)

    # Signal mid-run, between the periodic checkpoints (every 10 steps).
    end = time.time() + 180
    while not any(s >= 3 for s in losses(run)):
        assert time.time() < end, f"job {job} never reached step 3:\n{job_log(run, job)[-3000:]}"
        assert cluster.squeue_state(job) in ("PENDING", "CONFIGURING", "RUNNING"), job_log(run, job)[-3000:]
        time.sleep(0.1)
    r = subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], env=cluster.env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr

    # The batch shell forwards USR1, the ranks save and exit 75, the template requeues the job.
    info = cluster.wait_job(job, timeout_s=120, until=lambda s: s == "PENDING")
    assert info["Restarts"] == "1", info
    log = job_log(run, job)
    assert "USR1: forwarding to the job step" in log
    # Every rank exits 75; srun may report a slower rank as killed (--kill-on-bad-exit tears the step
    # down when the first one leaves), which the template also treats as preempted.
    assert "Exited with exit code 75" in log, log[-3000:]
    assert "requeueing job" in log and "scontrol requeue failed" not in log, log[-3000:]
    stopped_at = max(losses(run))
    assert stopped_at < STEPS, "the run finished before the signal arrived"
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{stopped_at:08d}", (latest, stopped_at)
    assert not (run / "summary.json").exists()

    # A requeued job is held ~121 s; release it now, then it resumes with the same command. Not in
    # the same second as the requeue: slurmd compares credential times in whole seconds and kills a
    # relaunch whose credential is not newer than the revocation ("Job credential revoked").
    cluster.wait_nodes_idle(60)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster.env, check=True)
    info = cluster.wait_job(job, timeout_s=240)
    log = job_log(run, job)
    print(f"\npreempted job {job}: stopped at step {stopped_at}, done in {time.time() - t0:.1f} s", file=sys.stderr)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert "restart 1:" in log and f"resumed from {run}/checkpoints/{latest}" in log
    assert losses(run) == losses(ref_run), "loss sequence differs from the uninterrupted job"
    ref_summary = json.loads((ref_run / "summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_loss"] == ref_summary["final_loss"]
    assert summary["samples_seen"] == ref_summary["samples_seen"] == 64 * STEPS


def launch(cluster, *args):
    cmd = [sys.executable, "-m", "flip_scale", "launch", *map(str, args)]
    r = subprocess.run(cmd, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_study_launch_submits_every_row_and_relaunch_skips_finished_rows(cluster, tmp_path):
    rows = ROOT / "recipes" / "test" / "study_tiny"
    args = ["--study", rows, "--template", "slurm/vith_laion2b.sh", "--out-root", tmp_path, "parallel.backend=ddp",
            *[f"--sbatch-arg={a}" for a in TINY_JOB]]
    t0 = time.time()
    out = launch(cluster, *args)
    jobs = {}
    for row in ("row_a", "row_b"):
        history = json.loads((tmp_path / row / "launch.json").read_text())
        jobs[row] = history[-1]["job_id"]
        assert f"submitted job {jobs[row]}: {tmp_path / row}" in out
        # The snapshot is what runs: resolved config + the code copy.
        assert (tmp_path / row / "code" / "flip_scale" / "launch.py").is_file()
        assert (tmp_path / row / "code" / "slurm" / "common.sh").is_file()
    assert jobs["row_a"] != jobs["row_b"]
    # A relaunch while the jobs are queued or running must not submit them twice.
    out = launch(cluster, *args)
    assert "submitted" not in out, out
    for row, job in jobs.items():  # still queued/running, or finished by now on a fast machine
        assert f"skip {row}: job {job} is " in out or f"skip {row}: finished" in out, out

    for row, job in jobs.items():
        info = cluster.wait_job(job, timeout_s=240)
        log = (tmp_path / row / f"slurm-{job}.out").read_text(errors="replace")
        assert info["JobState"] == "COMPLETED", log[-3000:]
        assert f"code: {tmp_path / row}/code" in log
        summary = json.loads((tmp_path / row / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["steps"] == 10
    masks = {row: json.loads((tmp_path / row / "summary.json").read_text())["mask_ratio"] for row in jobs}
    assert masks == {"row_a": 0.5, "row_b": 0.75}

    out = launch(cluster, *args)
    assert "skip row_a: finished" in out and "skip row_b: finished" in out, out
    assert "submitted" not in out
    for row, job in jobs.items():
        assert len(json.loads((tmp_path / row / "launch.json").read_text())) == 1
    print(f"\nstudy of 2 rows + 2 relaunches in {time.time() - t0:.1f} s", file=sys.stderr)


def test_launch_chains_unmasked_tuning_after_the_run_with_afterok(cluster, tmp_path):
    """Issue 7 item 3 and issue 20 on the real cluster: `--tune` submits the tuning job held by
    --dependency=afterok on the pre-training job; it starts from that run's weights and, through
    the site file and the run's data.dataset override, reads the run's shards with the run's
    tokenizer (the tuning recipe itself says synthetic/builtin), so its loss starts below chance."""
    import math
    import re

    import yaml

    from flip_scale.data.synthetic import write_synthetic_shards
    from flip_scale.data.tokenizer import builtin_vocab

    shards = write_synthetic_shards(str(tmp_path / "shards"), 640, 64, image_size=32)
    vocab = tmp_path / "vocab.txt"  # not the builtin vocabulary: one more word piece
    vocab.write_text("\n".join([*builtin_vocab(), "zebra"]) + "\n")
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"data": {"tokenizer": str(vocab)}, "datasets": {
        "tinyset": {"data": {"train_shards": f"{tmp_path}/shards/{{00000..{len(shards) - 1:05d}}}.tar"}}}}))
    pre, tune = tmp_path / "pre", tmp_path / "tune"
    out = launch(cluster, "recipes/test/tiny.yaml", "train.samples=1920", "data.dataset=tinyset", "--site", site,
                 "--out", pre, "--tune", "recipes/test/tiny_unmasked_tuning.yaml", "--tune-out", tune,
                 "--tune-override", "train.samples=320", "--template", "slurm/vith_laion2b.sh",
                 *[f"--sbatch-arg={a}" for a in TINY_JOB])
    jobs = {Path(d).name: int(j) for j, d in re.findall(r"submitted job (\d+): (\S+)", out)}
    assert set(jobs) == {"pre", "tune"}, out
    dependency = cluster.job_info(jobs["tune"]).get("Dependency", "")
    # Held while the first job is queued or running; Slurm clears it once satisfied.
    assert dependency.startswith(f"afterok:{jobs['pre']}") or cluster.job_info(jobs["pre"]).get("JobState") == \
        "COMPLETED", dependency
    info = {name: cluster.wait_job(job, timeout_s=300) for name, job in jobs.items()}
    logs = {name: (tmp_path / name / f"slurm-{job}.out").read_text(errors="replace") for name, job in jobs.items()}
    assert info["pre"]["JobState"] == "COMPLETED", logs["pre"][-3000:]
    assert info["tune"]["JobState"] == "COMPLETED", logs["tune"][-3000:]
    assert f"initialising weights from {pre}/checkpoints/step_00000030" in logs["tune"]
    summary = json.loads((tune / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["mask_ratio"] == 0.0 and summary["samples_seen"] == 320
    configs = {name: yaml.safe_load((tmp_path / name / "config.yaml").read_text()) for name in jobs}
    for key in ("train_shards", "tokenizer", "vocab_sha256", "dataset"):
        assert configs["tune"]["data"][key] == configs["pre"]["data"][key], key
    assert configs["tune"]["data"]["tokenizer"] == str(vocab) and configs["tune"]["site"]["file"] == str(site)
    chance = math.log(64)  # the global batch: a contrastive loss at chance is ln(batch)
    assert summary["first_logged_loss"] < chance and summary["final_loss"] < chance, summary


# ------------------------------------------------------------------ failures (issue 14)
def release(cluster, job: int) -> None:
    """Start a requeued job now instead of after Slurm's ~121 s hold (see the USR1 test for why
    not in the same second as the requeue)."""
    cluster.wait_nodes_idle(60)
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], env=cluster.env, check=True)


def wait_requeued(cluster, job: int, run: Path, timeout_s: float, restarts: int = 1) -> dict:
    """Poll until the job is pending again after its `restarts`-th requeue (a job just submitted
    is pending too, with Restarts=0)."""
    end = time.time() + timeout_s
    while time.time() < end:
        info = cluster.job_info(job)
        if info.get("JobState") == "PENDING" and int(info.get("Restarts", 0)) >= restarts:
            return info
        assert info.get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED"), (info, job_log(run, job)[-3000:])
        time.sleep(0.5)
    raise AssertionError(f"job {job} not requeued after {timeout_s} s: {cluster.job_info(job)}\n"
                         + job_log(run, job)[-3000:])


def task_pid(run: Path, rank: int) -> int:
    """PID of this run's training task `rank` (tasks share this machine's PID namespace): the
    process whose command line names the run directory and whose SLURM_PROCID is `rank`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"train.out_dir={run}".encode() in cmd and b"flip_scale" in cmd and f"SLURM_PROCID={rank}".encode() in env:
            return int(proc.name)
    raise AssertionError(f"no task {rank} of {run} running")


def wait_step(cluster, job: int, run: Path, step: int, timeout_s: float = 180) -> None:
    end = time.time() + timeout_s
    while not any(s >= step for s in losses(run)):
        assert time.time() < end, f"job {job} never reached step {step}:\n{job_log(run, job)[-3000:]}"
        assert cluster.squeue_state(job) in ("PENDING", "CONFIGURING", "RUNNING"), job_log(run, job)[-3000:]
        time.sleep(0.1)


def test_a_killed_task_requeues_the_job_which_resumes_to_the_same_losses(cluster, reference, tmp_path):
    import signal

    _, ref_info, ref_run = reference
    assert ref_info["JobState"] == "COMPLETED"
    run = tmp_path / "killed"
    t0 = time.time()
    job = submit_template(cluster, run)
    wait_step(cluster, job, run, 13)  # past the step-10 checkpoint
    os.kill(task_pid(run, 1), signal.SIGKILL)  # rank 1 on the second node dies: a crashed GPU/host

    info = wait_requeued(cluster, job, run, 120)
    assert info["Restarts"] == "1", info
    log = job_log(run, job)
    assert f"failure 1/5 (crash, step exit" in log and f"{cluster.nodes[1]}: task 1: Killed" in log, log[-3000:]
    # Two nodes for a two-node job: none can be spared.
    assert f"not excluding {cluster.nodes[1]}: 1 usable node(s) would remain for a 2-node job" in log
    record = (run / "restarts.log").read_text().splitlines()
    assert len(record) == 1 and record[0].startswith(f"job={job} failure=1 ") and "Killed" in record[0], record
    latest = (run / "checkpoints" / "latest").read_text().strip()

    release(cluster, job)
    info = cluster.wait_job(job, timeout_s=240)
    log = job_log(run, job)
    print(f"\nkilled job {job}: requeued and done in {time.time() - t0:.1f} s", file=sys.stderr)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert f"resumed from {run}/checkpoints/{latest}" in log
    assert losses(run) == losses(ref_run), "loss sequence differs from the uninterrupted job"


def _watchdog_wired() -> bool:
    import flip_scale.train.trainer as trainer

    return hasattr(trainer, "Watchdog")


@pytest.mark.skipif(not _watchdog_wired(), reason="watchdog not wired into flip_scale.train.trainer yet")
def test_a_frozen_task_is_caught_by_the_watchdog_dumped_requeued_and_finishes(cluster, reference, tmp_path):
    import signal

    _, _, ref_run = reference
    hang_s = 20
    run = tmp_path / "frozen"
    job = submit_template(cluster, run, overrides=f"{OVERRIDES} train.hang_timeout_s={hang_s}")
    wait_step(cluster, job, run, 13)
    pid = task_pid(run, 1)
    os.kill(pid, signal.SIGSTOP)  # rank 1 stops dead (its own watchdog thread too); rank 0 waits on it
    t_stop = time.time()
    info = wait_requeued(cluster, job, run, hang_s + 60)
    assert time.time() - t_stop < hang_s + 60
    log = job_log(run, job)
    assert "failure 1/5 (hang (watchdog), step exit" in log and "Exited with exit code 76" in log, log[-3000:]
    dump = run / "hangs" / f"failure1-job{job}" / "rank0.txt"
    assert dump.is_file(), sorted(p.name for p in (run / "hangs").rglob("*"))
    text = dump.read_text()
    assert "rank 0 on" in text and "last completed step" in text and "File " in text
    assert "excluding" not in log.split("failure 1/5")[1].splitlines()[0]  # a hang excludes no node
    release(cluster, job)
    info = cluster.wait_job(job, timeout_s=240)
    assert info["JobState"] == "COMPLETED", job_log(run, job)[-3000:]
    assert losses(run) == losses(ref_run)


def test_a_bad_recipe_key_exits_2_once_and_is_not_requeued(cluster, tmp_path):
    run = tmp_path / "badkey"
    job = submit_template(cluster, run, overrides="train.no_such_key=1")
    info = cluster.wait_job(job, timeout_s=180)
    log = job_log(run, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0" and info["Restarts"] == "0", (info, log[-3000:])
    # One line names the key: rank 0's, or the batch shell's when rank 1 exited first and srun
    # stopped rank 0 before it printed (--kill-on-bad-exit).
    assert log.count("flip-scale: error: command line (train.no_such_key=1): unknown key 'train.no_such_key'") == 1, log
    assert log.count("not requeueing") == 1, log[-3000:]
    # srun may report 143 for the step (the other rank stopped): the first task's own status 2 decides.
    assert "Exited with exit code 2" in log and "requeueing job" not in log
    assert not (run / "restarts.log").exists()


def fake_trainer(tmp_path, body: str) -> Path:
    """A stand-in for the interpreter (FLIP_PYTHON) that only exercises the template's failure
    handling: no training, so these tests take seconds of cluster time."""
    path = tmp_path / "fake_python.sh"
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def test_max_restarts_exhausted_ends_failed_with_one_line(cluster, tmp_path):
    run = tmp_path / "always_fails"
    fake = fake_trainer(tmp_path, 'echo "fake trainer failing on $SLURMD_NODENAME" >&2; exit 1\n')
    env = {"FLIP_RECIPE": "recipes/test/tiny.yaml", "FLIP_OUT": str(run), "FLIP_PYTHON": str(fake),
           "FLIP_MAX_RESTARTS": "1", "FLIP_EXCLUDE_FAILED_NODES": "0"}
    job = cluster.sbatch(["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=5",
                          f"--output={tmp_path}/always_fails-slurm-%j.out", TEMPLATE], env_extra=env, cwd=ROOT)
    wait_requeued(cluster, job, run, 60)
    release(cluster, job)
    info = cluster.wait_job(job, timeout_s=60)
    log = job_log(run, job)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "1" and info["ExitCode"] == "1:0", (info, log)
    final = [line for line in log.splitlines() if "FLIP_MAX_RESTARTS=" in line]
    assert len(final) == 1, log
    assert "FLIP_MAX_RESTARTS=1 exhausted: failure 2 (crash, step exit 1:" in final[0]
    assert "task 0: Exited with exit code 1" in final[0] and "job FAILED" in final[0]
    assert log.count("failure 1/1 (crash") == 1
    record = (run / "restarts.log").read_text().splitlines()
    assert [r.split()[1] for r in record] == ["failure=1", "failure=2"], record


def test_the_node_of_a_crashed_task_is_excluded_from_the_requeued_job(cluster, tmp_path):
    run = tmp_path / "badnode"
    mark = tmp_path / "first_node"
    # Crashes (SIGKILL, like a dead GPU taking its process down) on whichever node ran it first.
    fake = fake_trainer(tmp_path, f'[ -f {mark} ] || echo "$SLURMD_NODENAME" > {mark}\n'
                                  f'if [ "$(cat {mark})" = "$SLURMD_NODENAME" ]; then kill -9 $$; fi\n'
                                  'echo "fake trainer done on $SLURMD_NODENAME"\n')
    env = {"FLIP_RECIPE": "recipes/test/tiny.yaml", "FLIP_OUT": str(run), "FLIP_PYTHON": str(fake)}
    job = cluster.sbatch(["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=5",
                          f"--output={tmp_path}/badnode-slurm-%j.out", TEMPLATE], env_extra=env, cwd=ROOT)
    info = wait_requeued(cluster, job, run, 60)
    bad = mark.read_text().strip()
    # The batch shell sets the exclusion right after its requeue: the job can be seen pending a
    # moment before that update lands.
    end = time.time() + 30
    while info.get("ExcNodeList") in (None, "(null)") and time.time() < end:
        time.sleep(0.5)
        info = cluster.job_info(job)
    assert info["ExcNodeList"] == bad, info
    release(cluster, job)
    info = cluster.wait_job(job, timeout_s=60)
    log = job_log(run, job)
    good = [n for n in cluster.nodes if n != bad][0]
    assert info["JobState"] == "COMPLETED" and info["NodeList"] == good, (info, log)
    assert f"{bad}: task 0: Killed); excluding {bad}; requeueing" in log
    assert f"requeued job excludes node(s) {bad}" in log and f"fake trainer done on {good}" in log


def test_a_silent_exit_2_gets_the_recipe_error_from_the_batch_shell(cluster, tmp_path):
    """Only rank 0 prints a recipe error; when another rank's exit 2 gets rank 0 killed first the
    job log would not say why: the shell then checks the recipe itself and prints the one line."""
    run = tmp_path / "silent"
    fake = fake_trainer(tmp_path, f'case " $* " in *" --print-config "*) exec {sys.executable} "$@" ;; esac\n'
                                  'exit 2  # a rank that found the error and says nothing\n')
    env = {"FLIP_RECIPE": "recipes/test/tiny.yaml", "FLIP_OUT": str(run), "FLIP_PYTHON": str(fake),
           "FLIP_OVERRIDES": "train.no_such_key=1"}
    job = cluster.sbatch(["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--gpus-per-node=0", "--time=5",
                          f"--output={tmp_path}/silent-slurm-%j.out", TEMPLATE], env_extra=env, cwd=ROOT)
    info = cluster.wait_job(job, timeout_s=120)
    log = job_log(run, job)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0" and info["Restarts"] == "0", (info, log)
    assert "a task exited 2 before rank 0 said why; checking the recipe here:" in log
    assert log.count("unknown key 'train.no_such_key'") == 1 and log.count("not requeueing") == 1, log
