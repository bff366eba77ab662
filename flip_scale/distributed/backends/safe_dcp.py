"""DCP reading without unpickling anything unrestricted (see flip_scale/safe_load.py).

DCP has two pickles: `.metadata` (read with `pickle.load` by FileSystemReader) and the non-tensor
items of a state dict (the optimizer's hyper-parameters, read with `torch.load(weights_only=False)`
by DefaultLoadPlanner.load_bytes). The reader and planners below replace exactly those two calls;
tensor data is already read with weights_only=True by DCP itself.
"""
from __future__ import annotations

from pathlib import Path

from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import StorageMeta
from torch.distributed.checkpoint._traverse import set_element

from ...safe_load import load_dcp_metadata, read_bytes_item


class SafeFileSystemReader(FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = load_dcp_metadata(stream, Path(self.path) / Path(str(path)).name)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def check_metadata(ckpt_dir) -> None:
    """Read .metadata with the restricted unpickler before DCP does: DCP wraps a reader's
    exception in a multi-line CheckpointException, and a refusal must stay one clear line."""
    path = Path(ckpt_dir) / ".metadata"
    with open(path, "rb") as stream:
        load_dcp_metadata(stream, path)


class _SafeBytes:
    def load_bytes(self, read_item, value) -> None:
        obj = read_bytes_item(value)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class SafeLoadPlanner(_SafeBytes, DefaultLoadPlanner):
    """DefaultLoadPlanner whose non-tensor items load with weights_only=True."""


class SafeEmptyStateDictLoadPlanner(_SafeBytes, _EmptyStateDictLoadPlanner):
    """Reads every item of the checkpoint (a full state dict on one process), safely."""
