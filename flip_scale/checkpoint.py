"""Checkpoints: atomic publish, a `latest` pointer, keep-last-k, resume, inference loading.

Layout of train.out_dir/checkpoints/:
    step_00000100/          one complete checkpoint: backend files, train_state_rank*.pt, meta.json
    latest                  text file naming the newest complete checkpoint (written last)
    .tmp_step_00000200/     a save in progress; never read, removed on the next save

A checkpoint is complete when its meta.json exists; meta.json is written after every rank's
files are on disk and before the rename, and `latest` moves only after the rename. So a kill at
any moment, also during an asynchronous write, leaves the previous checkpoint and pointer usable.

`Checkpointer` owns when to save (every_steps, every_minutes, the end, a stop request), how
(synchronously, or asynchronously where the backend supports it), keep-last-k, and resuming with
fallback past an unreadable checkpoint. It talks to the model only through the backend and to the
run's position only through TrainState: it imports nothing from train/.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from .distributed.collectives import any_rank, barrier
from .fileio import StorageError, storage_problem, write_text_atomic
from .safe_load import UnsafeCheckpoint, load_state, save_state

META = "meta.json"
LATEST = "latest"


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(ckpt: Path) -> bool:
    try:
        json.loads((ckpt / META).read_text())
        return True
    except (OSError, ValueError):
        return False


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Published checkpoint folders, oldest first (complete or not)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def complete_checkpoints(ckpt_root: Path, log=print) -> Iterator[Path]:
    """Complete checkpoints, newest first, lazily; an incomplete one is reported when reached.

    Found by scanning rather than by reading `latest`: the pointer always names the newest
    complete folder (it moves last), so the scan agrees with it, and also copes when it is gone."""
    for ckpt in reversed(list_checkpoints(Path(ckpt_root))):
        if is_complete(ckpt):
            yield ckpt
        else:
            log(f"checkpoint {ckpt} is incomplete or unreadable; falling back to an earlier one")


def set_aside(ckpt: Path) -> Path:
    """Move a checkpoint whose files cannot be read out of the way (kept for inspection, never
    resumed from or counted by keep-last-k again): step_N -> unreadable_step_N."""
    target = ckpt.with_name(f"unreadable_{ckpt.name}")
    if target.exists():
        shutil.rmtree(target)
    os.rename(ckpt, target)
    return target


def find_latest(ckpt_root: Path, log=print) -> Path | None:
    """The newest complete checkpoint; an incomplete newer one is reported and passed over."""
    return next(complete_checkpoints(ckpt_root, log), None)


def save_checkpoint(ckpt_root: Path, step: int, backend, rank_state: dict, meta: dict, keep: int,
                    test_delay_s: float = 0.0) -> Path:
    """Collective: every rank calls it. rank_state is this rank's train state (data position, RNG).

    A failure in any phase on any rank is agreed by all ranks (an all-reduce in place of each
    barrier), so none waits in a collective the failed one never reaches; a full or read-only
    disk ends every rank with one StorageError line, this save's .tmp removed, `latest` and the
    previous checkpoint untouched. test_delay_s pauses between writing the files and publishing
    them (fault-injection tests)."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / step_name(step)
    tmp = ckpt_root / f".tmp_{step_name(step)}"

    def prepare():
        if _rank() == 0:
            ckpt_root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)

    def write():
        backend.save(tmp)
        _save_rank_state(tmp, rank_state)
        # meta.json is written durably below; make this rank's payload durable first, so a crash of
        # the machine cannot leave a complete-looking checkpoint over truncated files.
        fsync_own_files(tmp, _rank())
        if test_delay_s:
            time.sleep(test_delay_s)

    def publish_and_prune():
        if _rank() == 0:
            publish(ckpt_root, tmp, final, {**meta, "step": step})
            prune_checkpoints(ckpt_root, keep)

    for phase in (prepare, write, publish_and_prune):
        _agreed(phase, ckpt_root, tmp, step)
    return final


def _agreed(phase, ckpt_root: Path, tmp: Path, step: int) -> None:
    """Run one phase of a save on every rank, then agree whether it failed anywhere and whether
    that failure was the storage's (so every rank exits with the same kind of status)."""
    error, why = None, None
    try:
        phase()
    except Exception as e:  # noqa: BLE001 - torch.save, DCP and DeepSpeed raise many types
        error, why = e, storage_problem(e, ckpt_root)
    failed, storage = any_rank(torch.tensor([float(error is not None), float(why is not None)]))
    if failed:
        raise save_failure(error, why, storage, ckpt_root, tmp, step)


