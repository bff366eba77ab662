"""The keys that define a run, recorded in every checkpoint's meta.json and compared on resume.

A resume whose recipe differs in one of these would label weights trained one way with another
way's name (config.yaml, summary.json, reports), or continue a schedule or data order that no
longer matches the checkpoint. Everything else may change between segments of a run: intervals,
paths, timeouts, workers, precision, the world size where the backend reshards
(docs/run-directory.md lists them).

Values are stored as plain JSON values, not a hash, so a refusal can name each key with both
values.
"""
from __future__ import annotations

import json

from .load import config_to_dict
from .schema import Config

# model.* is taken whole except these: they change evaluation only, not what training does.
MODEL_KEYS_THAT_MAY_CHANGE = ("eval_mask_ratio",)
DATA_KEYS = ("train_shards", "dataset", "image_size", "text_cls_token", "synthetic_samples", "resampled")
TRAIN_KEYS = ("global_batch_size", "samples", "base_lr", "warmup_samples", "weight_decay", "beta1", "beta2", "eps",
              "seed")
VOCAB_KEY = "data.tokenizer_vocab_sha256"


def run_fingerprint(cfg: Config) -> dict:
    """{dotted key: value} of the run-defining keys (JSON values). The vocabulary is
    data.vocab_sha256, which the trainer records once the tokenizer is loaded (a tokenizer moved
    to another path is still the same one); unrecorded, it is not compared."""
    d = config_to_dict(cfg)
    out = {f"model.{k}": v for k, v in d["model"].items() if k not in MODEL_KEYS_THAT_MAY_CHANGE}
    out.update({f"data.{k}": d["data"][k] for k in DATA_KEYS if k in d["data"]})
    out.update({f"train.{k}": d["train"][k] for k in TRAIN_KEYS if k in d["train"]})
    if cfg.data.vocab_sha256 is not None:
        out[VOCAB_KEY] = cfg.data.vocab_sha256
    return json.loads(json.dumps(out))  # the form meta.json will give back (tuples -> lists, ...)


def fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """'key saved -> now' for each key both sides know and whose values differ. A key only one
    side has (a checkpoint from before the key existed) cannot be compared and is skipped."""
    diffs = []
    for key in sorted(set(saved) & set(now)):
        a, b = saved[key], now[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            if float(a) == float(b):
                continue
        elif a == b:
            continue
        diffs.append(f"{key} {a!r} -> {b!r}")
    return diffs
