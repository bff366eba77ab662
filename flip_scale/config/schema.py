"""Typed recipe config. Every field carries a one-line doc (metadata["doc"]).

Defaults follow the paper (FLIP_FACTS.md) unless the doc says otherwise; `recipes/` hold the
actual runs. Sections sit here together so `--print-config` and validation see one tree; each
section checks its own keys (`check`), naming the key in a one-line error.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class CheckContext:
    """What a section's check may consult beyond itself: the whole recipe (cross-section rules),
    the world size (null when not launched) and whether files must exist."""

    cfg: "Config"
    world_size: Optional[int] = None
    check_files: bool = True


def doc(default, text: str, key: str | None = None):
    """A dataclass field with a one-line docstring attached. `key`: the recipe's name for it when
    that cannot be a Python name (INTERFACE.md's `checkpoint.async`: `async` is a keyword)."""
    meta = {"doc": text, **({"key": key} if key else {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def recipe_key(f) -> str:
    """A field's name in recipes, overrides and config.yaml."""
    return f.metadata.get("key", f.name)


@dataclass
class ModelConfig:
    """Which FLIP model and how it masks."""

    name: str = doc("tiny", "size: tiny | vit_b16 | vit_l16 | vit_l14 | vit_h14")
    mask_ratio: float = doc(0.5, "fraction of image patches dropped in training, in [0, 1) (FLIP: 0.5)")
    text_length: int = doc(32, "tokens per caption, padded with 0 / cut (FLIP: 32); the text feature is position 0's output")
    image_pool: str = doc("mean_all", "mean_all (FLIP: all tokens incl. cls) | mean_patches | cls")
    vocab_size: Optional[int] = doc(None, "text vocabulary size; null = the size table's (30523 for paper models)")
    text_mask_ratio: float = doc(0.0, "fraction of text tokens dropped in training (Table 1c ablation; FLIP: 0)")
    text_mask: str = doc("random", "which text tokens go: random | padding_first (Table 1c)")
    reconstruction_weight: float = doc(0.0, "weight of an MAE pixel-reconstruction loss (Table 1f ablation; 0 = off)")
    decoder_width: int = doc(512, "reconstruction decoder width (MAE's default)")
    decoder_layers: int = doc(8, "reconstruction decoder blocks (MAE's default)")
    decoder_heads: int = doc(16, "reconstruction decoder attention heads")
    eval_mask_ratio: float = doc(0.0, "mask ratio at inference (Table 1d ablation; FLIP: 0 = full image)")

    def check(self, fail, ctx: "CheckContext") -> None:
        from ..models.sizes import SIZES

        if self.name not in SIZES:
            fail("model.name", f"unknown model {self.name!r}; choose one of {', '.join(SIZES)}")
        if not 0.0 <= self.mask_ratio < 1.0:
            fail("model.mask_ratio", f"must be in [0, 1), got {self.mask_ratio}")
        if self.image_pool not in ("mean_all", "mean_patches", "cls"):
            fail("model.image_pool", f"must be mean_all, mean_patches or cls, got {self.image_pool!r}")
        if not 0.0 <= self.text_mask_ratio < 1.0:
            fail("model.text_mask_ratio", f"must be in [0, 1), got {self.text_mask_ratio}")
        if self.text_mask not in ("random", "padding_first"):
            fail("model.text_mask", f"must be random or padding_first, got {self.text_mask!r}")
        if self.reconstruction_weight < 0:
            fail("model.reconstruction_weight", f"must be >= 0, got {self.reconstruction_weight}")
        if self.reconstruction_weight > 0 and self.mask_ratio == 0:
            fail("model.reconstruction_weight", "needs model.mask_ratio > 0 (it reconstructs the masked patches)")
        if not 0.0 <= self.eval_mask_ratio < 1.0:
            fail("model.eval_mask_ratio", f"must be in [0, 1), got {self.eval_mask_ratio}")
        if self.text_length < 1:
            fail("model.text_length", f"must be positive, got {self.text_length}")
        if self.vocab_size is not None and self.vocab_size < 8:
            fail("model.vocab_size", f"must be at least 8, got {self.vocab_size}")


@dataclass
class DataConfig:
    """Where samples come from and how they are prepared."""

    train_shards: str = doc("synthetic", "webdataset shards (brace pattern, comma list, directory, `prep download`'s manifest.json, URL, pipe:) or `synthetic`")
    dataset: Optional[str] = doc(None, "what the shards are: laion400m | laion2b | relaion2b | datacomp | synthetic | ... "
                                       "(a site file's `datasets:` picks paths by it; reports label the data axis with it)")
    tokenizer: str = doc("builtin", "tokenizers JSON or BERT vocab.txt; `builtin` = the synthetic captions' vocabulary")
    vocab_sha256: Optional[str] = doc(None, "recorded, not set: sha256 of the tokenizer's vocabulary (tokens in id "
                                            "order), written into RUN/config.yaml; a train.init_from run must match it")
    text_cls_token: bool = doc(False, "true = [CLS] first and [SEP] last; false = word pieces only, "
                                      "the authors' tokens (aug.txt.cls_token False)")
    image_size: int = doc(224, "input pixels; the model's input size follows it (paper: 224)")
    workers: int = doc(2, "loader worker processes per rank")
    shuffle_buffer: int = doc(1000, "samples held in the shuffle buffer per worker")
    resampled: bool = doc(True, "endless resampling of shards (long runs); false = exact epochs")
    shard_retries: int = doc(2, "extra attempts to open a shard before it is skipped and counted")
    shard_retry_delay_s: float = doc(1.0, "first retry delay, doubling with each attempt")
    shard_timeout_s: float = doc(60.0, "http connect/read timeout per shard")
    epochs: Optional[int] = doc(None, "exact-epoch mode (resampled false): stop after this many passes; null = repeat forever")
    shards_per_chunk: int = doc(8, "shards read interleaved per chunk; a resume replays at most one chunk per worker")
    drop_last: bool = doc(True, "with finite epochs, drop each stream's final partial batch")
    prefetch_factor: int = doc(2, "batches prefetched per loader worker")
    pin_memory: bool = doc(False, "pin host batches for faster copies to the GPU (turn on for GPU runs)")
    loader_timeout_s: float = doc(600.0, "seconds a rank waits for one batch from its loader workers before failing "
                                         "(0 = forever; only with workers > 0)")
    synthetic_samples: Optional[int] = doc(None, "synthetic data: distinct samples before repeating (null = endless)")
    decode: str = doc("cpu", "cpu = loader workers decode and augment JPEGs; device = workers only parse headers and "
                             "draw crops, the training device decodes (nvJPEG on CUDA) and crops/resizes/flips")

    def check(self, fail, ctx: "CheckContext") -> None:
        from ..models.sizes import SIZES

        name = ctx.cfg.model.name
        patch = SIZES[name].patch_size
        if self.image_size <= 0 or self.image_size % patch:
            fail("data.image_size", f"must be a positive multiple of {name}'s patch size {patch}, got {self.image_size}")
        if self.workers < 0:
            fail("data.workers", f"must be >= 0, got {self.workers}")
        if not self.train_shards:
            fail("data.train_shards", "is empty; give shards or `synthetic`")
        if self.dataset is not None and not self.dataset.strip():
            fail("data.dataset", "is empty; name the data (laion400m, laion2b, ...) or leave it out")
        if (ctx.check_files and self.tokenizer != "builtin" and not self.tokenizer.startswith(("http://", "https://"))
                and not os.path.isfile(self.tokenizer)):
            fail("data.tokenizer", f"file {self.tokenizer} not found (a tokenizers JSON, a vocab.txt, or `builtin`)")
        if self.loader_timeout_s < 0:
            fail("data.loader_timeout_s", f"must be >= 0 (0 = wait forever), got {self.loader_timeout_s}")
        if self.shards_per_chunk < 1:
            fail("data.shards_per_chunk", f"must be >= 1, got {self.shards_per_chunk}")
        if self.prefetch_factor < 1:
            fail("data.prefetch_factor", f"must be >= 1, got {self.prefetch_factor}")
        if self.epochs is not None and self.epochs < 1:
            fail("data.epochs", f"must be >= 1 (or null = repeat forever), got {self.epochs}")
        if self.decode not in ("cpu", "device"):
            fail("data.decode", f"must be cpu or device, got {self.decode!r}")
        if self.decode == "device" and self.train_shards == "synthetic":
            # The synthetic source renders pixels; there are no JPEG bytes to hand the device.
            fail("data.decode", "device needs JPEG shards (data.train_shards); the synthetic source renders "
                                "pixels: use data.decode=cpu")


@dataclass
class TrainConfig:
    """Length, optimizer, schedule, output."""

    global_batch_size: int = doc(32768, "samples per optimizer step over all ranks (FLIP ablations: 32k; best: 64k)")
    samples: int = doc(2_560_000_000, "samples seen in the whole run (FLIP: 12,451,840,000, the paper's nominal 12.8B)")
    base_lr: float = doc(4e-6, "lr per 256 samples; peak lr = base_lr * global_batch_size / 256")
    warmup_samples: int = doc(51_200_000, "linear warmup length in samples (FLIP: 49,807,360 for B/L, 249,036,800 for H)")
    weight_decay: float = doc(0.2, "AdamW decoupled weight decay; none on biases, LayerNorm scales, position embeddings (as the authors)")
    beta1: float = doc(0.9, "AdamW beta1")
    beta2: float = doc(0.95, "AdamW beta2 (FLIP: 0.95)")
    eps: float = doc(1e-8, "AdamW epsilon")
    grad_clip: float = doc(0.0, "max global gradient norm; 0 = no clipping (FLIP: the authors' optimizer never clips)")
    max_nonfinite_steps: int = doc(10, "this many non-finite losses IN A ROW stop the run (each one alone is "
                                       "skipped and counted); the last good checkpoint stays the latest")
    seed: int = doc(0, "seed of init, data order, augmentation and masks")
    out_dir: str = doc("runs/default", "run directory: config, metrics, checkpoints, summary")
    init_from: Optional[str] = doc(None, "checkpoint or run dir whose weights start this run with a fresh optimizer")
    micro_batch_size: Optional[int] = doc(None, "samples per rank per forward (contrastive micro-batching with "
                                                "cached features: the gradient equals the whole batch's); "
                                                "null = the whole local batch in one pass")
    log_every_steps: int = doc(10, "steps between metric reductions/logs (and stop/interval agreement)")
    device: str = doc("auto", "auto | cpu | cuda")
    host_malloc: str = doc("auto", "auto | keep | default: keep = glibc malloc keeps freed memory for the next step "
                                   "(no trimming, no mmap) instead of page-faulting it in again; auto = keep on CPU devices")
    hang_timeout_s: float = doc(600.0, "a rank with no completed step for this long dumps all stacks to RUN/hangs/rank<N>.txt "
                                       "and exits 76 so the job requeues (0 = no watchdog)")
    hang_phase_timeout_s: float = doc(1800.0, "the same watchdog's budget for the first step, evaluation and "
                                              "checkpoint save/load")
    gc_every_steps: int = doc(50, "automatic Python GC off in the loop; every rank collects at every Nth step "
                                  "(0 = Python's automatic GC)")
    straggler_threshold: float = doc(0.2, "straggler warning: a rank's own step time over the median by more than this fraction")
    straggler_patience: int = doc(3, "straggler warning after this many slow log steps in a row (one line naming the host)")

    def check(self, fail, ctx: "CheckContext") -> None:
        world_size = ctx.world_size
        if self.global_batch_size < 1:
            fail("train.global_batch_size", f"must be positive, got {self.global_batch_size}")
        if world_size is not None and self.global_batch_size % world_size:
            fail("train.global_batch_size", f"{self.global_batch_size} is not divisible by the world size {world_size}")
        if self.samples < self.global_batch_size:
            fail("train.samples", f"{self.samples} is less than one global batch ({self.global_batch_size})")
        if self.warmup_samples < 0:
            fail("train.warmup_samples", f"must be >= 0, got {self.warmup_samples}")
        if self.warmup_samples > self.samples:
            # The lr would never reach its peak: the run trains at a fraction of the lr its recipe
            # names (typically a paper warmup left in a short smoke run).
            fail("train.warmup_samples", f"{self.warmup_samples} is longer than the run (train.samples "
                                         f"{self.samples}): the lr would reach only "
                                         f"{100 * self.samples / self.warmup_samples:.2g}% of its peak; shorten the "
                                         f"warmup (e.g. train.warmup_samples={self.samples // 10}, a tenth "
                                         f"of the run) or lengthen the run")
        if self.grad_clip < 0:
            fail("train.grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        if self.base_lr <= 0:
            fail("train.base_lr", f"must be positive, got {self.base_lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            fail("train.beta2", f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if self.weight_decay < 0:
            fail("train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not self.out_dir.strip():
            fail("train.out_dir", "is empty; name the run directory")
        if ctx.check_files and os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            fail("train.out_dir", f"{self.out_dir} is a file, not a directory")
        if self.log_every_steps < 1:
            fail("train.log_every_steps", f"must be >= 1, got {self.log_every_steps}")
        if self.device not in ("auto", "cpu", "cuda"):
            fail("train.device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.host_malloc not in ("auto", "keep", "default"):
            fail("train.host_malloc", f"must be auto, keep or default, got {self.host_malloc!r}")
        for key in ("hang_timeout_s", "hang_phase_timeout_s", "straggler_threshold"):
            if getattr(self, key) < 0:
                fail(f"train.{key}", f"must be >= 0, got {getattr(self, key)}")
        if self.gc_every_steps < 0:
            fail("train.gc_every_steps", f"must be >= 0 (0 = automatic GC), got {self.gc_every_steps}")
        if self.straggler_patience < 1:
            fail("train.straggler_patience", f"must be >= 1, got {self.straggler_patience}")
        if ctx.check_files and self.init_from is not None and not os.path.exists(self.init_from):
            fail("train.init_from", f"{self.init_from} does not exist")
        if self.max_nonfinite_steps < 1:
            fail("train.max_nonfinite_steps", f"must be at least 1, got {self.max_nonfinite_steps}")
        if self.micro_batch_size is not None:
            local = self.global_batch_size // (world_size or 1)
            if self.micro_batch_size < 1:
                fail("train.micro_batch_size", f"must be positive (or null), got {self.micro_batch_size}")
            elif world_size is not None and local % self.micro_batch_size:
                fail("train.micro_batch_size", f"{self.micro_batch_size} does not divide the local batch {local} "
                                               f"(global {self.global_batch_size} over {world_size} ranks)")
            if ctx.cfg.parallel.backend == "deepspeed" and self.micro_batch_size < local:
                fail("train.micro_batch_size", "contrastive micro-batching is not available with parallel.backend="
                                               "deepspeed (its engine owns backward); use fsdp, ddp or single")


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many stay."""

    every_steps: int = doc(1000, "steps between checkpoints (0 = by time and at the end only)")
    every_minutes: float = doc(0.0, "wall-clock minutes between checkpoints, besides every_steps (0 = off; "
                                    "paper recipes: 30); checked on log steps")
    keep: int = doc(3, "how many recent checkpoints to keep")
    async_save: bool = doc(True, "write checkpoints in the background (FSDP/DCP; training waits only for the "
                                 "copy to host memory); other backends save synchronously", key="async")

    def check(self, fail, ctx: "CheckContext") -> None:
        if self.every_steps < 0:
            fail("checkpoint.every_steps", f"must be >= 0, got {self.every_steps}")
        if self.keep < 1:
            fail("checkpoint.keep", f"must be >= 1, got {self.keep}")
        if self.every_minutes < 0:
            fail("checkpoint.every_minutes", f"must be >= 0, got {self.every_minutes}")


@dataclass
class ParallelConfig:
    """How the model is spread over devices."""

    backend: str = doc("single", "single | ddp | fsdp | deepspeed")
    zero_stage: Optional[int] = doc(None, "DeepSpeed ZeRO stage 1 | 2 | 3; only with backend deepspeed (null there = 2)")
    activation_checkpointing: bool = doc(False, "recompute each transformer block in backward")
    compile: bool = doc(False, "torch.compile each transformer block")
    precision: str = doc("fp32", "fp32 | bf16 (bf16 autocast / bf16 params with fp32 reduction)")
    overlap_loss_gather: bool = doc(True, "start the loss's all-gather of the text features as soon as the text "
                                          "tower is done, under the image tower's forward (more than one rank)")
    init_timeout_s: float = doc(1800.0, "collective timeout while starting (first steps include compile and loading)")
    timeout_s: float = doc(300.0, "collective timeout after the first steps, on every process group: a dead or "
                                  "hung peer ends the job")
    shard_group_size: Optional[int] = doc(None, "fsdp: ranks that shard one model copy (HSDP; e.g. 8 = a node); "
                                                "copies replicate across groups; null (or >= the world size) = flat FSDP")
    reshard_after_forward: Union[bool, str] = doc(True, "fsdp: free gathered block parameters after forward and "
                                                        "gather again in backward (true) | keep them (false) | auto: "
                                                        "keep a tower's if the planner says they fit")
    overlap_comm: bool = doc(True, "deepspeed: reduce gradient buckets during backward instead of after it")
    bucket_mb: float = doc(200.0, "deepspeed: reduce / all-gather bucket size in MB of fp32 gradients "
                                  "(DeepSpeed's own default is 2000: one bucket, nothing left to overlap)")
    blocks_per_unit: int = doc(1, "fsdp: text-tower blocks per FSDP unit (one all-gather each); small blocks "
                                  "at many ranks are latency-bound")

    def check(self, fail, ctx: "CheckContext") -> None:
        world_size = ctx.world_size
        if self.backend not in ("single", "ddp", "fsdp", "deepspeed"):
            fail("parallel.backend", f"must be single, ddp, fsdp or deepspeed, got {self.backend!r}")
        if self.zero_stage is not None and self.backend != "deepspeed":
            fail("parallel.zero_stage", f"is set ({self.zero_stage}) but parallel.backend is {self.backend!r}, not deepspeed")
        if self.zero_stage is not None and self.zero_stage not in (1, 2, 3):
            fail("parallel.zero_stage", f"must be 1, 2 or 3, got {self.zero_stage}")
        if self.precision not in ("fp32", "bf16"):
            fail("parallel.precision", f"must be fp32 or bf16, got {self.precision!r}")
        if self.backend == "single" and world_size is not None and world_size > 1:
            fail("parallel.backend", f"is single but {world_size} processes were launched; use ddp, fsdp or deepspeed")
        if self.shard_group_size is not None:
            if self.backend != "fsdp":
                fail("parallel.shard_group_size",
                     f"is set ({self.shard_group_size}) but parallel.backend is {self.backend!r}, not fsdp")
            if self.shard_group_size < 1:
                fail("parallel.shard_group_size", f"must be positive, got {self.shard_group_size}")
            # A group as large as the job (a one-node run of a multi-node recipe) is flat FSDP.
            if world_size is not None and world_size > self.shard_group_size and world_size % self.shard_group_size:
                fail("parallel.shard_group_size", f"{self.shard_group_size} does not divide the world size {world_size}")
        if not isinstance(self.reshard_after_forward, bool) and self.reshard_after_forward != "auto":
            fail("parallel.reshard_after_forward", f"must be true, false or auto, got {self.reshard_after_forward!r}")
        if self.bucket_mb <= 0:
            fail("parallel.bucket_mb", f"must be positive, got {self.bucket_mb}")
        if self.blocks_per_unit < 1:
            fail("parallel.blocks_per_unit", f"must be at least 1, got {self.blocks_per_unit}")
        if self.init_timeout_s <= 0 or self.timeout_s <= 0:
            fail("parallel.timeout_s", f"timeouts must be positive, got {self.init_timeout_s}, {self.timeout_s}")


@dataclass
class EvalConfig:
    """In-training evaluation."""

    zeroshot: Optional[str] = doc(None, "zero-shot dataset dir (CLIP_benchmark layout) evaluated during training")
    every_steps: int = doc(0, "steps between in-training evaluations (0 = only at the end when zeroshot is set)")
    templates: Optional[str] = doc(None, "prompt templates: 7 | 80 (OpenAI's ImageNet sets; FLIP used 7) | a file | "
                                         "null = the dataset's own templates file")
    retrieval: list = doc([], "retrieval dataset dirs (CLIP_benchmark layout: wds_flickr30k, wds_mscoco_captions) "
                              "evaluated at the end of training (Table 8's image<->text columns)")

    def check(self, fail, ctx: "CheckContext") -> None:
        if self.every_steps < 0:
            fail("eval.every_steps", f"must be >= 0, got {self.every_steps}")
        if ctx.check_files and self.zeroshot is not None and not os.path.isdir(self.zeroshot):
            fail("eval.zeroshot", f"dataset directory {self.zeroshot} not found")
        for path in self.retrieval:
            if not isinstance(path, str) or not path:
                fail("eval.retrieval", f"must be a list of dataset directories, got {self.retrieval!r}")
            if ctx.check_files and not os.path.isdir(path):
                fail("eval.retrieval", f"dataset directory {path} not found")
        if (self.templates is not None and self.templates not in ("7", "80") and ctx.check_files
                and not os.path.isfile(self.templates)):
            fail("eval.templates", f"must be 7, 80 or a template file; {self.templates!r} is none of these")


@dataclass
class SiteConfig:
    """Recorded, not set: the site file (`--site` / FLIP_SITE) applied to this run, for provenance."""

    file: Optional[str] = doc(None, "absolute path of the site file applied after the recipe (null = none)")
    sha256: Optional[str] = doc(None, "sha256 of that file's bytes when it was applied")

    def check(self, fail, ctx: "CheckContext") -> None:
        if (self.file is None) != (self.sha256 is None):
            fail("site.file", "site.file and site.sha256 are recorded together (by --site); set neither")


@dataclass
class Config:
    """A whole recipe."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"doc": "model and masking"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"doc": "training data"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"doc": "length, optimizer, schedule, output"})
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig, metadata={"doc": "checkpointing"})
    parallel: ParallelConfig = field(default_factory=ParallelConfig, metadata={"doc": "parallelism and precision"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"doc": "in-training evaluation"})
    site: SiteConfig = field(default_factory=SiteConfig, metadata={"doc": "the site file applied (recorded)"})

    @property
    def peak_lr(self) -> float:
        return self.train.base_lr * self.train.global_batch_size / 256

    @property
    def total_steps(self) -> int:
        return self.train.samples // self.train.global_batch_size
