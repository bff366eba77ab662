"""Finite data (data.resampled=false with data.epochs): knowing, before training, that it cannot
last the run, and the error a run raises when it ends early anyway."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .download import MANIFEST


class DataExhausted(ValueError):
    """Finite data (data.epochs) ended before train.samples; str() is the one line to print."""


def check_known_sample_count(train_shards: str, epochs: int, samples: int) -> None:
    """Refuse before training when finite data is known to hold fewer samples than train.samples:
    known = data.train_shards is (or is a directory holding) the manifest.json `prep download`
    writes, whose `samples` counts the shards' samples. Unknown counts are found out at the end
    (the trainer saves and stops with DataExhausted)."""
    path = Path(train_shards) / MANIFEST if os.path.isdir(train_shards) else Path(train_shards)
    if path.name != MANIFEST or not path.is_file():
        return
    try:
        available = int(json.loads(path.read_text())["samples"]) * epochs
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a manifest we can read: the data's end will tell
    if available < samples:
        raise DataExhausted(f"data.epochs: {epochs} epoch(s) of {path} hold {available} samples, fewer than "
                            f"train.samples {samples}; raise data.epochs or lower train.samples")
