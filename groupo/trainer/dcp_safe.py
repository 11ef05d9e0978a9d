"""Read a torch.distributed.checkpoint (DCP) folder without unpickling arbitrary objects.

DCP's FileSystemReader reads the folder's `.metadata` with a plain `pickle.load`, so a crafted
`.metadata` in a run directory would run code on `--resume` under torchrun. `SafeReader` reads
it with an unpickler that builds only DCP's own metadata classes, torch.Size, dtypes, layouts
and paths: the types DCP itself writes there (checked against torch 2.13's `dcp.save`). The
tensor shards are read by DCP with `torch.load(weights_only=True)` already.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader

# Named one by one: a module name would also reach everything that module imports (`os.system`).
_META = "torch.distributed.checkpoint.metadata"
_GLOBALS = {(_META, n) for n in ("ChunkStorageMetadata", "_MEM_FORMAT_ENCODING", "TensorProperties",
                                 "TensorStorageMetadata", "BytesStorageMetadata", "StorageMeta", "Metadata",
                                 "MetadataIndex")} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
    ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict")}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a type a DCP .metadata file holds")


def load_metadata(raw: bytes) -> Any:
    """DCP metadata from the bytes of a `.metadata` file; UnpicklingError for any other object."""
    return _MetadataUnpickler(io.BytesIO(raw)).load()


class SafeReader(FileSystemReader):
    """FileSystemReader whose `.metadata` is read by `load_metadata`."""

    def read_metadata(self, *args: Any, **kwargs: Any):
        from torch.distributed.checkpoint.metadata import StorageMeta

        path = Path(self._get_metadata_path(kwargs.get("rank")))
        metadata = load_metadata(path.read_bytes())
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata
