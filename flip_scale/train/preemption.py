"""Preemption: SIGTERM / SIGUSR1 ask every rank to finish its step, checkpoint and exit.

Slurm sends the warning signal before the kill (`#SBATCH --signal=B:USR1@120`); the template
forwards it to the job step. Ranks may see the signal at slightly different moments, so the
stop decision is agreed by an all-reduce at each step boundary (trainer) rather than acted on
locally: otherwise one rank would leave a collective the others are still in.
"""
from __future__ import annotations

import os
import signal

# Distinct exit status of a run that saved and stopped on request (EX_TEMPFAIL: "try again").
# slurm/*.sh requeue the job when srun returns it.
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised after the checkpoint is written; the CLI turns it into PREEMPTED_EXIT_CODE."""


class StopFlag:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. an embedding application): no handler
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            # A second signal: the run is stuck somewhere a step end never comes (e.g. waiting
            # on data). Die the default way rather than ignore the user or the scheduler.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def uninstall(self) -> None:
        """Restore the previous handlers (idempotent)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
