"""TrainState: everything besides the model and optimizer that a resumed run needs, saved and
restored as one thing (lingua's TrainState, torchtitan's Stateful train_state).

Global fields (step, samples, wall time) go to the checkpoint's meta.json; per-rank fields (this
rank's loader streams, RNG) to its train_state_rank<N>.pt.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Where a run stands. `loader` is the object whose state_dict() is the data position."""

    loader: object = None
    step: int = 0
    samples_seen: int = 0
    prior_wall_s: float = 0.0  # wall time of the earlier segments of a resumed run
    segment_start: float = field(default_factory=time.time)
    resumed_at_step: int = 0

    @property
    def wall_time_s(self) -> float:
        return self.prior_wall_s + time.time() - self.segment_start

    def advance(self, global_batch_size: int) -> None:
        self.step += 1
        self.samples_seen += global_batch_size

    # -- checkpoint I/O ---------------------------------------------------------------------
    def global_state(self) -> dict:
        """Identical on every rank: goes to meta.json."""
        return {"step": self.step, "samples_seen": self.samples_seen, "wall_time_s": self.wall_time_s}

    def rank_state(self) -> dict:
        """This rank's own part: its loader streams' positions and RNG."""
        return {"loader": self.loader.state_dict(), "rng": rng_state()}

    def load(self, meta: dict, rank_state: dict, same_world_size: bool) -> None:
        """Restore from a checkpoint's meta and a rank's saved state. With another world size
        the RNG (per rank) cannot carry over; the data position can (the loader re-deals)."""
        self.step, self.samples_seen = int(meta["step"]), int(meta["samples_seen"])
        self.prior_wall_s = float(meta.get("wall_time_s", 0.0))
        self.segment_start = time.time()
        self.resumed_at_step = self.step
        self.loader.load_state_dict(rank_state["loader"])
        if same_world_size:
            set_rng_state(rank_state["rng"])

    def start_segment(self) -> None:
        """Wall time of this segment counts from here (after set-up and resume)."""
        self.segment_start = time.time()
        self.resumed_at_step = self.step