def save_failure(error: BaseException | None, why: str | None, storage_anywhere: bool, ckpt_root: Path,
                 tmp: Path, step: int) -> BaseException:
    """After a failed save: remove this save's own files (rank 0) and name the failure. A storage
    failure (here or on another rank) becomes one StorageError line; anything else is returned
    unchanged (a bug, a dead peer: the job may be requeued)."""
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            (ckpt_root / f"{LATEST}.tmp").unlink(missing_ok=True)
        except OSError:
            pass
    if not storage_anywhere:
        return error if error is not None else RuntimeError(
            f"checkpoint save at step {step} failed on another rank (its error is in its log)")
    latest = ckpt_root / LATEST
    try:
        kept = latest.read_text().strip()
    except OSError:
        kept = "none"
    where = f"{ckpt_root}: {why}" if why else "on another rank: its storage refused the write"
    return StorageError(f"checkpoint save at step {step} failed: {where}; the previous checkpoint ({kept}) is "
                        f"kept and stays the latest; free space or fix permissions, then rerun to resume")


def _save_rank_state(folder: Path, rank_state: dict) -> None:
    # JSON + tensors, never a pickle of objects: it must load with weights_only (safe_load.py).
    save_state(rank_state, folder / f"train_state_rank{_rank()}.pt")


# Which files of a checkpoint folder a rank wrote (so it fsyncs its own, not the whole node's
# page cache as os.sync() did): DCP's __<rank>_*.distcp, DeepSpeed's *zero_pp_rank_<rank>_*,
# our train_state_rank<rank>.pt; rank 0 also owns every file that names no rank
# (.metadata, model_optim.pt, DeepSpeed's mp_rank_00_model_states.pt).
_RANK_FILE = re.compile(r"^__(\d+)_|zero_pp_rank_(\d+)_|train_state_rank(\d+)\.")


def fsync_own_files(folder: Path, rank: int) -> None:
    for path in Path(folder).rglob("*"):
        if not path.is_file():
            continue
        m = _RANK_FILE.search(path.name)
        owner = int(next(g for g in m.groups() if g is not None)) if m else 0
        if owner == rank:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(ckpt_root: Path, tmp: Path, final: Path, meta: dict) -> None:
    """Rank 0, once every rank's files are durable: meta.json, the rename, then `latest`."""
    write_text_atomic(tmp / META, json.dumps(meta, indent=1), durable=True)
    if final.exists():  # re-saving the same step (e.g. final save right after a periodic one)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(ckpt_root)
    write_text_atomic(ckpt_root / LATEST, final.name, durable=True)


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Keep the newest `keep` complete checkpoints; never delete the only complete one."""
    complete = [c for c in list_checkpoints(ckpt_root) if is_complete(c)]
    for old in complete[: max(len(complete) - max(keep, 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)


def prune_stale_tmp(ckpt_root: Path, keep_name: str | None = None) -> None:
    for stale in Path(ckpt_root).glob(".tmp_step_*"):
        if stale.name != keep_name:
            shutil.rmtree(stale, ignore_errors=True)


def load_rank_state(ckpt: Path, rank: int) -> dict | None:
    path = Path(ckpt) / f"train_state_rank{rank}.pt"
    if not path.is_file():
        return None
    return load_state(path)  # weights_only; reads this project's earlier pickled format too


def read_meta(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / META).read_text())


def checkpoint_candidates(path: str | os.PathLike) -> Iterator[Path]:
    """What inference may load, newest first, lazily: one checkpoint folder as given, or every
    complete checkpoint of a run directory / checkpoints folder (loading falls back along them).
    None at all: FileNotFoundError."""
    p = Path(path)
    if (p / META).is_file():
        yield p
        return
    for root in (p / "checkpoints", p):
        found = False
        for ckpt in complete_checkpoints(root, log=lambda m: print(m, file=sys.stderr)) if root.is_dir() else ():
            found = True
            yield ckpt
        if found:
            return
    raise FileNotFoundError(f"{path}: no complete checkpoint found (expected RUN_DIR/checkpoints/step_*/meta.json)")


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run directory, a checkpoints/ folder, or one checkpoint -> one complete checkpoint folder."""
    return next(checkpoint_candidates(path))


