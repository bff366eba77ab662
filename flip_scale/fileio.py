"""Writing files so that a reader (or a kill) never sees half of one."""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str, durable: bool = False) -> Path:
    """Write to PATH.tmp, then rename over PATH: readers see the old file or the new one.

    durable=True also fsyncs before the rename, for files whose order on disk matters after a
    crash (a checkpoint's meta.json before the `latest` pointer that names it)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
