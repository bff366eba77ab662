"""What the loop records between log steps, on the device, and the one reduction that turns it
into a metrics record (and into the decisions every rank must take together).

Per step (no host sync): the loss of an updated step is added to a device sum; a skipped step
(non-finite gradient norm, identical on every rank) is counted, and runs of consecutive skips
are tracked, all with tensor ops. On a sync step (a log step, a checkpoint or eval step, the
last step) one all-gather of a small vector per rank gives the mean loss, each rank's data wait
and step time (slowest rank, median), and the flags that must be agreed: a stop request seen by
any rank, a wall-clock checkpoint due on any rank.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch

from ..distributed.collectives import gather_rows


class NonFiniteLoss(RuntimeError):
    """The loss stayed non-finite for train.max_nonfinite_steps steps in a row."""


@dataclass
class Agreed:
    """Decisions all ranks share after a sync step."""

    stop: bool = False
    checkpoint_time_due: bool = False


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MetricsLogger:
    def __init__(self, writer, device: torch.device, world_size: int, global_batch: int, total_steps: int,
                 total_samples: int, max_nonfinite_steps: int, log_every_steps: int, say=print,
                 extra_fields=None, mfu_per_sample_per_s: float | None = None, stragglers=None):
        self.writer, self.device, self.world = writer, device, world_size
        self.G, self.total_steps, self.total_samples = global_batch, total_steps, total_samples
        self.max_nonfinite, self.log_every, self.say = max_nonfinite_steps, log_every_steps, say
        self.extra_fields = extra_fields or (lambda: {})  # fields read on log steps only (counters)
        self.mfu_per_sps = mfu_per_sample_per_s  # model FLOPs per sample / peak FLOP/s of all devices
        self.stragglers = stragglers  # distributed.stragglers.StragglerMonitor, fed from the gathered rows
        z = lambda: torch.zeros((), device=device)  # noqa: E731
        self.loss_sum, self.count, self.skipped_total = z(), z(), z()
        self.run_len, self.run_start = z(), z()
        self.tripped_at = torch.full((), -1.0, device=device)  # first step of the first long run
        self.grad_norm = torch.full((), float("nan"), device=device)
        self.data_s = 0.0
        self.batch_waits: list[float] = []  # this window's per-batch waits on this rank
        self.window_start = self.start_wall = time.time()
        self.start_step = 0
        self.last_loss = float("nan")
        self.first_logged_loss = None
        self.nonfinite_steps = 0

    def start(self, step: int) -> None:
        self.start_step = step
        self.window_start = self.start_wall = time.time()

    def add_data_wait(self, seconds: float) -> None:
        self.data_s += seconds
        self.batch_waits.append(seconds)

    def accumulate(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Device-side bookkeeping of the step just taken (1-based `step`)."""
        skipped = (~torch.isfinite(grad_norm)).float().reshape(())
        ok = 1.0 - skipped
        self.loss_sum += torch.where(ok > 0, loss.float().reshape(()), 0.0)
        self.count += ok
        self.skipped_total += skipped
        self.grad_norm = torch.where(ok > 0, grad_norm.float().reshape(()), self.grad_norm)
        self.run_len = (self.run_len + 1) * skipped
        self.run_start = torch.where(self.run_len == 1, float(step), self.run_start)
        trip = (self.run_len >= self.max_nonfinite) & (self.tripped_at < 0)
        self.tripped_at = torch.where(trip, self.run_start, self.tripped_at)

    def sync(self, stop_requested: bool, checkpoint_time_due: bool) -> Agreed:
        """The sync step's one collective. Raises NonFiniteLoss when a run of skipped steps
        reached max_nonfinite_steps (before anything is saved: `latest` stays good)."""
        if self.device.type == "cuda":
            # This rank's own work of the window is done before it is timed: the slowest rank
            # arrives last (straggler report); the gather below syncs with the host anyway.
            torch.cuda.synchronize(self.device)
        self.window_end = time.time()  # evaluation and saving stay out of the throughput window
        elapsed = max(self.window_end - self.window_start, 1e-9)
        local = torch.stack([self.loss_sum, self.count, self.skipped_total, self.tripped_at,
                             torch.tensor(float(stop_requested), device=self.device),
                             torch.tensor(float(checkpoint_time_due), device=self.device),
                             torch.tensor(self.data_s, device=self.device),
                             torch.tensor(elapsed, device=self.device),
                             torch.tensor(_p99(self.batch_waits), device=self.device)])
        rows = gather_rows(local)  # [world, 9] on the host
        self.rows = rows
        tripped = int(rows[0, 3])
        self.nonfinite_steps = int(rows[0, 2])
        if tripped >= 0:
            raise NonFiniteLoss(
                f"train.max_nonfinite_steps: {self.max_nonfinite} non-finite losses in a row "
                f"(steps {tripped}-{tripped + self.max_nonfinite - 1}); stopping")
        return Agreed(stop=bool(rows[:, 4].max() > 0), checkpoint_time_due=bool(rows[:, 5].max() > 0))

    def maybe_log(self, step: int, samples_seen: int, lr: float, logit_scale, force: bool = False,
                  fields: dict | None = None) -> None:
        """After `sync`: write a record on log steps (or when forced: last step, eval step).
        `logit_scale` is a callable (collective where the parameter is sharded: every rank calls)."""
        fields = fields or {}
        if not (force or step % self.log_every == 0):
            return
        rows = self.rows
        count = float(rows[0, 1])
        if count == 0:  # every step of this window was skipped: only evaluation results, if any
            if fields:
                self.writer.log({"step": step, "samples_seen": samples_seen, **fields})
            self._reset()
            return
        elapsed = float(rows[0, 7])
        mean_loss = float(rows[:, 0].sum()) / (count * self.world)
        self.last_loss = mean_loss
        self.first_logged_loss = mean_loss if self.first_logged_loss is None else self.first_logged_loss
        sps = count * self.G / max(float(rows[:, 7].max()), 1e-9)
        data_wait = rows[:, 6] / rows[:, 7].clamp(min=1e-9)
        record = {
            "step": step, "samples_seen": samples_seen, "loss": mean_loss, "lr": lr,
            "logit_scale": logit_scale(), "grad_norm": float(self.grad_norm), "samples_per_sec": sps,
            "samples_per_sec_per_device": sps / self.world,
            # The slowest rank gates every step: its wait is the one that costs throughput.
            "data_wait_frac": min(float(data_wait.max()), 1.0),
            "data_wait_frac_rank0": min(float(data_wait[0]), 1.0),
            "data_wait_p99_s": float(rows[:, 8].max()),  # the worst rank's p99 wait for one batch
            "skipped/nonfinite_loss_steps": self.nonfinite_steps,
            **self.extra_fields(), **fields,
        }
        if self.mfu_per_sps:
            record["mfu"] = self.mfu_per_sps * sps
        if self.stragglers is not None:
            record.update(self.stragglers.assess(rows[:, 7].tolist(), rows[:, 6].tolist(), step))
        self.writer.log(record)
        done = step - self.start_step
        eta = (time.time() - self.start_wall) / max(done, 1) * (self.total_steps - step)
        self.say(f"step {step}/{self.total_steps}  samples {samples_seen}/{self.total_samples}  "
                 f"loss {mean_loss:.4f}  lr {lr:.2e}  {sps:.1f} samples/s  ETA {_fmt_time(eta)}")
        self._reset()

    def _reset(self) -> None:
        self.loss_sum.zero_()
        self.count.zero_()
        self.data_s = 0.0
        self.batch_waits = []
        self.window_start = time.time()
