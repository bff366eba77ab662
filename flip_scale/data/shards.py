"""Shard lists and raw tar reading for webdataset shards: local, http(s) and `pipe:` sources.

Kept independent of torch so the tokenizer trainer and tools can read shards cheaply.
Reading is streaming (tar "r|" mode): shards in object stores are read once, front to back,
never seeked, the way LAION-scale training reads them.

The format is webdataset's (samples grouped by key, extensions as fields); the reader is our
own rather than webdataset's pipeline because exact resume needs a sample position inside a
shard and retry semantics that never repeat a sample, and because importing webdataset pulls
in torch. tests/test_data_webdataset_compat.py checks both directions with webdataset itself.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import subprocess
import tempfile
import time
import urllib.request
import warnings
from collections import Counter
from typing import IO, Iterator

import tarfile

from braceexpand import braceexpand

_REMOTE = ("http://", "https://", "pipe:")
# A brace pattern may miss a few shards (img2dataset gave up on them); more than this fraction
# missing is a wrong pattern (wrong digits, wrong folder), not link rot.
MAX_MISSING_FRACTION = 0.01
log = logging.getLogger(__name__)
# webdataset's convention: the key is the path up to the first dot of the file name.
_KEY_EXT = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")


def _split_top_level_commas(spec: str) -> list[str]:
    """Split on commas outside braces, so 'a/{0..3}.tar,b/{x,y}.tar' gives two patterns."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _as_local(found: list[str]) -> list[str]:
    """Paths found on disk (a glob, a directory listing) stay paths. A file named
    `pipe:cmd;.tar` is only a file: `pipe:` (or a URL scheme) counts only when the user wrote it
    in the spec, so a name in a downloaded folder never becomes a shell command."""
    return [os.path.join(".", p) if p.startswith((*_REMOTE, "file://")) else p for p in found]


def expand_shards(spec: str) -> list[str]:
    """Expand a shard spec into shard URLs.

    Accepts a brace pattern ('DIR/{00000..00009}.tar'), a comma-separated list, a directory of
    .tar files, a glob, a `prep download` manifest.json, http(s) URLs and `pipe:CMD` commands
    (each may hold braces; `pipe:` is honoured only as written in the spec, never from what a
    glob, directory listing or manifest names). Local paths that do not exist are dropped with a
    warning line, unless they are more than 1% of those named (check_missing); a spec that yields
    no shard raises ValueError.
    """
    if not spec or not spec.strip():
        raise ValueError("data.train_shards is empty")
    out: list[str] = []
    missing: list[str] = []
    for part in _split_top_level_commas(spec):
        for item in braceexpand(part):
            if item.startswith(_REMOTE):
                out.append(item)
                continue
            path = item[len("file://"):] if item.startswith("file://") else item
            path = os.path.expanduser(path)
            if path.endswith(".json"):
                out.extend(shards_from_manifest(path))  # joined to the manifest's folder: paths
            elif os.path.isdir(path):
                out.extend(_as_local(sorted(glob.glob(os.path.join(path, "*.tar")))))
            elif any(c in path for c in "*?["):
                out.extend(_as_local(sorted(glob.glob(path))))
            elif os.path.isfile(path):
                out.append(path)
            else:
                missing.append(path)
    if not out:
        raise ValueError(f"shard pattern {spec!r} matches no shards")
    check_missing(spec, missing, len(out) + len(missing))
    return out


def check_missing(spec: str, missing: list[str], total: int) -> None:
    """More than MAX_MISSING_FRACTION of the named shards missing: one-line error; fewer: one
    warning line (the run log), and training goes on without them."""
    if not missing:
        return
    first = ", ".join(os.path.basename(m) for m in missing[:3])
    if len(missing) > MAX_MISSING_FRACTION * total:
        raise ValueError(f"{len(missing)} of {total} shards of {spec!r} do not exist (more than "
                         f"{MAX_MISSING_FRACTION:.0%}; first: {first}); check the pattern's digits "
                         f"and folder, or name the download's manifest.json")
    log.warning("%d of %d shards of %r do not exist and are skipped (first: %s)",
                len(missing), total, spec, first)


