"""Garbage collection under control: no automatic collections inside the training loop.

CPython's cyclic GC runs when allocation counters cross a threshold, i.e. at a moment that differs
per rank. A full collection of a training process (millions of objects: modules, tensors, loader
state) takes tens to hundreds of milliseconds, and in a synchronous data-parallel step every rank
waits for the slowest: at 512 ranks some rank is collecting in almost every step. With GcControl
automatic collection is off and every rank collects at the same step (every `every_steps`), so the
pause is paid once, by all ranks together, instead of by a different rank each step.

    gcc = GcControl(cfg.train.gc_every_steps).start()   # after setup: freezes what setup built
    for step ...:
        ...train step...
        gcc.step(step)
    gcc.stop()
"""
from __future__ import annotations

import gc
import time


class GcControl:
    def __init__(self, every_steps: int, generation: int = 1, full_every: int = 20, freeze: bool = True):
        """every_steps <= 0 leaves Python's automatic GC alone. generation: what the periodic
        collection scans (1 = young objects, cheap); every `full_every`-th one is a full (gen 2)
        collection, so cycles that became garbage after being promoted are still freed.
        freeze: move everything alive at start() (model, optimizer, loader) out of the GC's view."""
        self.every_steps = int(every_steps)
        self.generation = int(generation)
        self.full_every = int(full_every)
        self.freeze = freeze
        self.enabled = self.every_steps > 0
        self.collections = 0
        self.collect_s = 0.0           # total time spent in the periodic collections
        self._was_enabled = None

    def start(self) -> "GcControl":
        if self.enabled and self._was_enabled is None:
            self._was_enabled = gc.isenabled()
            gc.collect()
            if self.freeze:
                gc.freeze()
            gc.disable()
        return self

    def step(self, step: int) -> float:
        """Call once per completed step (same step numbers on every rank). Returns seconds spent."""
        if not self.enabled or step % self.every_steps:
            return 0.0
        t0 = time.perf_counter()
        self.collections += 1
        full = self.full_every > 0 and self.collections % self.full_every == 0
        gc.collect(2 if full else self.generation)
        dt = time.perf_counter() - t0
        self.collect_s += dt
        return dt

    def stop(self) -> None:
        """Back to Python's defaults (tests, evaluation after training, library use)."""
        if self._was_enabled is None:
            return
        if self.freeze:
            gc.unfreeze()
        if self._was_enabled:
            gc.enable()
        self._was_enabled = None