def checkpoint_readers(ckpt: Path) -> tuple[str, ...]:
    """Which backend's loader reads this checkpoint, from the files it holds, never from
    meta.json's word alone (an edited meta.json must not pick a loader for files it does not
    describe). A folder holding two formats' files, or files that disagree with meta.json, is
    refused: neither happens to a checkpoint this project wrote."""
    from .distributed.backends import CHECKPOINT_FILES

    ckpt = Path(ckpt)
    found = {fmt: names for fmt, (marker, names) in CHECKPOINT_FILES.items() if (ckpt / marker).exists()}
    files = ", ".join(CHECKPOINT_FILES[f][0] for f in found)
    if not found:
        raise FileNotFoundError(f"{ckpt}: no model files ({', '.join(m for m, _ in CHECKPOINT_FILES.values())})")
    if len(found) > 1:
        raise UnsafeCheckpoint(f"{ckpt}: refusing to load: it holds the files of several checkpoint formats "
                               f"({files}); a flip-scale checkpoint has one")
    fmt, names = next(iter(found.items()))
    claimed = read_meta(ckpt).get("backend")
    if claimed is not None and claimed not in names:
        raise UnsafeCheckpoint(f"{ckpt}: refusing to load: meta.json says backend {claimed!r} but the files "
                               f"({files}) are a {'/'.join(names)} checkpoint")
    return names


def read_full_weights(ckpt: Path) -> dict:
    """Unsharded model weights from any backend's checkpoint, on one process."""
    from .distributed.backends import get_backend_class

    return get_backend_class(checkpoint_readers(ckpt)[0]).read_full_weights(Path(ckpt))


# meta.json's record of the run-defining keys (flip_scale/config/fingerprint.py).
RUN_CONFIG = "run_config"

# How load_state_dict / DCP / DeepSpeed say that saved tensors do not fit the model built now.
_MISFIT = re.compile(r"size mismatch|shape mismatch|missing key|unexpected key|does not match the shape", re.I)


def _shape_mismatch_line(e: BaseException) -> str | None:
    """The line of a load error that says a tensor does not fit (None: some other failure)."""
    for line in str(e).splitlines():
        if _MISFIT.search(line):
            return line.strip()[:300]
    return None


class ResumeMismatch(ValueError):
    """The run directory's checkpoint was written by another setup (backend, world size)."""


# Test-only fault injection: seconds to pause after a save's files are written and before it is
# published, so a test can kill the run there (docs/fault-tolerance.md).
SAVE_DELAY_ENV = "FLIP_SCALE_TEST_SAVE_DELAY_S"


