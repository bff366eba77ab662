import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "test" / "tiny.yaml"
# Keep CPU tests predictable on the 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny_recipe():
    return TINY


def cli(*args):
    """Argument list that runs the package's command line in a subprocess."""
    return [sys.executable, "-m", "flip_scale", *map(str, args)]


def take(loader, n):
    """The first n batches of an iterable loader."""
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out
