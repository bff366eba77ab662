"""The training loop. It names no backend: wrapping, precision, backward, step and checkpoint
I/O all go through `Backend` (flip_scale/distributed/backends)."""
from __future__ import annotations

import datetime
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import checkpoint as ckpt_lib
from ..config import Config, validate, write_config
from ..data.loader import build_train_loader
from ..data.tokenizer import load_tokenizer
from ..distributed.backends import get_backend_class
from ..distributed.env import DistEnv, cleanup, detect_env, init_distributed, select_device
from ..loss import clip_loss
from ..fileio import write_text_atomic
from ..metrics import MetricsWriter, device_peak_flops, max_memory_gb, read_jsonl
from ..models import masking_noise, train_flops_per_sample
from ..models.masking import TEXT_STREAM
from .build import adapt_weights, build_model_from_config, snapshot_tokenizer
from .optim import lr_at
from .preemption import PREEMPTED_EXIT_CODE, STOP_SIGNALS, Preempted, StopFlag

# Test-only fault injection (documented in README "Fault tolerance"): comma-separated steps
# whose loss is replaced by NaN, and a pause inside checkpoint saves so a test can kill there.
NAN_STEPS_ENV = "FLIP_SCALE_TEST_NAN_STEPS"
SAVE_DELAY_ENV = "FLIP_SCALE_TEST_SAVE_DELAY_S"
# Steps after which the collective timeout drops from parallel.init_timeout_s to timeout_s.
WARM_STEPS = 2


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Trainer:
    def __init__(self, cfg: Config, denv: DistEnv | None = None, log=None):
        self.cfg = cfg
        self.denv = denv or detect_env()
        validate(cfg, self.denv.world_size)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.run_dir = Path(cfg.train.out_dir)
        self.ckpt_root = self.run_dir / "checkpoints"

    def _say(self, msg: str) -> None:
        if self.denv.is_main:
            self.log(msg)

    def setup(self) -> None:
        cfg, denv = self.cfg, self.denv
        self.device = select_device(cfg.train.device, denv)
        init_distributed(denv, self.device, timeout_s=cfg.parallel.init_timeout_s)
        if self.device.type == "cuda":
            # TF32 matmuls on Ampere+ (FLIP trained in fp32 on TPUs; TF32 keeps fp32 range).
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.train.seed)  # identical init on every rank
        if denv.is_main:
            write_config(cfg, self.run_dir)
            snapshot_tokenizer(cfg, self.run_dir)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.text_length)
        # The loader comes before the model: a recipe pointing at no shards fails in seconds.
        try:
            self.loader = build_train_loader(cfg.data, text_length=cfg.model.text_length,
                                             global_batch_size=cfg.train.global_batch_size, seed=cfg.train.seed,
                                             rank=denv.rank, world_size=denv.world_size, tokenizer=self.tokenizer)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("data.") else f"data.train_shards: {msg}") from None
        model = build_model_from_config(cfg, self.tokenizer.vocab_size)
        self.num_patches = model.visual.num_patches
        self.backend = get_backend_class(cfg.parallel.backend)(cfg, denv, self.device)
        self.backend.parallelize(model)
        self.step, self.samples_seen = 0, 0
        self.prior_wall_s = 0.0  # wall time of the earlier segments of a resumed run
        self.segment_start = time.time()
        if not self._resume_newest_readable() and cfg.train.init_from:
            src = ckpt_lib.resolve_checkpoint(cfg.train.init_from)
            self._say(f"initialising weights from {src} (fresh optimizer and schedule)")
            weights = adapt_weights(ckpt_lib.read_full_weights(src), model)
            self.backend.load_model_weights(weights)
        self.metrics = MetricsWriter(self.run_dir, enabled=denv.is_main)
        self.peak_flops = device_peak_flops(self.device, cfg.parallel.precision)
        self.model_flops = train_flops_per_sample(self.backend.model.size, cfg.model.mask_ratio, cfg.model.text_length,
                                                  text_mask_ratio=cfg.model.text_mask_ratio)

    def _resume_newest_readable(self) -> bool:
        """Resume from the newest complete checkpoint whose files load on every rank. One that
        fails to load (truncated payload after a node crash) is reported, set aside and the next
        older one is tried; all ranks agree on the outcome, so they resume from the same step."""
        tried = False
        for ckpt in ckpt_lib.complete_checkpoints(self.ckpt_root, log=self._say):
            tried = True
            try:
                self._resume(ckpt)
                error = ""
            except ResumeMismatch:
                raise  # a recipe / world-size mismatch: the user's call, not a damaged file
            except Exception as e:  # noqa: BLE001 - torch.load, DCP and DeepSpeed raise many types
                if dist.is_initialized() and _looks_like_collective_failure(e):
                    raise
                error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if not self._on_any_rank(torch.tensor([float(bool(error))], device=self.device))[0]:
                return True
            self._say(f"checkpoint {ckpt} cannot be loaded ({error or 'on another rank'}); "
                      f"setting it aside and falling back to an earlier one")
            if self.denv.is_main:
                ckpt_lib.set_aside(ckpt)
            if dist.is_initialized():
                dist.barrier()
        if tried:
            raise ValueError(f"{self.ckpt_root}: no checkpoint could be loaded (all set aside as unreadable_*); "
                             f"move them away to start the run afresh")
        return False

    def _resume(self, ckpt: Path) -> None:
        meta = ckpt_lib.read_meta(ckpt)
        old_world = int(meta.get("world_size", self.denv.world_size))
        if old_world != self.denv.world_size and not self.backend.supports_resharding:
            raise ResumeMismatch(f"{ckpt}: saved by {old_world} ranks with parallel.backend={self.cfg.parallel.backend}, "
                             f"which resumes only at the same world size (now {self.denv.world_size}); "
                             f"relaunch with {old_world} ranks")
        if meta.get("backend", self.cfg.parallel.backend) != self.cfg.parallel.backend:
            raise ResumeMismatch(f"{ckpt}: saved by parallel.backend={meta.get('backend')}, this run uses "
                             f"{self.cfg.parallel.backend}; use train.init_from to start from its weights")
        self.backend.load(ckpt)
        self.step, self.samples_seen = int(meta["step"]), int(meta["samples_seen"])
        self.prior_wall_s = float(meta.get("wall_time_s", 0.0))
        # Elastic resume reads a surviving rank's state: the synthetic position is global and the
        # loader re-deals shard streams itself; RNG streams are per rank and cannot carry over.
        state = ckpt_lib.load_rank_state(ckpt, min(self.denv.rank, old_world - 1))
        self.loader.load_state_dict(state["loader"])
        if old_world == self.denv.world_size:
            _set_rng_state(state["rng"])
        else:
            self._say(f"world size changed {old_world} -> {self.denv.world_size}: same global batch, "
                      f"data position carried over, per-rank RNG reseeded")
        self._truncate_metrics(self.step)
        self._say(f"resumed from {ckpt} at step {self.step} ({self.samples_seen} samples seen)")

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric records past the checkpoint: those steps are about to be recomputed."""
        path = self.run_dir / "metrics.jsonl"
        if not self.denv.is_main or not path.is_file():
            return
        keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]  # drops a line cut by the kill
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    def save(self) -> Path:
        meta = {"samples_seen": self.samples_seen, "world_size": self.denv.world_size,
                "wall_time_s": self.prior_wall_s + time.time() - self.segment_start,
                "backend": self.cfg.parallel.backend, "global_batch_size": self.cfg.train.global_batch_size}
        rank_state = {"loader": self.loader.state_dict(), "rng": _rng_state()}
        delay = float(os.environ.get(SAVE_DELAY_ENV, "0") or 0)
        return ckpt_lib.save_checkpoint(self.ckpt_root, self.step, self.backend, rank_state, meta,
                                        self.cfg.checkpoint.keep, test_delay_s=delay)

    def _reduce_mean(self, value: torch.Tensor) -> float:
        value = value.detach().float().clone()
        if dist.is_initialized():
            dist.all_reduce(value)
            value /= dist.get_world_size()
        return float(value)

    def _agree(self, nonfinite: torch.Tensor, stop: bool) -> tuple[bool, bool]:
        """One small all-reduce per step so every rank takes the same skip / stop decision.

        This is the loop's only per-step host sync (metrics wait for log steps). It sits after the
        forward and before backward so a skipped step never enters backward: DeepSpeed and DDP
        reduce gradients inside backward, and a half-taken step would leave their buffers dirty.
        Its cost is the launch latency of the first backward kernels, small next to a FLIP step."""
        flags = torch.stack([nonfinite.float(), torch.tensor(float(stop), device=nonfinite.device)])
        skip, stop = self._on_any_rank(flags)
        return skip, stop

    @staticmethod
    def _on_any_rank(flags: torch.Tensor) -> list[bool]:
        """Which of these 0/1 flags is set on at least one rank (one all-reduce, one host sync)."""
        if dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [f > 0 for f in flags.tolist()]

    def evaluate(self) -> dict:
        """Zero-shot on eval.zeroshot (every rank takes a slice); returns `eval/<dataset>/<metric>` keys."""
        from ..eval import evaluate_zeroshot

        cfg = self.cfg
        # backend.model: the (possibly FSDP-sharded) FlipModel, whose encode_* methods are callable.
        result = evaluate_zeroshot(self.backend.model, self.tokenizer, cfg.data.image_size, cfg.eval.zeroshot,
                                   self.device, rank=self.denv.rank, world_size=self.denv.world_size,
                                   image_mask_ratio=cfg.model.eval_mask_ratio, templates=cfg.eval.templates)
        name = result.get("dataset", "zeroshot")
        self._say(f"eval {name} at step {self.step}: acc1 {result.get('acc1', float('nan')):.4f} "
                  f"acc5 {result.get('acc5', float('nan')):.4f}")
        self.evals[name] = {**result, "step": self.step, "samples_seen": self.samples_seen}
        # Keys for this step's metrics record, so accuracy-vs-samples curves come from metrics.jsonl.
        return {f"eval/{name}/{k}": v for k, v in result.items() if isinstance(v, (int, float))}

    def train(self) -> dict:
        cfg, t = self.cfg, self.cfg.train
        total_steps = cfg.total_steps
        G = t.global_batch_size
        peak_lr = cfg.peak_lr
        model = self.backend.module
        model.train()
        nan_steps = {int(x) for x in os.environ.get(NAN_STEPS_ENV, "").split(",") if x.strip()}
        stop_flag = StopFlag().install()
        start_wall = self.segment_start = time.time()
        start_step = self.step
        window_start, data_time = time.time(), 0.0
        loss_sum = torch.zeros((), device=self.device)
        loss_count = 0
        nonfinite_steps = nonfinite_in_a_row = 0
        last_loss = float("nan")
        first_logged_loss = None
        it = iter(self.loader)
        self.evals = {}
        self._say(f"training {cfg.model.name} ({cfg.parallel.backend}, {self.denv.world_size} process(es), "
                  f"{self.device.type}) for {total_steps} steps of {G} samples, mask {cfg.model.mask_ratio}")
        try:
            while self.step < total_steps:
                t_data = time.time()
                batch = next(it)
                data_time += time.time() - t_data
                images = batch["images"].to(self.device, non_blocking=True)
                tokens = batch["tokens"].to(self.device, non_blocking=True)
                noise = text_noise = None
                if cfg.model.mask_ratio > 0:
                    # Masks depend on (seed, global sample index) only: same masks at any world size.
                    noise = masking_noise(t.seed, batch["index"], self.num_patches, self.device)
                if cfg.model.text_mask_ratio > 0:  # Table 1c's ablation, its own noise stream
                    text_noise = masking_noise(t.seed, batch["index"], cfg.model.text_length - 1, self.device,
                                               stream=TEXT_STREAM)
                with self.backend.autocast():
                    out = model(images, tokens, noise, text_noise=text_noise)
                loss = clip_loss(*out[:3])
                if len(out) > 3:  # auxiliary loss of an ablation head (pixel reconstruction)
                    loss = loss + out[3].float()
                if self.step + 1 in nan_steps:
                    loss = loss * float("nan")
                # A non-finite loss on any rank skips the update everywhere (the batch is consumed
                # and counted); a stop request is honoured at this same step on every rank.
                skip, stop = self._agree(~torch.isfinite(loss.detach()), stop_flag.requested)
                lr = lr_at(self.samples_seen, peak_lr, t.warmup_samples, t.samples)
                if skip:
                    nonfinite_steps += 1
                    nonfinite_in_a_row += 1
                    self.backend.zero_grad()
                    self._say(f"step {self.step + 1}: non-finite loss on some rank; update skipped "
                              f"({nonfinite_steps} so far)")
                    if nonfinite_in_a_row >= t.max_nonfinite_steps:
                        # Diverged, not a bad batch: stop WITHOUT saving, so `latest` keeps
                        # naming the last checkpoint written before the trouble began.
                        self.metrics.close()
                        last = ckpt_lib.find_latest(self.ckpt_root, log=lambda _: None)
                        raise NonFiniteLoss(
                            f"train.max_nonfinite_steps: {nonfinite_in_a_row} non-finite losses in a row "
                            f"(steps {self.step + 2 - nonfinite_in_a_row}-{self.step + 1}); stopping. The last "
                            f"good checkpoint is {last if last is not None else 'none (no checkpoint yet)'}")
                else:
                    nonfinite_in_a_row = 0
                    self.backend.backward(loss)
                    grad_norm = self.backend.step(lr)
                    self.backend.clamp_logit_scale()
                    loss_sum += loss.detach()
                    loss_count += 1
                self.step += 1
                self.samples_seen += G
                if self.step == start_step + WARM_STEPS and dist.is_initialized():
                    # Start-up (compile, loading, first allocations) is over: from now on a dead
                    # or hung peer should end the job in timeout_s, not after the long init timeout.
                    set_timeout = getattr(dist, "set_timeout", None)  # public from torch 2.14 on
                    if set_timeout is None:
                        from torch.distributed.distributed_c10d import _set_pg_timeout as set_timeout
                    set_timeout(datetime.timedelta(seconds=cfg.parallel.timeout_s))
                last_step = self.step == total_steps
                do_eval = bool(cfg.eval.zeroshot) and (
                    bool(cfg.eval.every_steps and self.step % cfg.eval.every_steps == 0) or last_step)
                window_end = time.time()  # evaluation time stays out of the training throughput
                eval_fields = self.evaluate() if do_eval else {}
                if eval_fields and not loss_count:  # every step of this window was skipped
                    self.metrics.log({"step": self.step, "samples_seen": self.samples_seen, **eval_fields})
                if (self.step % t.log_every_steps == 0 or last_step or do_eval) and loss_count:
                    elapsed = max(window_end - window_start, 1e-9)
                    mean_loss = self._reduce_mean(loss_sum / loss_count)
                    last_loss = mean_loss
                    first_logged_loss = mean_loss if first_logged_loss is None else first_logged_loss
                    sps = loss_count * G / elapsed
                    record = {
                        "step": self.step, "samples_seen": self.samples_seen, "loss": mean_loss, "lr": lr,
                        "logit_scale": self.backend.logit_scale(),
                        "grad_norm": float(grad_norm), "samples_per_sec": sps,
                        "samples_per_sec_per_device": sps / self.denv.world_size,
                        "data_wait_frac": min(data_time / elapsed, 1.0), "max_memory_gb": max_memory_gb(self.device),
                        "skipped/nonfinite_loss_steps": nonfinite_steps,
                    }
                    if self.peak_flops:
                        record["mfu"] = self.model_flops * sps / (self.peak_flops * self.denv.world_size)
                    for key, value in self.loader.counters().items():
                        record[f"skipped/{key}"] = value
                    record.update(eval_fields)
                    self.metrics.log(record)
                    done = self.step - start_step
                    eta = (time.time() - start_wall) / max(done, 1) * (total_steps - self.step)
                    self._say(f"step {self.step}/{total_steps}  samples {self.samples_seen}/{t.samples}  "
                              f"loss {mean_loss:.4f}  lr {lr:.2e}  {sps:.1f} samples/s  ETA {_fmt_time(eta)}")
                    loss_sum.zero_()
                    loss_count, data_time, window_start = 0, 0.0, time.time()
                every = cfg.checkpoint.every_steps
                if (every and self.step % every == 0) or last_step or stop:
                    self.save()
                if stop and not last_step:
                    self._say(f"stop requested (signal {stop_flag.signum or 'on another rank'}): checkpoint at "
                              f"step {self.step} written; exiting to be requeued")
                    self.metrics.close()
                    raise Preempted(self.step)
        except RuntimeError as e:
            if not isinstance(e, NonFiniteLoss) and dist.is_initialized() and _looks_like_collective_failure(e):
                raise RuntimeError(f"rank {self.denv.rank}: a collective failed at step {self.step + 1} "
                                   f"(a peer died or hung; timeout {cfg.parallel.timeout_s:.0f}s): "
                                   f"{str(e).splitlines()[0]}") from e
            raise
        except Preempted:
            # The checkpoint is written. srun --kill-on-bad-exit may now SIGTERM a slower rank in
            # its clean-up: that rank must still report "preempted", not die with 143.
            stop_flag.uninstall()
            for sig in STOP_SIGNALS:
                signal.signal(sig, lambda *_: os._exit(PREEMPTED_EXIT_CODE))
            raise
        finally:
            stop_flag.uninstall()
        wall = time.time() - start_wall
        summary = {
            # wall_time_s adds up every segment of a resumed run (up to each one's last checkpoint);
            # samples_per_sec is this segment's rate.
            "samples_seen": self.samples_seen, "steps": self.step, "wall_time_s": self.prior_wall_s + wall,
            "segment_wall_time_s": wall, "resumed_at_step": start_step,
            "samples_per_sec": (self.step - start_step) * G / max(wall, 1e-9), "final_loss": last_loss,
            "first_logged_loss": first_logged_loss, "world_size": self.denv.world_size,
            "backend": cfg.parallel.backend, "model": cfg.model.name, "mask_ratio": cfg.model.mask_ratio,
            "global_batch_size": G, "nonfinite_loss_steps": nonfinite_steps,
            "skipped": dict(self.loader.counters()), "evals": self.evals,
        }
        if self.denv.is_main:
            for name, result in self.evals.items():
                (self.run_dir / "eval").mkdir(exist_ok=True)
                write_text_atomic(self.run_dir / "eval" / f"{name}.json", json.dumps(result, indent=1))
            write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=1))
        self.metrics.close()
        return summary


class ResumeMismatch(ValueError):
    """The run directory's checkpoint was written by another setup (backend, world size)."""


class NonFiniteLoss(RuntimeError):
    """The loss stayed non-finite for train.max_nonfinite_steps steps in a row."""


def _looks_like_collective_failure(e: Exception) -> bool:
    text = str(e).lower()
    return any(k in text for k in ("gloo", "nccl", "timed out", "timeout", "connection", "peer", "socket"))


def run_training(cfg: Config) -> dict:
    trainer = Trainer(cfg)
    finished = False
    try:
        trainer.setup()
        summary = trainer.train()
        finished = True
        return summary
    finally:
        cleanup(synchronize=finished)
