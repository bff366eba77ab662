"""Checks at submit: does every file a job will read exist, as seen from this host?

`flip-scale launch` runs these before it submits anything (and under --dry-run), so a job with a
placeholder path is refused in a second instead of exiting 2 after hours in the queue. The
submit host must see the cluster's filesystem; where it cannot, `--no-check` skips them (the job
still checks at start). Remote shards (http, s3 through pipe:) are not fetched here.
"""
from __future__ import annotations

import glob
import os

from braceexpand import braceexpand

from .data.download import MANIFEST
from .data.shards import _split_top_level_commas, manifest_shard_files

_REMOTE = ("http://", "https://", "pipe:", "s3://", "gs://")


def check_shards(spec: str) -> str | None:
    """None when every shard `spec` names exists, else what is missing (found vs expected)."""
    if spec == "synthetic":
        return None
    expected: list[str] = []
    problems = []
    for part in _split_top_level_commas(spec):
        for item in braceexpand(part):
            if item.startswith(_REMOTE):
                continue
            path = os.path.expanduser(item[len("file://"):] if item.startswith("file://") else item)
            if os.path.basename(path) == MANIFEST or path.endswith(".json"):
                if not os.path.isfile(path):
                    problems.append("not found" if path == spec.strip() else f"manifest {path} not found")
                    continue
                try:
                    present, missing = manifest_shard_files(path)
                except ValueError as e:
                    problems.append(str(e).splitlines()[0])
                else:
                    expected.extend(present + missing)
            elif any(c in path for c in "*?["):
                if not glob.glob(path):
                    problems.append(f"pattern {path} matches no file")
            elif os.path.isdir(path):
                if not any(n.endswith(".tar") for n in os.listdir(path)):
                    problems.append(f"directory {path} holds no .tar shards")
            else:
                expected.append(path)
    missing = [p for p in expected if not os.path.isfile(p)]
    if missing:
        problems.append(f"{len(expected) - len(missing)} of {len(expected)} shards found (first missing: {missing[0]})")
    return "; ".join(problems) or None


def missing_inputs(cfg, init_from_pending: bool = False) -> list[str]:
    """`key: problem` for every input of a resolved Config that is not there.

    init_from_pending: the run directory named by train.init_from is written by a job that has
    not run yet (a chained tuning stage), so it is not required to exist."""
    out = []
    shards = check_shards(cfg.data.train_shards)
    if shards:
        out.append(f"data.train_shards {cfg.data.train_shards}: {shards}")
    tok = cfg.data.tokenizer
    if tok != "builtin" and not tok.startswith(_REMOTE) and not os.path.isfile(tok):
        out.append(f"data.tokenizer {tok}: not found")
    if cfg.eval.zeroshot and not os.path.isdir(cfg.eval.zeroshot):
        out.append(f"eval.zeroshot {cfg.eval.zeroshot}: not found")
    for path in cfg.eval.retrieval:
        if not os.path.isdir(path):
            out.append(f"eval.retrieval {path}: not found")
    t = cfg.eval.templates
    if t is not None and t not in ("7", "80") and not os.path.isfile(t):
        out.append(f"eval.templates {t}: not found")
    if cfg.train.init_from and not init_from_pending and not os.path.exists(cfg.train.init_from):
        out.append(f"train.init_from {cfg.train.init_from}: not found")
    return out


def _source_config_path(init_from: str) -> str | None:
    """RUN/config.yaml of train.init_from (a run directory or one of its checkpoints), if present."""
    p = os.path.abspath(init_from)
    for cand in (p, os.path.dirname(p), os.path.dirname(os.path.dirname(p))):
        path = os.path.join(cand, "config.yaml")
        if os.path.isfile(path):
            return path
    return None


def vocab_sha256(tokenizer: str, text_length: int = 32, cls_token: bool = False) -> str | None:
    """The vocabulary hash of a tokenizer spec, or None when it cannot be read here."""
    if tokenizer != "builtin" and not os.path.isfile(tokenizer):
        return None
    from .data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(tokenizer, max(text_length, 2), cls_token).vocab_sha256()
    except (ValueError, OSError):
        return None


def init_from_vocab_mismatch(init_from: str, own_sha256: str | None, own_tokenizer: str,
                             source_cfg=None) -> str | None:
    """One line when the run train.init_from names was trained with another vocabulary, else None.

    The source's vocabulary is its config's data.vocab_sha256 (recorded at its start), else the
    hash of its data.tokenizer file; source_cfg: its resolved Config when it has not run yet (a
    chained tuning stage checked at launch). Unknown on either side: no verdict (None)."""
    if source_cfg is None:
        path = _source_config_path(init_from)
        if path is None:
            return None
        from .config import read_run_config

        source_cfg = read_run_config(os.path.dirname(path))
    theirs = source_cfg.data.vocab_sha256 or vocab_sha256(source_cfg.data.tokenizer)
    if theirs is None or own_sha256 is None or theirs == own_sha256:
        return None
    return (f"train.init_from: {init_from} was trained with tokenizer {source_cfg.data.tokenizer} (vocabulary "
            f"{theirs[:12]}), this run uses {own_tokenizer} (vocabulary {own_sha256[:12]}): its text embeddings "
            f"would be read with other word pieces; use the run's data.tokenizer")