class Checkpointer:
    """When and how a run's checkpoints are written, kept and resumed from.

    Intervals: `every_steps`, and `every_minutes` of wall time (agreed between ranks on log
    steps, where the trainer already reduces its metrics: see `due`), the last step, a stop
    request. Asynchronous saves (backends with `supports_async_save`, i.e. FSDP/DCP): training
    waits only while the state is copied to host memory (pinned on GPUs); the write runs in a
    background thread on a gloo group of its own, each rank fsyncs its own files, and rank 0
    publishes (meta.json, rename, `latest`) and prunes only after every rank's write finished.
    One save is in flight at a time: the next save, or `finalize`, waits for it first.
    """

    def __init__(self, ckpt_root: Path, backend, state, cfg, meta: dict, log=print,
                 legacy_fingerprint=None):
        """meta[RUN_CONFIG]: this recipe's run-defining keys (config/fingerprint.py), recorded in
        every meta.json and compared on resume; legacy_fingerprint: a callable giving the run's
        keys for checkpoints that predate the record (None if unknown)."""
        self.root = Path(ckpt_root)
        self.fingerprint = meta.get(RUN_CONFIG)
        self.legacy_fingerprint = legacy_fingerprint
        self.backend, self.state, self.log = backend, state, log
        c = cfg.checkpoint
        self.every_steps, self.every_minutes, self.keep = c.every_steps, c.every_minutes, c.keep
        self.meta = meta  # static fields (world size, backend, batch) added to every meta.json
        self.async_mode = bool(c.async_save) and getattr(backend, "supports_async_save", False)
        if c.async_save and not self.async_mode:
            log(f"checkpoint.async: parallel.backend={cfg.parallel.backend} saves synchronously "
                f"(asynchronous checkpoints are FSDP-only)")
        self.test_delay_s = float(os.environ.get(SAVE_DELAY_ENV, "0") or 0)
        self.last_save_time = time.time()
        self.blocked_s: list[float] = []  # seconds training waited per save (bench, metrics)
        self._pending: Future | None = None
        self._pending_step: tuple[int, Path] | None = None
        self.last_step: int | None = None  # step of the newest save this process made
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ckpt-publish") if self.async_mode else None
        self._async_ctx = backend.async_save_context() if self.async_mode else None

    # -- when -------------------------------------------------------------------------------
    def time_due(self) -> bool:
        """This rank's view of the wall-clock interval; the trainer agrees it across ranks."""
        return bool(self.every_minutes) and time.time() - self.last_save_time >= 60.0 * self.every_minutes

    def step_due(self, step: int) -> bool:
        return bool(self.every_steps) and step % self.every_steps == 0

    def maybe_save(self, step: int, force: bool = False, time_due: bool = False) -> Path | None:
        if force or time_due or self.step_due(step):
            return self.save(step)
        return None

    # -- how --------------------------------------------------------------------------------
    def save(self, step: int) -> Path:
        """Collective. Returns the folder the checkpoint will have once published."""
        t0 = time.time()
        self.wait()  # the previous asynchronous save: one in flight at a time
        final = self.root / step_name(step)
        tmp = self.root / f".tmp_{step_name(step)}"
        meta = {**self.meta, **self.state.global_state()}
        if not self.async_mode:
            save_checkpoint(self.root, step, self.backend, self.state.rank_state(), meta, self.keep,
                            test_delay_s=self.test_delay_s)
        else:
            def prepare():
                if _rank() == 0:
                    self.root.mkdir(parents=True, exist_ok=True)
                    prune_stale_tmp(self.root)
                    tmp.mkdir(parents=True)

            def write_rank_state():
                _save_rank_state(tmp, self.state.rank_state())
                fsync_own_files(tmp, _rank())  # small; done before the DCP write, whose files DCP fsyncs

            _agreed(prepare, self.root, tmp, step)
            _agreed(write_rank_state, self.root, tmp, step)
            # Returns once the state is staged in host memory; the write goes on in a thread.
            upload = self.backend.save_async(tmp, self._async_ctx)
            self._pending = self._executor.submit(self._finish_async, upload, tmp, final, meta)
            self._pending_step = (step, tmp)
        self.last_save_time = time.time()
        self.last_step = step
        self.blocked_s.append(time.time() - t0)
        return final

    def _finish_async(self, upload: Future, tmp: Path, final: Path, meta: dict) -> None:
        upload.result()  # DCP's finish gathers every rank's write results: all ranks are done
        if self.test_delay_s:
            time.sleep(self.test_delay_s)
        if _rank() == 0:
            publish(self.root, tmp, final, meta)
            prune_checkpoints(self.root, self.keep)

    def wait(self) -> None:
        """Block until the asynchronous save in flight (if any) is published; re-raise its error."""
        if self._pending is not None:
            # Every rank has a save in flight at the same points (saves are collective), so the
            # agreement below is a collective every rank reaches.
            pending, self._pending = self._pending, None
            step, tmp = self._pending_step
            _agreed(pending.result, self.root, tmp, step)

    def finalize(self) -> None:
        """Wait for the last save and release the staging buffers (end of run, stop, error)."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            if self._async_ctx is not None:
                self._async_ctx.close()
                self._async_ctx = None

    # -- resume -----------------------------------------------------------------------------
    def resume(self, world_size: int, backend_name: str, supports_resharding: bool,
               is_collective_failure=lambda e: False) -> Path | None:
        """Resume from the newest complete checkpoint whose files load on every rank. One that
        fails to load (truncated payload after a node crash) is reported, set aside and the next
        older one is tried; all ranks agree on the outcome, so they resume from the same step.
        A checkpoint of another run (run-defining keys differ, or its tensors do not fit the
        model) is a ResumeMismatch: refused with one line, nothing renamed."""
        tried = False
        for ckpt in complete_checkpoints(self.root, log=self.log):
            tried = True
            error, mismatch, unsafe = "", "", None
            try:
                self._load(ckpt, world_size, backend_name, supports_resharding)
            except ResumeMismatch:
                raise  # a recipe / world-size mismatch: the user's call, not a damaged file
            except UnsafeCheckpoint as e:
                # A file that would run code: refused on every rank, never set aside and passed
                # over (the run must not quietly continue from an older checkpoint of a tampered run).
                unsafe, error = e, str(e)
            except Exception as e:  # noqa: BLE001 - torch.load, DCP and DeepSpeed raise many types
                if dist.is_initialized() and is_collective_failure(e):
                    raise
                mismatch = _shape_mismatch_line(e) or ""
                error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            failed, misfit, refused = any_rank(torch.tensor([float(bool(error)), float(bool(mismatch)),
                                                             float(unsafe is not None)]))
            if refused:
                raise unsafe or UnsafeCheckpoint(f"{ckpt}: refusing to resume: another rank's files reference code")
            if misfit:
                raise ResumeMismatch(f"{ckpt}: does not fit the model this recipe builds "
                                     f"({mismatch or 'on another rank'}); resume with the model.* keys the run "
                                     f"was trained with, or choose another train.out_dir")
            if not failed:
                return ckpt
            self.log(f"checkpoint {ckpt} cannot be loaded ({error or 'on another rank'}); "
                     f"setting it aside and falling back to an earlier one")
            if _rank() == 0:
                set_aside(ckpt)
            barrier()
        if tried:
            raise ValueError(f"{self.root}: no checkpoint could be loaded (all set aside as unreadable_*); "
                             f"move them away to start the run afresh")
        return None

    def check_fingerprint(self, ckpt: Path, meta: dict) -> None:
        """Refuse a checkpoint whose run-defining keys (meta.json's run_config) differ from this
        recipe's. Checkpoints from before run_config existed are compared with the run's
        config.yaml (`legacy_fingerprint`); without one either, the resume goes on with a warning."""
        saved = meta.get(RUN_CONFIG)
        source = "meta.json"
        if saved is None:
            saved = self.legacy_fingerprint() if self.legacy_fingerprint is not None else None
            source = "the run's config.yaml (checkpoint from before run_config was recorded)"
            if saved is None:
                self.log(f"warning: {ckpt} records no run_config and the run has no readable config.yaml: "
                         f"cannot check that this recipe matches the run; resuming")
                return
        from .config.fingerprint import fingerprint_differences

        diffs = fingerprint_differences(saved, self.fingerprint or {})
        if diffs:
            raise ResumeMismatch(f"{ckpt}: this recipe differs from the run's ({source}) in "
                                 f"{'; '.join(diffs)}; resume with the run's values or choose another "
                                 f"train.out_dir")

    def _load(self, ckpt: Path, world_size: int, backend_name: str, supports_resharding: bool) -> None:
        meta = read_meta(ckpt)
        old_world = int(meta.get("world_size", world_size))
        if old_world != world_size and not supports_resharding:
            raise ResumeMismatch(f"{ckpt}: saved by {old_world} ranks with parallel.backend={backend_name}, "
                                 f"which resumes only at the same world size (now {world_size}); "
                                 f"relaunch with {old_world} ranks")
        if meta.get("backend", backend_name) != backend_name:
            raise ResumeMismatch(f"{ckpt}: saved by parallel.backend={meta.get('backend')}, this run uses "
                                 f"{backend_name}; use train.init_from to start from its weights")
        readers = checkpoint_readers(ckpt)
        if backend_name not in readers:
            raise ResumeMismatch(f"{ckpt}: its files are a {'/'.join(readers)} checkpoint, this run uses "
                                 f"parallel.backend={backend_name}; use train.init_from to start from its weights")
        self.check_fingerprint(ckpt, meta)
        self.backend.load(ckpt)
        # Elastic resume reads a surviving rank's state: the synthetic position is global and the
        # loader re-deals shard streams itself; RNG streams are per rank and cannot carry over.
        rank_state = load_rank_state(ckpt, min(_rank(), old_world - 1))
        self.state.load(meta, rank_state, same_world_size=old_world == world_size)
        if old_world != world_size:
            self.log(f"world size changed {old_world} -> {world_size}: same global batch, "
                     f"data position carried over, per-rank RNG reseeded")
        self.last_save_time = time.time()
