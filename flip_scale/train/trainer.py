"""The training loop. It names no backend and no experiment: wrapping, precision, backward,
step and checkpoint I/O go through `Backend` (distributed/backends), the step's maths through
`TrainStep` (step.py), records and agreed decisions through `MetricsLogger`, checkpoints through
`Checkpointer`, and where the run stands is one `TrainState`.

Host syncs of a run (everything else stays queued on the device):
- sync steps (log steps, checkpoint and eval steps, the last step): one all-gather of a small
  vector per rank (MetricsLogger.sync) and the log record's reads;
- checkpoint saves: the copy of the state to host memory (asynchronous saves write afterwards);
- DeepSpeed only: a non-finite-loss agreement per step before backward (its engine cannot skip
  an update on the device);
- the data loader's hand-over of each batch (host memory; copied to the device non_blocking);
- data.decode=device only: torchvision's decode_jpeg on CUDA may wait for its own decode before
  returning (nvJPEG's host phase; the count on a GPU is open until a device is lent).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from logging.handlers import MemoryHandler

import torch
import torch.distributed as dist

from ..checkpoint import (RUN_CONFIG, Checkpointer, ResumeMismatch, find_latest, read_full_weights,
                          resolve_checkpoint, step_name)
from ..config import Config, ConfigError, read_run_config, validate, write_config
from ..config.fingerprint import run_fingerprint
from ..data.finite import DataExhausted, check_known_sample_count
from ..preflight import init_from_vocab_mismatch
from ..data.loader import build_train_loader
from ..data.tokenizer import load_tokenizer
from ..distributed.backends import get_backend_class
from ..distributed.collectives import any_rank, broadcast_object
from ..distributed.env import DistEnv, cleanup, detect_env, init_distributed, select_device, set_collective_timeout
from ..distributed.stragglers import StragglerMonitor
from ..fileio import StorageError, probe_writable, write_text_atomic
from ..host_memory import apply_host_malloc
from ..logs import close_rank_logging, setup_rank_logging
from ..metrics import MetricsWriter, device_peak_flops, max_memory_gb, read_jsonl
from ..models import train_flops_per_sample
from ..run_dir import RunDir
from ..run_lock import RunLock, RunLocked
from .build import adapt_weights, build_model_from_config, parallelize_and_build_optimizer, snapshot_tokenizer
from .metrics_logger import MetricsLogger, NonFiniteLoss
from .optim import lr_at
from .preemption import PREEMPTED_EXIT_CODE, STOP_SIGNALS, Preempted, StopFlag
from .state import TrainState
from .gc_control import GcControl
from .step import TrainStep, nan_steps_from_env
from .watchdog import Watchdog

__all__ = ["Trainer", "run_training", "NonFiniteLoss", "ResumeMismatch", "DataExhausted"]

# Steps after which the collective timeout drops from parallel.init_timeout_s to timeout_s.
WARM_STEPS = 2


class Trainer:
    def __init__(self, cfg: Config, denv: DistEnv | None = None, log=None, rank_filtered_log: bool = False):
        """log: where progress lines go (default: stderr, rank 0 only). rank_filtered_log: `log`
        is a rank-aware logger (flip_scale.logs): every rank calls it, its handlers decide."""
        self.cfg = cfg
        self.denv = denv or detect_env()
        validate(cfg, self.denv.world_size)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.rank_filtered_log = rank_filtered_log
        self.run_dir = RunDir(cfg.train.out_dir)
        self.lock = RunLock(self.run_dir.root)
        self.watchdog = None
        # Called once the run directory is this run's (locked, resume decided): run_training
        # opens the per-rank log files there.
        self.on_run_dir_claimed = None

    def _say(self, msg: str) -> None:
        if self.denv.is_main or self.rank_filtered_log:
            self.log(msg)

    # -- set-up -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, denv = self.cfg, self.denv
        self.device = select_device(cfg.train.device, denv)
        # From here on a rank that stops making progress (a hung mount, a stuck worker, a peer
        # that never arrives) dumps its stacks and exits HANG_EXIT_CODE for the job to requeue.
        self.watchdog = Watchdog(self.run_dir.root, denv.rank, cfg.train.hang_timeout_s,
                                 first_step_s=cfg.train.hang_phase_timeout_s).start()
        # Rank 0 locks the run directory before anything is written into it, and before the
        # rendezvous, so a second start alone fails in seconds; the other ranks learn the outcome
        # right after it and leave with rank 0's line instead of waiting in a collective.
        claim_error = self._claim_run_dir() if denv.is_main else None
        init_distributed(denv, self.device, timeout_s=cfg.parallel.init_timeout_s)
        claim_error = broadcast_object(claim_error)
        if claim_error is not None:
            raise claim_error
        if self.device.type == "cuda":
            # TF32 matmuls on Ampere+ (FLIP trained in fp32 on TPUs; TF32 keeps fp32 range).
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.train.seed)  # identical init on every rank
        self.finite_data = (cfg.data.train_shards != "synthetic" and not cfg.data.resampled
                            and cfg.data.epochs is not None)
        if self.finite_data:
            check_known_sample_count(cfg.data.train_shards, cfg.data.epochs, cfg.train.samples)
        self.tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.text_length, cfg.data.text_cls_token)
        # Recorded in config.yaml: a later run starting from this one (init_from) must read its
        # text embeddings with the same word pieces.
        cfg.data.vocab_sha256 = self.tokenizer.vocab_sha256()
        if cfg.train.init_from:
            mismatch = init_from_vocab_mismatch(cfg.train.init_from, cfg.data.vocab_sha256, cfg.data.tokenizer)
            if mismatch:
                raise ConfigError(mismatch)
        # The loader comes before the model: a recipe pointing at no shards fails in seconds.
        try:
            self.loader = build_train_loader(cfg.data, text_length=cfg.model.text_length,
                                             global_batch_size=cfg.train.global_batch_size, seed=cfg.train.seed,
                                             rank=denv.rank, world_size=denv.world_size, tokenizer=self.tokenizer)
        except ValueError as e:
            msg = str(e)
            raise ValueError(msg if msg.startswith("data.") else f"data.train_shards: {msg}") from None
        # After the data checks (a bad recipe's error stays the only line), before the model and
        # optimizer allocate the memory it concerns.
        if apply_host_malloc(cfg.train.host_malloc, self.device):
            self._say("host malloc: freed memory kept for reuse (train.host_malloc)")
        model = build_model_from_config(cfg, self.tokenizer.vocab_size)
        num_patches = model.visual.num_patches
        self.backend = get_backend_class(cfg.parallel.backend)(cfg, denv, self.device)
        parallelize_and_build_optimizer(self.backend, model, cfg)
        self.state = TrainState(loader=self.loader)
        meta = {"world_size": denv.world_size, "backend": cfg.parallel.backend,
                "global_batch_size": cfg.train.global_batch_size,
                RUN_CONFIG: run_fingerprint(cfg)}
        self.checkpointer = Checkpointer(self.run_dir.checkpoints, self.backend, self.state, cfg, meta, log=self._say,
                                         legacy_fingerprint=self._legacy_fingerprint)
        resumed = self.checkpointer.resume(denv.world_size, cfg.parallel.backend, self.backend.supports_resharding,
                                           is_collective_failure=_looks_like_collective_failure)
        # The resume decision is made: only now does this start write into the run directory
        # (a refused resume above leaves every file as it was).
        if denv.is_main:
            write_config(cfg, self.run_dir.root)
            snapshot_tokenizer(cfg, self.run_dir.root)
        if self.on_run_dir_claimed is not None:
            self.on_run_dir_claimed()
        if resumed is not None:
            self._truncate_metrics(self.state.step)
            self._say(f"resumed from {resumed} at step {self.state.step} ({self.state.samples_seen} samples seen)")
        elif cfg.train.init_from:
            src = resolve_checkpoint(cfg.train.init_from)
            self._say(f"initialising weights from {src} (fresh optimizer and schedule)")
            self.backend.load_model_weights(adapt_weights(read_full_weights(src), model))
        local_batch = cfg.train.global_batch_size // denv.world_size
        self.train_step = TrainStep(self.backend, cfg, num_patches, local_batch, denv.rank, self.device,
                                    nan_steps=nan_steps_from_env())
        self.writer = MetricsWriter(self.run_dir.root, enabled=denv.is_main)
        peak = device_peak_flops(self.device, cfg.parallel.precision)
        flops = train_flops_per_sample(self.backend.model.size, cfg.model.mask_ratio, cfg.model.text_length,
                                       text_mask_ratio=cfg.model.text_mask_ratio)
        self.logger = MetricsLogger(self.writer, self.device, denv.world_size, cfg.train.global_batch_size,
                                    cfg.total_steps, cfg.train.samples, cfg.train.max_nonfinite_steps,
                                    cfg.train.log_every_steps, say=self._say, extra_fields=self._log_fields,
                                    mfu_per_sample_per_s=flops / (peak * denv.world_size) if peak else None,
                                    stragglers=StragglerMonitor(cfg.train.straggler_threshold,
                                                                cfg.train.straggler_patience, device=self.device,
                                                                log=self._say))
        self.evals: dict = {}

    def _claim_run_dir(self) -> RunLocked | StorageError | None:
        """Rank 0: lock the run directory and probe that it and checkpoints/ take writes.
        Returns the failure (sent to the other ranks, which raise it too), None when claimed."""
        try:
            self.lock.acquire()
            # The lock file is written by now; the probes add and remove a file of their own.
            probe_writable(self.run_dir.root, "train.out_dir")
            probe_writable(self.run_dir.checkpoints, "checkpoints directory")
        except (RunLocked, StorageError) as e:
            return e
        except OSError as e:  # the lock file itself could not be made
            return StorageError(f"train.out_dir {self.run_dir.root} is not writable ({e.strerror or e})")
        return None

    def _legacy_fingerprint(self) -> dict | None:
        """Run-defining keys from the run's config.yaml, for checkpoints that predate run_config."""
        try:
            return run_fingerprint(read_run_config(self.run_dir.root))
        except Exception:  # noqa: BLE001 - missing, malformed or from an older schema: cannot compare
            return None

    def close(self) -> None:
        """Release the run directory and disarm the watchdog (end of run, error). Idempotent.

        train() stops the watchdog only when it returns: a run left by an exception (a stop
        signal, a refusal) must not have it fire HANG_EXIT_CODE later in a process that lives on
        (an in-process caller, a test session)."""
        if self.watchdog is not None:
            self.watchdog.stop()
        self.lock.release()

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric records past the checkpoint: those steps are about to be recomputed."""
        path = self.run_dir.metrics
        if not self.denv.is_main or not path.is_file():
            return
        keep = [r for r in read_jsonl(path) if r.get("step", 0) <= step]  # drops a line cut by the kill
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in keep))

    def _log_fields(self) -> dict:
        """Fields read only on log steps: memory, the loader's skip counters, MFU."""
        fields = {"max_memory_gb": max_memory_gb(self.device)}
        fields.update({f"skipped/{k}": v for k, v in self.loader.counters().items()})
        return fields

    # -- the loop ---------------------------------------------------------------------------
    def train(self) -> dict:
        cfg, state, G = self.cfg, self.state, self.cfg.train.global_batch_size
        total_steps = cfg.total_steps
        self.backend.module.train()
        stop_flag = StopFlag().install()
        # Automatic GC off in the loop, a collection every gc_every_steps on every rank at once:
        # otherwise each rank pauses at its own moments and the slowest pause gates every step.
        gc_control = GcControl(cfg.train.gc_every_steps).start()
        phase_s = cfg.train.hang_phase_timeout_s
        state.start_segment()
        self.logger.start(state.step)
        it = iter(self.loader)
        self._say(f"training {cfg.model.name} ({cfg.parallel.backend}, {self.denv.world_size} process(es), "
                  f"{self.device.type}) for {total_steps} steps of {G} samples, mask {cfg.model.mask_ratio}")
        try:
            while state.step < total_steps:
                t_data = time.time()
                batch = self._next_batch(it)
                self.logger.add_data_wait(time.time() - t_data)
                lr = lr_at(state.samples_seen, cfg.peak_lr, cfg.train.warmup_samples, cfg.train.samples)
                loss, grad_norm = self.train_step(batch, state.step, lr)
                state.advance(G)
                self.logger.accumulate(state.step, loss, grad_norm)
                gc_control.step(state.step)
                self._maybe_warm_timeouts()
                last = state.step == total_steps
                eval_due = self._eval_due(last)
                if not (last or eval_due or state.step % cfg.train.log_every_steps == 0
                        or self.checkpointer.step_due(state.step)):
                    self.watchdog.beat(state.step)
                    continue
                agreed = self.logger.sync(stop_flag.requested, self.checkpointer.time_due())
                with self.watchdog.phase("evaluation", phase_s):
                    eval_fields = self.evaluate(last) if eval_due else {}
                self.logger.maybe_log(state.step, state.samples_seen, lr, self.backend.logit_scale,
                                      force=last or bool(eval_fields), fields=eval_fields)
                with self.watchdog.phase("checkpoint save", phase_s):
                    self.checkpointer.maybe_save(state.step, force=last or agreed.stop,
                                                 time_due=agreed.checkpoint_time_due)
                self.watchdog.beat(state.step)
                if agreed.stop and not last:
                    self.checkpointer.finalize()
                    self._say(f"stop requested (signal {stop_flag.signum or 'on another rank'}): checkpoint at "
                              f"step {state.step} written; exiting to be requeued")
                    raise Preempted(state.step)
            with self.watchdog.phase("checkpoint write", phase_s):
                self.checkpointer.finalize()
        except DataExhausted as e:
            # Finite data (data.epochs) ended before train.samples: keep what was trained, then
            # one line; a requeue would end the same way.
            if state.step > 0 and self.checkpointer.last_step != state.step:
                self.checkpointer.save(state.step)
            self.checkpointer.finalize()
            saved = (f"checkpoint {self.run_dir.checkpoints / step_name(state.step)} saved" if state.step
                     else "nothing trained, no checkpoint")
            raise DataExhausted(f"{e} at step {state.step} of {total_steps} ({state.samples_seen} of train.samples "
                                f"{cfg.train.samples}); {saved}; raise data.epochs or lower train.samples") from None
        except NonFiniteLoss as e:
            # Diverged, not a bad batch: stop WITHOUT saving, so `latest` keeps naming the last
            # checkpoint written before the trouble began (an asynchronous one is finished first).
            self.checkpointer.finalize()
            last_good = find_latest(self.run_dir.checkpoints, log=lambda _: None)
            raise NonFiniteLoss(f"{e}. The last good checkpoint is "
                                f"{last_good if last_good is not None else 'none (no checkpoint yet)'}") from None
        except RuntimeError as e:
            if dist.is_initialized() and _looks_like_collective_failure(e):
                raise RuntimeError(f"rank {self.denv.rank}: a collective failed at step {state.step + 1} "
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
            gc_control.stop()
            self.writer.close()
        summary = self._write_summary()
        self.watchdog.stop()
        return summary

    def _next_batch(self, it):
        """The next batch. With finite data every rank agrees each step whether some rank's data
        ended (one all-reduce per step, only in exact-epoch mode), so none enters a step's
        collectives alone."""
        if not self.finite_data:
            return next(it)
        batch = next(it, None)
        if any_rank(torch.tensor([float(batch is None)]))[0]:
            raise DataExhausted(f"data.epochs: the data ({self.cfg.data.epochs} epoch(s) of data.train_shards) ran out")
        return batch

    def _eval_due(self, last: bool) -> bool:
        e = self.cfg.eval
        return (bool(e.zeroshot) and (last or bool(e.every_steps and self.state.step % e.every_steps == 0))
                or (last and bool(e.retrieval)))

    def _maybe_warm_timeouts(self) -> None:
        if self.state.step == self.state.resumed_at_step + WARM_STEPS and dist.is_initialized():
            # Start-up (compile, loading, first allocations) is over: from now on a dead or hung
            # peer should end the job in timeout_s, not after the long init timeout. After a
            # barrier, on every group (HSDP's sub-meshes, DeepSpeed's, the checkpoint writer's).
            set_collective_timeout(self.cfg.parallel.timeout_s)

    def evaluate(self, last: bool = False) -> dict:
        """Zero-shot on eval.zeroshot (every rank takes a slice), and at the last step retrieval on
        each eval.retrieval set; returns `eval/<dataset>/<metric>` keys."""
        from ..eval import evaluate_retrieval, evaluate_zeroshot

        cfg, step = self.cfg, self.state.step
        results = []
        # backend.model: the (possibly FSDP-sharded) FlipModel, whose encode_* methods are callable.
        if cfg.eval.zeroshot:
            result = evaluate_zeroshot(self.backend.model, self.tokenizer, cfg.data.image_size, cfg.eval.zeroshot,
                                       self.device, rank=self.denv.rank, world_size=self.denv.world_size,
                                       image_mask_ratio=cfg.model.eval_mask_ratio, templates=cfg.eval.templates)
            self._say(f"eval {result.get('dataset', 'zeroshot')} at step {step}: acc1 "
                      f"{result.get('acc1', float('nan')):.4f} acc5 {result.get('acc5', float('nan')):.4f}")
            results.append(result)
        for path in cfg.eval.retrieval if last else ():
            result = evaluate_retrieval(self.backend.model, self.tokenizer, cfg.data.image_size, path, self.device,
                                        rank=self.denv.rank, world_size=self.denv.world_size,
                                        image_mask_ratio=cfg.model.eval_mask_ratio)
            self._say(f"eval {result['dataset']} at step {step}: image->text R@1 "
                      f"{result['text_retrieval_recall@1']:.4f}, text->image R@1 {result['image_retrieval_recall@1']:.4f}")
            results.append(result)
        self.backend.module.train()
        fields = {}
        for result in results:
            name = result.get("dataset", "zeroshot")
            self.evals[name] = {**result, "step": step, "samples_seen": self.state.samples_seen}
            # Keys for this step's metrics record, so accuracy-vs-samples curves come from metrics.jsonl.
            fields.update({f"eval/{name}/{k}": v for k, v in result.items() if isinstance(v, (int, float))})
        return fields

    def _write_summary(self) -> dict:
        cfg, state, lg = self.cfg, self.state, self.logger
        segment = time.time() - state.segment_start
        summary = {
            # wall_time_s adds up every segment of a resumed run (up to each one's last checkpoint);
            # samples_per_sec is this segment's rate.
            "samples_seen": state.samples_seen, "steps": state.step, "wall_time_s": state.prior_wall_s + segment,
            "segment_wall_time_s": segment, "resumed_at_step": state.resumed_at_step,
            "samples_per_sec": (state.step - state.resumed_at_step) * cfg.train.global_batch_size / max(segment, 1e-9),
            "final_loss": lg.last_loss, "first_logged_loss": lg.first_logged_loss,
            "world_size": self.denv.world_size, "backend": cfg.parallel.backend, "model": cfg.model.name,
            "mask_ratio": cfg.model.mask_ratio, "global_batch_size": cfg.train.global_batch_size,
            "nonfinite_loss_steps": lg.nonfinite_steps, "skipped": dict(self.loader.counters()),
            "evals": self.evals, "checkpoint_blocked_s": self.checkpointer.blocked_s,
        }
        if self.denv.is_main:
            for name, result in self.evals.items():
                self.run_dir.eval.mkdir(exist_ok=True)
                write_text_atomic(self.run_dir.eval_result(name), json.dumps(result, indent=1))
            write_text_atomic(self.run_dir.summary, json.dumps(summary, indent=1))
        return summary


def _looks_like_collective_failure(e: Exception) -> bool:
    text = str(e).lower()
    if "dataloader" in text:  # a loader timeout is the data's problem, not a peer's
        return False
    return any(k in text for k in ("gloo", "nccl", "timed out", "timeout", "connection", "peer", "socket"))


def run_training(cfg: Config) -> dict:
    denv = detect_env()
    # Rank 0 prints progress; other ranks print only warnings and errors, prefixed with rank and
    # host; every rank keeps everything in RUN/logs/rank<N>.log.
    # every rank keeps everything in RUN/logs/rank<N>.log. The file opens once the run directory
    # is this run's (a refused start writes nothing there); lines said before that are held in
    # memory and written first.
    logger = setup_rank_logging(None, denv.rank)
    early = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    logger.addHandler(early)

    def open_log_file():
        setup_rank_logging(cfg.train.out_dir, denv.rank)
        early.setTarget(next(h for h in logger.handlers if isinstance(h, logging.FileHandler)))
        early.flush()
        logger.removeHandler(early)

    trainer = Trainer(cfg, denv, log=logger.info, rank_filtered_log=True)
    trainer.on_run_dir_claimed = open_log_file
    finished = False
    try:
        trainer.setup()
        summary = trainer.train()
        finished = True
        return summary
    finally:
        if trainer.watchdog is not None:
            trainer.watchdog.stop()
        cleanup(synchronize=finished)
        trainer.close()
        logger.removeHandler(early)
        early.setTarget(None)
        early.close()
        close_rank_logging()
