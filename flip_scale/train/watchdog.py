"""Hang detection: a per-rank watchdog that dumps every Python stack and exits when no step ends in time.

At 512 GPUs a rank can stop making progress outside any collective (a filesystem call that never
returns, a loader worker stuck on a dead mount): NCCL's timeout never fires because no collective
is in flight, and the job would sit until its time limit. Every rank runs one `Watchdog`:

    wd = Watchdog(run_dir, rank, timeout_s=cfg.train.hang_timeout_s).start()
    for step ...:
        ...train step...
        wd.beat(step)                     # a step completed: the deadline moves to now + timeout_s
        with wd.phase("checkpoint", 1800):  # eval / checkpoint get their own budget
            save()
    wd.stop()

When the deadline passes, the watchdog thread writes the stacks of all threads (faulthandler) to
RUN/hangs/rank<N>.txt, prints one line to stderr and ends the process with os._exit(HANG_EXIT_CODE):
a hung process cannot be trusted to unwind (the main thread is stuck, atexit handlers may block on
the same resource). slurm/common.sh then requeues the job like any other failure.

A main thread stuck in C code that holds the GIL would also stop this Python thread; for that case
faulthandler's own C-level timer (no GIL needed) is armed GRACE_S later as a backstop: it dumps the
stacks to stderr (the job log) and exits with status 1.
"""
from __future__ import annotations

import contextlib
import datetime
import faulthandler
import os
import socket
import sys
import threading
import time
from pathlib import Path

# Exit status of a rank that the watchdog ended (distinct from 75 = preempted and 2 = bad input).
HANG_EXIT_CODE = 76
# How long after the Python deadline the C-level backstop fires (only when the GIL is held).
GRACE_S = 60.0


class Watchdog:
    def __init__(self, run_dir, rank: int, timeout_s: float, exit_code: int = HANG_EXIT_CODE,
                 first_step_s: float | None = None, host: str | None = None, poll_s: float | None = None,
                 backstop: bool = True, grace_s: float = GRACE_S):
        """timeout_s <= 0 disables the watchdog. first_step_s: budget of the first step (start-up,
        compile, first data; default 3 x timeout_s)."""
        self.run_dir = Path(run_dir)
        self.rank = int(rank)
        self.timeout_s = float(timeout_s)
        self.exit_code = int(exit_code)
        self.first_step_s = float(first_step_s) if first_step_s is not None else 3 * self.timeout_s
        self.host = host or socket.gethostname().split(".")[0]
        self.poll_s = poll_s if poll_s is not None else min(5.0, max(self.timeout_s / 20, 0.05))
        self.backstop = backstop
        self.grace_s = float(grace_s)
        self.enabled = self.timeout_s > 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline = float("inf")
        self._armed_for = None           # deadline the faulthandler backstop is armed for
        self._last_beat = time.monotonic()
        self.step: int | None = None
        self.what = "first step"         # what the rank is doing now (named in the dump)

    # ------------------------------------------------------------------ the loop's API
    def start(self) -> "Watchdog":
        if not self.enabled or self._thread is not None:
            return self
        self._set(self.first_step_s, "first step")
        self._thread = threading.Thread(target=self._run, name="flip-watchdog", daemon=True)
        self._thread.start()
        return self

    def beat(self, step: int | None = None) -> None:
        """A step completed: the next one has timeout_s."""
        self.step = step if step is not None else self.step
        self._last_beat = time.monotonic()
        self._set(self.timeout_s, "training step")

    @contextlib.contextmanager
    def phase(self, name: str, budget_s: float):
        """A section allowed budget_s instead of timeout_s (evaluation, checkpoint save/load).
        On leaving it the step deadline restarts from now (the phase is not charged to the step)."""
        before = self.what
        self._set(budget_s, name)
        try:
            yield self
        finally:
            self._set(self.timeout_s, before if before != "first step" else "training step")

    def stop(self) -> None:
        """End the watchdog (normal exit, or before a deliberate long wait)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.backstop and self._armed_for is not None:
            faulthandler.cancel_dump_traceback_later()
            self._armed_for = None

    # ------------------------------------------------------------------ internals
    def _set(self, budget_s: float, what: str) -> None:
        with self._lock:
            self._deadline = time.monotonic() + budget_s if budget_s > 0 else float("inf")
            self.what = what

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                deadline, what = self._deadline, self.what
            now = time.monotonic()
            if now >= deadline:
                self._fire(what, now)
                return
            if self.backstop and deadline != self._armed_for:
                # Re-armed only when the deadline moved since the last poll, not on every beat.
                if deadline == float("inf"):
                    faulthandler.cancel_dump_traceback_later()
                else:
                    faulthandler.dump_traceback_later(deadline - now + self.grace_s, exit=True, file=sys.stderr)
                self._armed_for = deadline
            self._stop.wait(min(self.poll_s, max(deadline - now, 0.01)))

    def dump_path(self) -> Path:
        return self.run_dir / "hangs" / f"rank{self.rank}.txt"

    def _fire(self, what: str, now: float) -> None:
        path = self.dump_path()
        since = now - self._last_beat
        head = (f"rank {self.rank} on {self.host} (pid {os.getpid()}): no progress while in {what!r}; "
                f"last completed step {self.step if self.step is not None else 'none'}, {since:.0f} s ago "
                f"(train.hang_timeout_s {self.timeout_s:.0f}); exiting with status {self.exit_code}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} {head}\n")
                main = threading.main_thread().ident or 0
                f.write(f"# Python stacks of every thread, most recent call first. The training loop is the main\n"
                        f"# thread, Thread 0x{main:016x}: its first lines show where the rank was stuck.\n"
                        f"# 'Current thread' is this watchdog.\n\n")
                f.flush()
                faulthandler.dump_traceback(file=f, all_threads=True)
            where = str(path)
        except OSError as e:  # run dir unwritable: the stacks still reach the job log
            where = f"stderr ({path}: {e})"
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        try:
            sys.stderr.write(f"[rank {self.rank} {self.host}] ERROR hang: {head}; stacks in {where}\n")
            sys.stderr.flush()
        finally:
            os._exit(self.exit_code)
