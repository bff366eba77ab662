"""Writing files so that a reader (or a kill) never sees half of one."""
from __future__ import annotations

import errno
import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write to PATH.tmp, then rename over PATH: readers see the old file or the new one.

    durable=True also fsyncs before the rename, for files whose order on disk matters after a
    crash (a checkpoint's meta.json before the `latest` pointer that names it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# Exit status of a run that cannot write its results (disk full, quota, read-only or unwritable
# run directory): EX_IOERR. slurm/common.sh does not requeue it: a requeued job would hit the
# same wall, after waiting in the queue and re-running start-up.
STORAGE_EXIT_CODE = 74


class StorageError(Exception):
    """The run directory's storage refuses a write; str() is the one line the CLI prints."""


STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                   errno.EROFS: "read-only filesystem", errno.EACCES: "permission denied",
                   errno.EPERM: "operation not permitted"}


def storage_problem(exc: BaseException, path: str | os.PathLike) -> str | None:
    """What about `path`'s storage made `exc` happen, or None if it is not a storage failure.

    torch.save reports a full disk as RuntimeError("... file write failed") and DCP wraps
    writer errors in its own exception, so the errno is looked for along the exception chain,
    and failing that the filesystem itself is asked (no free blocks, or not writable)."""
    return _errno_problem(exc, set()) or filesystem_problem(path)


def _errno_problem(exc: BaseException | None, seen: set) -> str | None:
    """A storage errno anywhere in exc's chain (causes, contexts, and the per-rank failures a DCP
    CheckpointException carries: {rank: (exception, traceback)})."""
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return STORAGE_ERRNOS[exc.errno]
        failures = getattr(exc, "failures", None)
        for inner in failures.values() if isinstance(failures, dict) else ():
            found = _errno_problem(inner[0] if isinstance(inner, tuple) else inner, seen)
            if found:
                return found
        exc = exc.__cause__ or exc.__context__
    return None


def filesystem_problem(path: str | os.PathLike) -> str | None:
    """'no space left on the device' / 'read-only filesystem' for the filesystem holding `path`
    (its nearest existing ancestor), else None."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only filesystem"
    if st.f_bavail * st.f_frsize < 1 << 20 and st.f_blocks:
        return "no space left on the device"
    return None


def probe_writable(folder: str | os.PathLike, what: str) -> None:
    """Create, write, fsync and remove a small file in `folder` (made if missing); a failure is
    one StorageError line. Run at set-up, so an unwritable checkpoints/ ends the run in seconds,
    not at the first save hours later."""
    folder = Path(folder)
    probe = folder / f".write_probe_{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        why = STORAGE_ERRNOS.get(e.errno, e.strerror or str(e))
        raise StorageError(f"{what} {folder} is not writable ({why})") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