def manifest_shard_files(path: str) -> tuple[list[str], list[str]]:
    """(present, missing): the shard files a `flip-scale prep download` manifest.json lists
    (those holding samples); relative names resolve against the manifest's folder, so the
    folder can move. An unreadable file or one that is no manifest: ValueError."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"manifest {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"manifest {path} is unreadable: {e}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shard_list"), list):
        raise ValueError(f"{path} is not a manifest written by `flip-scale prep download` "
                         f"(no shard_list)")
    root = os.path.dirname(os.path.abspath(path))
    out, missing = [], []
    for entry in manifest["shard_list"]:
        if int(entry.get("samples", 0)) <= 0:
            continue  # every URL of the shard failed: img2dataset wrote an empty tar
        shard = os.path.join(root, entry["shard"])  # an absolute name stays as it is
        (out if os.path.isfile(shard) else missing).append(shard)
    return out, missing


def shards_from_manifest(path: str) -> list[str]:
    """The shard files a manifest lists (manifest_shard_files), every one of which must exist."""
    out, missing = manifest_shard_files(path)
    if missing:
        raise ValueError(f"manifest {path} lists {len(missing)} shard(s) that do not exist "
                         f"(first: {missing[0]})")
    if not out:
        raise ValueError(f"manifest {path} lists no shard with samples")
    return out



class _PipeStream:
    """stdout of a shell command; close() reports a non-zero exit as an error."""

    def __init__(self, cmd: str):
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=self._err)
        self.cmd = cmd

    def read(self, n: int = -1) -> bytes:
        return self.proc.stdout.read(n)

    def close(self) -> None:
        self.proc.stdout.close()
        rc = self.proc.wait()
        self._err.seek(0)
        err = self._err.read().decode(errors="replace").strip().splitlines()
        self._err.close()
        # 141 / -13: the reader stopped early (SIGPIPE) - that is our doing, not a failure.
        if rc not in (0, 141, -13):
            raise OSError(f"pipe command failed (exit {rc}): {self.cmd}: "
                          f"{err[-1] if err else ''}")


def open_shard(url: str, timeout_s: float = 60.0) -> IO[bytes]:
    """Open a shard for streaming: local path, file://, http(s):// or pipe:COMMAND."""
    if url.startswith("pipe:"):
        return _PipeStream(url[len("pipe:"):])
    if url.startswith(("http://", "https://")):
        return urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 - user-given URL
    if url.startswith("file://"):
        url = url[len("file://"):]
    return open(url, "rb")


def iter_tar_samples(url: str, counters: Counter | None = None, retries: int = 2,
                     retry_delay_s: float = 1.0, timeout_s: float = 60.0
                     ) -> Iterator[dict]:
    """Yield samples {"__key__", "__url__", ext: bytes, ...} of one tar shard, in tar order.

    A shard that fails before its first sample is retried `retries` times, then skipped and
    counted as `shard_error`. A failure later (truncated or corrupt member) cannot be retried
    without repeating samples, so the rest of the shard is skipped and counted as
    `corrupt_member`. Nothing here raises for bad data.
    """
    counters = counters if counters is not None else Counter()
    for attempt in range(retries + 1):
        yielded = False
        stream = None
        try:
            stream = open_shard(url, timeout_s)
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                key, sample = None, {}
                for member in tar:
                    if not member.isfile():
                        continue
                    m = _KEY_EXT.match(member.name)
                    if m is None:
                        continue  # e.g. hidden files such as ._foo from macOS tar
                    k, ext = m.group(1), m.group(2).lower()
                    data = tar.extractfile(member).read()
                    if len(data) != member.size:
                        raise tarfile.ReadError("unexpected end of data")
                    if k != key:
                        if sample:
                            yielded = True
                            yield sample
                        key, sample = k, {"__key__": k, "__url__": url}
                    sample[ext] = data
                if sample:
                    yielded = True
                    yield sample
            stream.close()
            stream = None
            return
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            _close_quietly(stream)
            stream = None
            if yielded:
                counters["corrupt_member"] += 1
                return
            if attempt == retries:
                counters["shard_error"] += 1
                warnings.warn(f"skipping shard {url}: {type(e).__name__}: {e}")
                return
            counters["shard_retry"] += 1
            time.sleep(retry_delay_s * (2 ** attempt))
        finally:
            # Reached when the consumer stops early (GeneratorExit): do not leak the
            # connection or the pipe's process.
            _close_quietly(stream)


def _close_quietly(stream) -> None:
    if stream is not None:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - already failing or abandoned; keep the first error
            pass
