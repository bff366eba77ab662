"""Recipe loading: YAML files, `base:` inheritance, `a.b=c` overrides, typed checks, validation.

Every error is a ConfigError whose message is one line naming the key and where it was set
(the recipe file, a base file, or the command line), raised before any model is built.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from ..fileio import write_text_atomic
from ..run_dir import CONFIG
from .schema import Config


class ConfigError(ValueError):
    """A recipe problem a user must fix; str() is the one line the CLI prints."""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _merge(dst: dict, src: dict, origin: dict, source: str, prefix: str = "") -> None:
    for key, value in src.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, origin, source, dotted + ".")
        else:
            dst[key] = value
            origin[dotted] = source
            if isinstance(value, dict):
                for sub in _leaves(value, dotted + "."):
                    origin[sub] = source


def _leaves(d: dict, prefix: str):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _load_chain(path: Path, origin: dict, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: `base:` chain loops back to itself")
    data = _read_yaml(path)
    base = data.pop("base", None)
    merged: dict = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: base: must be a path to another recipe")
        base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: {base} not found (looked at {base_path})")
        merged = _load_chain(base_path, origin, seen + (path,))
    _merge(merged, data, origin, str(path))
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise ConfigError(f"command line: override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str, source: str):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # e.g. Union[bool, str]: true | false | auto
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        return _coerce(value, args[-1], key, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 12.8e9 written in YAML is a float
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads `4e-6` (no dot) as a string; it is plainly a number.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{source}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, data: dict, origin: dict, recipe: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            dotted = f"{prefix}{key}"
            src = origin.get(dotted) or next((origin[k] for k in origin if k.startswith(dotted + ".")), recipe)
            raise ConfigError(f"{src}: unknown key {dotted!r} (known in {prefix.rstrip('.') or 'the top level'}: "
                              f"{', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        dotted, value, tp = f"{prefix}{f.name}", data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin.get(dotted, recipe)}: {dotted}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _build(tp, value, origin, recipe, dotted + ".")
        else:
            kwargs[f.name] = _coerce(value, tp, dotted, origin.get(dotted, recipe))
    return cls(**kwargs)


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple = (), world_size: int | None = None,
                check_files: bool = True) -> Config:
    """Read a recipe (following `base:`), apply overrides, type-check and validate it.

    check_files=False skips the checks that files named by the recipe exist (tokenizer,
    init_from, eval set): for planning or submitting a run on a machine that is not where it
    will run, or a tuning job whose init_from is written by a job not yet finished."""
    origin: dict[str, str] = {}
    data = _load_chain(Path(path), origin)
    for text in overrides:
        key, value = parse_override(text)
        _merge(data, _nest(key, value), origin, f"command line ({key}={text.split('=', 1)[1]})")
    cfg = _build(Config, data, origin, str(path))
    cfg._origin = origin  # type: ignore[attr-defined]  (for error messages in validate)
    cfg._recipe = str(path)  # type: ignore[attr-defined]
    validate(cfg, world_size, check_files=check_files)
    return cfg


def _where(cfg: Config, key: str) -> str:
    return getattr(cfg, "_origin", {}).get(key) or getattr(cfg, "_recipe", "recipe") + " (default)"


def validate(cfg: Config, world_size: int | None = None, check_files: bool = True) -> None:
    """Impossible combinations, each reported as one line naming the key and its source."""
    from ..models.sizes import SIZES

    def fail(key: str, msg: str):
        raise ConfigError(f"{_where(cfg, key)}: {key}: {msg}")

    m, d, t, p, c, e = cfg.model, cfg.data, cfg.train, cfg.parallel, cfg.checkpoint, cfg.eval
    if m.name not in SIZES:
        fail("model.name", f"unknown model {m.name!r}; choose one of {', '.join(SIZES)}")
    if not 0.0 <= m.mask_ratio < 1.0:
        fail("model.mask_ratio", f"must be in [0, 1), got {m.mask_ratio}")
    if m.image_pool not in ("mean_all", "mean_patches", "cls"):
        fail("model.image_pool", f"must be mean_all, mean_patches or cls, got {m.image_pool!r}")
    if not 0.0 <= m.text_mask_ratio < 1.0:
        fail("model.text_mask_ratio", f"must be in [0, 1), got {m.text_mask_ratio}")
    if m.text_mask not in ("random", "padding_first"):
        fail("model.text_mask", f"must be random or padding_first, got {m.text_mask!r}")
    if m.reconstruction_weight < 0:
        fail("model.reconstruction_weight", f"must be >= 0, got {m.reconstruction_weight}")
    if m.reconstruction_weight > 0 and m.mask_ratio == 0:
        fail("model.reconstruction_weight", "needs model.mask_ratio > 0 (it reconstructs the masked patches)")
    if not 0.0 <= m.eval_mask_ratio < 1.0:
        fail("model.eval_mask_ratio", f"must be in [0, 1), got {m.eval_mask_ratio}")
    if m.text_length < 1:
        fail("model.text_length", f"must be positive, got {m.text_length}")
    if m.vocab_size is not None and m.vocab_size < 8:
        fail("model.vocab_size", f"must be at least 8, got {m.vocab_size}")
    patch = SIZES[m.name].patch_size
    if d.image_size <= 0 or d.image_size % patch:
        fail("data.image_size", f"must be a positive multiple of {m.name}'s patch size {patch}, got {d.image_size}")
    if d.workers < 0:
        fail("data.workers", f"must be >= 0, got {d.workers}")
    if not d.train_shards:
        fail("data.train_shards", "is empty; give shards or `synthetic`")
    if check_files and d.tokenizer != "builtin" and not d.tokenizer.startswith(("http://", "https://")) and not os.path.isfile(d.tokenizer):
        fail("data.tokenizer", f"file {d.tokenizer} not found (a tokenizers JSON, a vocab.txt, or `builtin`)")
    if t.global_batch_size < 1:
        fail("train.global_batch_size", f"must be positive, got {t.global_batch_size}")
    if world_size is not None and t.global_batch_size % world_size:
        fail("train.global_batch_size", f"{t.global_batch_size} is not divisible by the world size {world_size}")
    if t.samples < t.global_batch_size:
        fail("train.samples", f"{t.samples} is less than one global batch ({t.global_batch_size})")
    if t.warmup_samples < 0:
        fail("train.warmup_samples", f"must be >= 0, got {t.warmup_samples}")
    if t.base_lr <= 0:
        fail("train.base_lr", f"must be positive, got {t.base_lr}")
    if not (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1):
        fail("train.beta2", f"betas must be in [0, 1), got ({t.beta1}, {t.beta2})")
    if t.weight_decay < 0:
        fail("train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    if not t.out_dir.strip():
        fail("train.out_dir", "is empty; name the run directory")
    if t.log_every_steps < 1:
        fail("train.log_every_steps", f"must be >= 1, got {t.log_every_steps}")
    if t.device not in ("auto", "cpu", "cuda"):
        fail("train.device", f"must be auto, cpu or cuda, got {t.device!r}")
    for key in ("hang_timeout_s", "hang_phase_timeout_s", "straggler_threshold"):
        if getattr(t, key) < 0:
            fail(f"train.{key}", f"must be >= 0, got {getattr(t, key)}")
    if t.gc_every_steps < 0:
        fail("train.gc_every_steps", f"must be >= 0 (0 = automatic GC), got {t.gc_every_steps}")
    if t.straggler_patience < 1:
        fail("train.straggler_patience", f"must be >= 1, got {t.straggler_patience}")
    if d.loader_timeout_s < 0:
        fail("data.loader_timeout_s", f"must be >= 0 (0 = wait forever), got {d.loader_timeout_s}")
    if check_files and t.init_from is not None and not os.path.exists(t.init_from):
        fail("train.init_from", f"{t.init_from} does not exist")
    if c.every_steps < 0:
        fail("checkpoint.every_steps", f"must be >= 0, got {c.every_steps}")
    if c.keep < 1:
        fail("checkpoint.keep", f"must be >= 1, got {c.keep}")
    if c.every_minutes < 0:
        fail("checkpoint.every_minutes", f"must be >= 0, got {c.every_minutes}")
    if t.micro_batch_size is not None:
        local = t.global_batch_size // (world_size or 1)
        if t.micro_batch_size < 1:
            fail("train.micro_batch_size", f"must be positive (or null), got {t.micro_batch_size}")
        elif world_size is not None and local % t.micro_batch_size:
            fail("train.micro_batch_size", f"{t.micro_batch_size} does not divide the local batch {local} "
                                           f"(global {t.global_batch_size} over {world_size} ranks)")
        if p.backend == "deepspeed" and t.micro_batch_size < local:
            fail("train.micro_batch_size", "contrastive micro-batching is not available with parallel.backend="
                                           "deepspeed (its engine owns backward); use fsdp, ddp or single")
    if p.backend not in ("single", "ddp", "fsdp", "deepspeed"):
        fail("parallel.backend", f"must be single, ddp, fsdp or deepspeed, got {p.backend!r}")
    if p.zero_stage is not None and p.backend != "deepspeed":
        fail("parallel.zero_stage", f"is set ({p.zero_stage}) but parallel.backend is {p.backend!r}, not deepspeed")
    if p.zero_stage is not None and p.zero_stage not in (1, 2, 3):
        fail("parallel.zero_stage", f"must be 1, 2 or 3, got {p.zero_stage}")
    if p.precision not in ("fp32", "bf16"):
        fail("parallel.precision", f"must be fp32 or bf16, got {p.precision!r}")
    if p.backend == "single" and world_size is not None and world_size > 1:
        fail("parallel.backend", f"is single but {world_size} processes were launched; use ddp, fsdp or deepspeed")
    if p.shard_group_size is not None:
        if p.backend != "fsdp":
            fail("parallel.shard_group_size", f"is set ({p.shard_group_size}) but parallel.backend is {p.backend!r}, not fsdp")
        if p.shard_group_size < 1:
            fail("parallel.shard_group_size", f"must be positive, got {p.shard_group_size}")
        if world_size is not None and world_size % p.shard_group_size:
            fail("parallel.shard_group_size", f"{p.shard_group_size} does not divide the world size {world_size}")
    if not isinstance(p.reshard_after_forward, bool) and p.reshard_after_forward != "auto":
        fail("parallel.reshard_after_forward", f"must be true, false or auto, got {p.reshard_after_forward!r}")
    if p.bucket_mb <= 0:
        fail("parallel.bucket_mb", f"must be positive, got {p.bucket_mb}")
    if p.blocks_per_unit < 1:
        fail("parallel.blocks_per_unit", f"must be at least 1, got {p.blocks_per_unit}")
    if p.init_timeout_s <= 0 or p.timeout_s <= 0:
        fail("parallel.timeout_s", f"timeouts must be positive, got {p.init_timeout_s}, {p.timeout_s}")
    if t.max_nonfinite_steps < 1:
        fail("train.max_nonfinite_steps", f"must be at least 1, got {t.max_nonfinite_steps}")
    if e.every_steps < 0:
        fail("eval.every_steps", f"must be >= 0, got {e.every_steps}")
    if check_files and e.zeroshot is not None and not os.path.isdir(e.zeroshot):
        fail("eval.zeroshot", f"dataset directory {e.zeroshot} not found")
    if e.templates is not None and e.templates not in ("7", "80") and check_files and not os.path.isfile(e.templates):
        fail("eval.templates", f"must be 7, 80 or a template file; {e.templates!r} is none of these")


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def write_config(cfg: Config, run_dir: str | os.PathLike) -> Path:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_text_atomic(Path(run_dir) / CONFIG, dump_config(cfg))


def config_from_dict(data: dict, source: str = "config.yaml") -> Config:
    """Rebuild a Config from a resolved dict (a run directory's config.yaml), without validation."""
    return _build(Config, data, {}, source)
