"""Rank-aware logging: one readable job log out of hundreds of ranks (issue 14 item 5).

- rank 0 prints progress (INFO) to stderr as plain lines, the way the trainer always has;
- every other rank prints only warnings and errors, each prefixed "[rank N host]" so a line in
  a 512-rank job log says where it came from (rank 0's warnings carry the prefix too);
- every rank writes everything, DEBUG included, with time stamps to RUN/logs/rank<N>.log.

    from flip_scale.logs import setup_rank_logging
    log = setup_rank_logging(run_dir, rank, host)      # a logging.Logger named "flip_scale"
    log.info("step 10/200 ...")    # rank 0: stderr + file; others: file only
    log.warning("shard x skipped")  # every rank: stderr "[rank 3 node7] WARNING shard x skipped"
    log.debug("loader state ...")   # file only

Modules log through logging.getLogger(__name__) (children of "flip_scale") and inherit this.
"""
from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

LOGGER = "flip_scale"


class _ConsoleFormatter(logging.Formatter):
    def __init__(self, rank: int, host: str):
        super().__init__()
        self.prefix = f"[rank {rank} {host}]"

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            return f"{self.prefix} {record.levelname} {msg}"
        return msg  # rank 0's progress lines, unchanged


class _StderrHandler(logging.StreamHandler):
    """Writes to the sys.stderr of the moment (pytest's capture, a redirected stream)."""

    def __init__(self):
        super().__init__(sys.stderr)

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def setup_rank_logging(run_dir, rank: int, host: str | None = None, console_level: int | None = None,
                       file_level: int = logging.DEBUG) -> logging.Logger:
    """Configure the "flip_scale" logger for this rank (idempotent: replaces its earlier handlers).
    run_dir None: no per-rank file. console_level default: INFO on rank 0, WARNING elsewhere."""
    host = host or socket.gethostname().split(".")[0]
    log = logging.getLogger(LOGGER)
    for h in list(log.handlers):
        if getattr(h, "_flip_rank_handler", False):
            log.removeHandler(h)
            h.close()
    log.setLevel(logging.DEBUG)
    log.propagate = False  # the root logger (a library's basicConfig) must not print it twice
    console = _StderrHandler()
    console.setLevel(console_level if console_level is not None else (logging.INFO if rank == 0 else logging.WARNING))
    console.setFormatter(_ConsoleFormatter(rank, host))
    console._flip_rank_handler = True
    log.addHandler(console)
    if run_dir is not None:
        path = Path(run_dir) / "logs" / f"rank{rank}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(path, mode="a")
        fh.setLevel(file_level)
        fh.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} {host} %(levelname)s %(name)s: %(message)s"))
        fh._flip_rank_handler = True
        log.addHandler(fh)
    return log


def close_rank_logging() -> None:
    log = logging.getLogger(LOGGER)
    for h in list(log.handlers):
        if getattr(h, "_flip_rank_handler", False):
            log.removeHandler(h)
            h.close()
