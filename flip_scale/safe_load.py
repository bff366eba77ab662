"""Reading files from a run directory or checkpoint without running code they might carry.

Run directories travel (init_from, eval, export, resume after a move), and every pickle in them
can run code when unpickled. So nothing here calls an unrestricted unpickler:

- our `.pt` files load with `torch.load(weights_only=True)`: tensors and plain containers only,
  plus the few numpy names an old train state needs (`OLD_TRAIN_STATE_GLOBALS`);
- DCP's `.metadata` (a plain pickle) loads with `RestrictedUnpickler`, which resolves exactly the
  classes a real DCP checkpoint references (`DCP_METADATA_GLOBALS`, listed from a checkpoint
  written by torch 2.14 and inspected with pickletools);
- third-party loaders that call `torch.load(weights_only=False)` themselves (DeepSpeed) run
  inside `forced_weights_only`, which makes torch.load restricted whatever they ask for.

Anything else a file references is refused with `UnsafeCheckpoint`, one line naming the file and
the name. `trust_checkpoints(True)` (the `--trust-checkpoint` flag) lifts the restriction for
third-party formats only; it is never needed for checkpoints this project wrote.

The train state codec (`save_state` / `load_state`) stores nested plain data as JSON text and
every tensor / numpy array as a tensor beside it, so loading it needs nothing beyond weights_only.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re

import numpy as np
import torch


class UnsafeCheckpoint(ValueError):
    """A checkpoint file references code outside what its format needs: refused, never loaded.

    Not a damaged file: fallback to an older checkpoint must not pass over it silently."""


_TRUST = {"on": False}


def trust_checkpoints(on: bool) -> None:
    """`--trust-checkpoint`: let third-party checkpoint formats (DeepSpeed files this project did
    not write) load with their own, unrestricted loaders."""
    _TRUST["on"] = bool(on)


def trusted() -> bool:
    return _TRUST["on"]


def _refusal(path, name: str, hint: str = "") -> UnsafeCheckpoint:
    return UnsafeCheckpoint(f"{path}: refusing to load: it references {name}, which a flip-scale checkpoint "
                            f"never contains (unpickling it could run code){hint}")


# -- torch.load, restricted --------------------------------------------------------------------
# np.random.get_state() is a tuple holding a uint32 array; train states written before the JSON
# codec pickled it directly. numpy's reconstruct builds arrays only (object arrays' items come
# through the same restricted unpickler).
OLD_TRAIN_STATE_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType]


def unsupported_global(err: Exception) -> str | None:
    """The name torch's weights_only unpickler refused, from its error text ("Unsupported
    global: GLOBAL os.system ...", "unsupported GLOBAL posix.system whose module ..."), else None."""
    m = re.search(r"GLOBAL ([\w.]+)", str(err))
    return m.group(1).rstrip(".") if m else None


def load_torch_file(path, allow=(), map_location="cpu", hint: str = ""):
    """torch.load(weights_only=True) with `allow` added to torch's allow-list; a file that needs
    more is refused with one line (UnsafeCheckpoint), any other failure propagates as it is."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        name = unsupported_global(e)
        if name is None:
            raise
        raise _refusal(path, name, hint) from None


@contextlib.contextmanager
def forced_weights_only(allow=()):
    """Every torch.load inside is weights_only=True (TORCH_FORCE_WEIGHTS_ONLY_LOAD overrides the
    weights_only=False that DeepSpeed passes), with `allow` added to the allow-list."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(list(allow)):
            yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


# -- DCP's .metadata ---------------------------------------------------------------------------
# Every global a DCP .metadata pickle written by torch 2.14 references (FSDP2 model + AdamW
# state, fp32 and bf16): the metadata dataclasses, torch.Size, the layout decoder and the path
# the checkpoint was saved to. dtypes (torch.float32, torch.bfloat16, ...) are allowed by kind.
DCP_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only DCP_METADATA_GLOBALS (and torch dtypes)."""

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if name in DCP_METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise _refusal(self.source, f"{module}.{name}")


def load_dcp_metadata(stream, source) -> object:
    """DCP's Metadata object from its .metadata pickle, with RestrictedUnpickler; also checks
    that every storage file it names lies inside the checkpoint folder."""
    try:
        metadata = RestrictedUnpickler(stream, source).load()
    except UnsafeCheckpoint:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or garbled pickle raises many types
        raise ValueError(f"{source}: unreadable DCP metadata ({type(e).__name__}: {e})") from None
    from torch.distributed.checkpoint.metadata import Metadata

    if not isinstance(metadata, Metadata):
        raise _refusal(source, type(metadata).__name__)
    for info in (metadata.storage_data or {}).values():
        rel = getattr(info, "relative_path", "")
        if not isinstance(rel, str) or "/" in rel or "\\" in rel or rel in ("", ".", ".."):
            raise UnsafeCheckpoint(f"{source}: refusing to load: a storage file {rel!r} lies outside "
                                   f"the checkpoint folder")
    return metadata


# -- train state: JSON + tensors -------------------------------------------------------------
STATE_FORMAT = "flip_scale.state/1"


def _encode(obj, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).view(np.uint8).reshape(-1).copy())
        return {"__ndarray__": key, "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError(f"train state keys must be strings: {list(obj)[:5]}")
        return {"__dict__": {k: _encode(v, tensors) for k, v in obj.items()}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"train state holds a {type(obj).__name__}, which the JSON codec does not store")


def _decode(obj, tensors: dict):
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        raw = tensors[obj["__ndarray__"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}


def save_state(obj, path) -> None:
    """Nested dicts/lists/tuples of plain values, tensors and numpy arrays -> one .pt file whose
    pickle holds only a JSON string and a dict of tensors."""
    tensors: dict = {}
    text = json.dumps(_encode(obj, tensors))
    torch.save({"format": STATE_FORMAT, "json": text, "tensors": tensors}, path)


def load_state(path):
    """The object `save_state` wrote; also reads a train state pickled directly by earlier
    versions (plain containers, tensors, numpy RNG arrays), still with weights_only=True."""
    raw = load_torch_file(path, allow=OLD_TRAIN_STATE_GLOBALS)
    if isinstance(raw, dict) and raw.get("format") == STATE_FORMAT:
        return _decode(json.loads(raw["json"]), raw["tensors"])
    return raw  # the earlier format: already plain data


def read_bytes_item(value: io.BytesIO):
    """A DCP non-tensor item (optimizer hyper-parameters): torch.save'd plain values."""
    return load_torch_file(value)
