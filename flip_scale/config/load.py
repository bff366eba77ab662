"""Recipe loading: YAML files, `base:` inheritance, `a.b=c` overrides, typed checks, validation.

Every error is a ConfigError whose message is one line naming the key and where it was set
(the recipe file, a base file, or the command line), raised before any model is built.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from ..fileio import write_text_atomic
from ..run_dir import CONFIG, RunDir
from .schema import CheckContext, Config, recipe_key


class ConfigError(ValueError):
    """A recipe problem a user must fix; str() is the one line the CLI prints."""


def yaml_error_line(source, e: yaml.YAMLError) -> str:
    """One line for a YAML file that does not parse: the file, the line, the problem."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1}" if mark else ""
    return f"{source}:{where} not valid YAML ({getattr(e, 'problem', None) or e})"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_line(path, e)) from None
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
    if tp is list or origin is list:
        # A YAML list, or one item (`eval.retrieval=/p/flickr30k` on the command line).
        items = value if isinstance(value, list) else ([] if value in (None, "") else [value])
        return [_coerce(v, str, key, source) for v in items]
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
    names = {recipe_key(f) for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            dotted = f"{prefix}{key}"
            src = origin.get(dotted) or next((origin[k] for k in origin if k.startswith(dotted + ".")), recipe)
            raise ConfigError(f"{src}: unknown key {dotted!r} (known in {prefix.rstrip('.') or 'the top level'}: "
                              f"{', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = recipe_key(f)
        if key not in data:
            continue
        dotted, value, tp = f"{prefix}{key}", data[key], hints[f.name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin.get(dotted, recipe)}: {dotted}: expected a section (mapping), got {value!r}")
            kwargs[f.name] = _build(tp, value, origin, recipe, dotted + ".")
        else:
            kwargs[f.name] = _coerce(value, tp, dotted, origin.get(dotted, recipe))
    return cls(**kwargs)


def load_recipe(path: str | os.PathLike, overrides: list[str] | tuple = (), world_size: int | None = None,
                check_files: bool = True, site=None) -> Config:
    """Read a recipe (following `base:`), apply the site file, then overrides; type-check and validate.

    check_files=False skips the checks that files named by the recipe exist (tokenizer,
    init_from, eval set): for planning or submitting a run on a machine that is not where it
    will run, or a tuning job whose init_from is written by a job not yet finished.
    site: a site file path or a loaded Site (config/site.py); its per-dataset section is the one
    named by data.dataset (the command line's if it sets it). A resolved config (RUN/config.yaml,
    which records site.file) is final: no site is applied to it again."""
    from .site import Site, load_site

    origin: dict[str, str] = {}
    data = _load_chain(Path(path), origin)
    parsed = [(text, *parse_override(text)) for text in overrides]
    if site is not None and not (data.get("site") or {}).get("file"):
        site = site if isinstance(site, Site) else load_site(site)
        dataset = next((v for _, k, v in reversed(parsed) if k == "data.dataset"), None)
        if dataset is None:
            dataset = (data.get("data") or {}).get("dataset")
        for sections, source in site.layers(None if dataset is None else str(dataset)):
            _merge(data, sections, origin, source)
    for text, key, value in parsed:
        _merge(data, _nest(key, value), origin, f"command line ({key}={text.split('=', 1)[1]})")
    cfg = _build(Config, data, origin, str(path))
    cfg._origin = origin  # type: ignore[attr-defined]  (for error messages in validate)
    cfg._recipe = str(path)  # type: ignore[attr-defined]
    validate(cfg, world_size, check_files=check_files)
    return cfg


def _where(cfg: Config, key: str) -> str:
    return getattr(cfg, "_origin", {}).get(key) or getattr(cfg, "_recipe", "recipe") + " (default)"


def validate(cfg: Config, world_size: int | None = None, check_files: bool = True) -> None:
    """Impossible combinations, each reported as one line naming the key and where it was set.
    Each section checks itself (`check` in schema.py); this only adds where a key came from."""

    def fail(key: str, msg: str):
        raise ConfigError(f"{_where(cfg, key)}: {key}: {msg}")

    for key, value in _float_leaves(cfg):
        if not math.isfinite(value):
            # NaN passes every `< 0` / `<= 0` test below and trains NaN weights; inf likewise.
            fail(key, f"must be a finite number, got {value}")
    ctx = CheckContext(cfg, world_size, check_files)
    for section in (cfg.model, cfg.data, cfg.train, cfg.checkpoint, cfg.parallel, cfg.eval, cfg.site):
        section.check(fail, ctx)


def _float_leaves(cfg, prefix: str = ""):
    """(dotted key, value) of every float field of the config tree."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{recipe_key(f)}"
        if dataclasses.is_dataclass(value):
            yield from _float_leaves(value, key + ".")
        elif isinstance(value, float):
            yield key, value


def config_to_dict(cfg) -> dict:
    """The config as recipe keys (a field's `key` where it has one)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[recipe_key(f)] = config_to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def write_config(cfg: Config, run_dir: str | os.PathLike) -> Path:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_text_atomic(Path(run_dir) / CONFIG, dump_config(cfg))


def config_from_dict(data: dict, source: str = "config.yaml") -> Config:
    """Rebuild a Config from a resolved dict (a run directory's config.yaml), without validation."""
    return _build(Config, data, {}, source)


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The Config a run was trained with (its config.yaml). Lives here, not in run_dir.py, so
    that the layout module imports nothing above it (config imports run_dir, not the reverse)."""
    path = RunDir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no {CONFIG})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # a hand-edited or truncated file: one line, not a traceback
        raise ValueError(yaml_error_line(path, e)) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a resolved config (a mapping of sections), got {type(data).__name__}")
    return config_from_dict(data, str(path))
