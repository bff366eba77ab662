"""Straggler reports: which rank is slow, on which host, by how much (issue 14 item 3).

In synchronous data parallelism every rank's step takes as long as the slowest rank's, so a bad
GPU, a throttled node or a slow filesystem mount shows up only as lower throughput for everyone.
On log steps each rank passes its OWN time (the part of the step before it waits on peers: data
wait + forward, measured up to the step's first collective) and its data wait; one all_gather of
two floats per rank finds the slowest rank. metrics.jsonl gets its rank, time and the median; a
rank slower than the median by more than `threshold` (fraction) on `patience` log steps in a row
gets one warning line naming its host (and one more only after it recovered and fell back again).
"""
from __future__ import annotations

import socket
import statistics

import torch
import torch.distributed as dist


class StragglerMonitor:
    def __init__(self, threshold: float = 0.2, patience: int = 3, min_excess_s: float = 0.01,
                 device: torch.device | str = "cpu", host: str | None = None, log=None):
        """threshold: fraction over the median that counts as slow; min_excess_s: ignore differences
        below this (timer noise on fast steps); log: callable for the warning line (rank 0 only)."""
        self.threshold = float(threshold)
        self.patience = max(1, int(patience))
        self.min_excess_s = float(min_excess_s)
        self.device = torch.device(device)
        self.host = host or socket.gethostname().split(".")[0]
        self.log = log
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.hosts = [self.host]
        if self.distributed:  # once: host names do not change during a run
            hosts: list = [None] * self.world
            dist.all_gather_object(hosts, self.host)
            self.hosts = [str(h) for h in hosts]
        self.streak: dict[int, int] = {}   # rank -> consecutive slow log steps
        self.warned: set[int] = set()
        self.warnings: list[str] = []

    def report(self, step_time_s: float, data_wait_s: float, step: int | None = None) -> dict:
        """Collective (every rank calls it on the same log steps). Returns metrics fields (same on
        every rank); rank 0 logs the warning, every rank records it in .warnings."""
        mine = torch.tensor([float(step_time_s), float(data_wait_s)], dtype=torch.float64, device=self.device)
        if self.distributed:
            parts = [torch.zeros_like(mine) for _ in range(self.world)]
            dist.all_gather(parts, mine)
            table = torch.stack(parts).cpu().tolist()
        else:
            table = [mine.cpu().tolist()]
        return self.assess([t for t, _ in table], [w for _, w in table], step)

    def assess(self, times: list[float], waits: list[float], step: int | None = None) -> dict:
        """The same report from per-rank values already gathered (the trainer's metrics all-gather
        carries them, so a log step needs no collective of its own). Not collective."""
        median = statistics.median(times)
        slowest = max(range(len(times)), key=lambda r: times[r])
        out = {"straggler/slowest_rank": slowest, "straggler/slowest_host": self.hosts[slowest],
               "straggler/slowest_s": times[slowest],
               "straggler/median_s": median, "straggler/slowest_data_wait_s": waits[slowest],
               "straggler/max_data_wait_s": max(waits)}
        limit = median * (1 + self.threshold)
        for r, t in enumerate(times):
            slow = t > limit and t - median > self.min_excess_s
            self.streak[r] = self.streak.get(r, 0) + 1 if slow else 0
            if not slow:
                self.warned.discard(r)
            elif self.streak[r] >= self.patience and r not in self.warned:
                self.warned.add(r)
                at = f" at step {step}" if step is not None else ""
                msg = (f"straggler: rank {r} on host {self.hosts[r]} slower than the median for "
                       f"{self.streak[r]} log steps in a row{at}: {t:.3f} s vs median {median:.3f} s "
                       f"(+{(t / median - 1) * 100 if median > 0 else float('inf'):.0f}%; data wait "
                       f"{waits[r]:.3f} s)")
                self.warnings.append(msg)
                if self.rank == 0 and self.log is not None:
                    self.log(msg)
        return out
