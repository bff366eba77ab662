"""One training run per run directory: an exclusive flock on RUN/.lock, held for the whole run.

flock (not a pid file) because the kernel releases it when the holder exits or dies, SIGKILL
and node crashes included (the lock server drops it for NFS/Lustre clients that go away), so a
requeued Slurm job gets the directory back without anyone cleaning up, and a live holder is
never mistaken for a dead one. The file names the holder (host, pid, start time) while it is
held; a clean release empties it again, so a run directory's bytes do not depend on who last
looked at it. Network filesystems must be mounted with flock support (Lustre: `-o flock`;
NFSv4 emulates flock with byte-range locks and works across hosts).
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

LOCK = ".lock"


class RunLocked(RuntimeError):
    """Another live process holds the run directory; str() is the one line to print."""


class RunLock:
    """The lock on one run directory; `acquire` raises RunLocked naming the holder."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: a refused start must not erase the holder's line.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(f"{self.path.parent}: run directory is in use by another training run ({holder}); "
                            f"wait for it to end or choose another train.out_dir") from None
        except OSError as e:
            os.close(fd)
            raise RunLocked(f"{self.path}: cannot lock the run directory ({e.strerror}); its filesystem "
                            f"must support flock (Lustre: mount with -o flock)") from None
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        line = f"host={socket.gethostname()} pid={os.getpid()} started={started}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, line, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the holder line and unlock (idempotent). Death releases the lock as well."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a full or read-only disk must not turn a clean exit into a crash
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __del__(self):  # a Trainer dropped without close() (tests, embedding code)
        self.release()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """The holder's line. It writes it right after locking: give it a moment if it is empty."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "holder unknown: its lock file is still empty"
