"""The hang watchdog in real subprocesses: a rank stuck after its second step dumps every thread's
stack to RUN/hangs/rank<N>.txt and exits with HANG_EXIT_CODE; phases get their own budget; a main
thread holding the GIL is caught by faulthandler's C-level backstop."""
import subprocess
import sys
import textwrap
import time

from conftest import ROOT

from flip_scale.train.watchdog import HANG_EXIT_CODE


def run_script(body: str, tmp_path, timeout=60):
    code = textwrap.dedent("""
        import sys, time, threading
        from flip_scale.train.watchdog import Watchdog
        run_dir = sys.argv[1]
    """) + textwrap.dedent(body)
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    return r, time.time() - t0


def test_a_rank_stuck_outside_a_collective_dumps_stacks_and_exits_with_the_hang_code(tmp_path):
    r, took = run_script("""
        def stuck_in_filesystem_call():
            time.sleep(3600)           # stands for a read on a dead mount

        def loader_worker():          # a second thread: its stack must be in the dump too
            time.sleep(3600)

        threading.Thread(target=loader_worker, name="loader", daemon=True).start()
        wd = Watchdog(run_dir, rank=3, timeout_s=1.0, first_step_s=5.0, host="nodeA").start()
        for step in (1, 2):
            time.sleep(0.2)
            wd.beat(step)
        stuck_in_filesystem_call()
        print("not reached")
    """, tmp_path)
    assert r.returncode == HANG_EXIT_CODE, r.stdout + r.stderr
    assert "not reached" not in r.stdout
    assert took < 30, took  # fired about 1 s after the last beat (plus interpreter start-up)
    dump = (tmp_path / "hangs" / "rank3.txt").read_text()
    assert "rank 3 on nodeA" in dump and "last completed step 2" in dump and "'training step'" in dump
    assert "stuck_in_filesystem_call" in dump and "loader_worker" in dump
    # The header names the main thread; its block starts with the innermost frame, the stuck call.
    import re
    main = re.search(r"main\s*# thread, (Thread 0x[0-9a-f]+)", dump).group(1)
    block = dump.split(main + " (most recent call first):\n")[1]
    assert "in stuck_in_filesystem_call" in block.splitlines()[0], block
    lines = [line for line in r.stderr.splitlines() if "hang:" in line]
    assert len(lines) == 1 and lines[0].startswith("[rank 3 nodeA] ERROR hang:"), r.stderr
    assert str(tmp_path / "hangs" / "rank3.txt") in lines[0]


def test_phases_and_the_first_step_have_their_own_budget_and_stop_disarms(tmp_path):
    r, _ = run_script("""
        wd = Watchdog(run_dir, rank=0, timeout_s=0.5, first_step_s=2.0).start()
        time.sleep(1.0)                      # slow first step: within first_step_s
        wd.beat(1)
        with wd.phase("checkpoint", 2.0):
            time.sleep(1.2)                  # longer than timeout_s, within the phase budget
        time.sleep(0.2)                      # the step deadline restarted when the phase ended
        wd.beat(2)
        wd.stop()
        time.sleep(1.5)                      # stopped: no dump, no exit
        print("finished", wd.what)
    """, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "finished training step" in r.stdout
    assert not (tmp_path / "hangs").exists()


def test_a_phase_over_its_budget_is_named_in_the_dump(tmp_path):
    r, _ = run_script("""
        wd = Watchdog(run_dir, rank=1, timeout_s=5.0).start()
        wd.beat(7)
        with wd.phase("eval", 0.5):
            time.sleep(3600)
    """, tmp_path)
    assert r.returncode == HANG_EXIT_CODE, r.stderr
    dump = (tmp_path / "hangs" / "rank1.txt").read_text()
    assert "while in 'eval'" in dump and "last completed step 7" in dump


def test_disabled_with_zero_timeout(tmp_path):
    r, _ = run_script("""
        wd = Watchdog(run_dir, rank=0, timeout_s=0).start()
        time.sleep(0.5)
        wd.beat(1)
        print("alive", wd.enabled)
    """, tmp_path)
    assert r.returncode == 0 and "alive False" in r.stdout, r.stderr


def test_a_main_thread_holding_the_gil_is_caught_by_the_backstop(tmp_path):
    # Catastrophic regex backtracking runs in C with the GIL held: the Python watchdog thread
    # cannot run; faulthandler's C timer (grace_s after the deadline) dumps and exits 1.
    r, took = run_script("""
        import re
        wd = Watchdog(run_dir, rank=0, timeout_s=0.5, grace_s=1.0).start()
        wd.beat(1)
        time.sleep(0.3)  # let the watchdog thread arm the backstop for this deadline
        re.match(r"(a+)+$", "a" * 40 + "b")
    """, tmp_path)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Timeout (" in r.stderr and "File" in r.stderr, r.stderr[-2000:]
    assert took < 30
