"""A checkpoint's DCP metadata read as data: an allow-list unpickler and a checked Metadata.

torch.distributed.checkpoint stores ``.metadata`` as a pickle and reads it with a plain
``pickle.load`` (``FileSystemReader.read_metadata``): a crafted file runs code on every rank
that resumes from it. PyTorch treats checkpoints as trusted; this package does not. Here
``.metadata`` is unpickled by an ``Unpickler`` whose ``find_class`` admits only what DCP
itself pickles (its metadata dataclasses and enum, ``_StorageInfo``, torch's Size, dtypes,
layouts, devices and memory formats, a path) and refuses anything else by its
``module.name``, so no callable of the file's choosing is ever reached.

The unpickled object is then checked for the shape this package writes: tensors only (a
byte item, ``BytesStorageMetadata``, would be read by DCP with ``torch.load`` with ``weights_only=False``,
and ``io.save_checkpoint`` never writes one), chunks inside their tensors, storage entries
naming plain files of the checkpoint, no stream transforms. ``SafeFileSystemReader`` hands
DCP the checked object, so DCP never opens ``.metadata`` itself (nor falls back to per-rank
metadata files when it cannot).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Collection, Optional

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (BytesStorageMetadata, ChunkStorageMetadata, Metadata,
                                                   MetadataIndex, StorageMeta, TensorProperties,
                                                   TensorStorageMetadata)

from dlrm_dist.checkpoint.manifest import CheckpointError

METADATA_FILE = ".metadata"  # DCP's name for the global metadata file
_DCP = "torch.distributed.checkpoint"
ALLOWED = frozenset({  # "module.name" of everything torch 2.13's DCP pickles into .metadata
    f"{_DCP}.metadata.Metadata", f"{_DCP}.metadata.MetadataIndex", f"{_DCP}.metadata.TensorStorageMetadata",
    f"{_DCP}.metadata.ChunkStorageMetadata", f"{_DCP}.metadata.TensorProperties",
    f"{_DCP}.metadata.BytesStorageMetadata",  # admitted so that validate() can name the item it refuses
    f"{_DCP}.metadata.StorageMeta", f"{_DCP}.metadata._MEM_FORMAT_ENCODING", f"{_DCP}.filesystem._StorageInfo",
    "torch.Size", "torch.device",
    "torch.serialization._get_layout",  # torch.layout's reducer: a lookup among torch's layouts by name
    "pathlib.PosixPath", "pathlib.PurePosixPath", "pathlib._local.PosixPath",  # StorageMeta.checkpoint_id
    "collections.OrderedDict",
})
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)  # pickled as plain "torch.<name>" globals


class RefusedClass(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list."""

    def __init__(self, qualified: str) -> None:
        super().__init__(qualified)
        self.qualified = qualified


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata; any other global is refused by its ``module.name``."""

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        if qualified in ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and "." not in name and isinstance(getattr(torch, name, None), _TORCH_VALUES):
            return getattr(torch, name)
        raise RefusedClass(qualified)


def unpickle_metadata(data: bytes, origin: str) -> Metadata:
    """``data`` (a .metadata file's bytes) as a checked Metadata; ``origin`` names the file in errors."""
    try:
        value = MetadataUnpickler(io.BytesIO(data)).load()
    except RefusedClass as e:
        raise CheckpointError(
            f"{origin}: refusing to unpickle {e.qualified!r}: a checkpoint's metadata may hold only DCP's metadata "
            "classes and torch's Size/dtype/layout/device; this file was crafted or damaged, or is not a DCP "
            "checkpoint") from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes fail in arbitrary ways; none of them is ours to raise
        raise CheckpointError(f"{origin}: not a readable DCP metadata file ({type(e).__name__}: {e})") from None
    validate(value, origin)
    return value


def read_metadata(directory: str | Path, files: Optional[Collection[str]] = None) -> Metadata:
    """The checked metadata of checkpoint ``directory``; ``files``, if given, are the only data files it may name."""
    path = Path(directory) / METADATA_FILE
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"{path}: no readable DCP metadata ({type(e).__name__}: {e.strerror or e})") from None
    metadata = unpickle_metadata(data, str(path))
    if files is not None:
        named = sorted({info.relative_path for info in metadata.storage_data.values()} - set(files))
        if named:
            raise CheckpointError(f"{path} names data files the manifest does not list: {', '.join(named)}")
    _check_extents(Path(directory), metadata)
    return metadata


def _check_extents(directory: Path, metadata: Metadata) -> None:
    """Every stored item lies inside its file (else DCP fails deep inside torch.load, naming no file)."""
    sizes: dict[str, int] = {}
    for index, info in metadata.storage_data.items():
        name = info.relative_path
        if name not in sizes:
            try:
                sizes[name] = (directory / name).stat().st_size
            except OSError as e:
                raise CheckpointError(f"{directory / name}: named by {directory / METADATA_FILE} but cannot be read "
                                      f"({type(e).__name__}: {e.strerror or e})") from None
        if info.offset + info.length > sizes[name]:
            raise CheckpointError(f"{directory / name}: {sizes[name]} bytes, but {METADATA_FILE} places "
                                  f"{index.fqn!r} at bytes {info.offset}..{info.offset + info.length} (cut short)")


class SafeFileSystemReader(FileSystemReader):
    """A FileSystemReader that serves metadata already read and checked by :func:`read_metadata`."""

    def __init__(self, directory: str | Path, metadata: Metadata) -> None:
        super().__init__(str(directory))
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:  # DCP's fallback to per-rank metadata: this package writes none
            raise CheckpointError(f"{self.path}: per-rank DCP metadata is not read")
        if self._metadata.storage_meta is None:
            self._metadata.storage_meta = StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata


# -- the shape of what this package writes -------------------------------------------------------

def _fail(origin: str, what: str) -> None:
    raise CheckpointError(f"{origin}: malformed DCP metadata: {what}")


def _is_size(x: Any) -> bool:
    return isinstance(x, torch.Size) and all(isinstance(n, int) and n >= 0 for n in x)


def _check_tensor(key: str, entry: TensorStorageMetadata, origin: str) -> None:
    props = getattr(entry, "properties", None)
    if not isinstance(props, TensorProperties) or not isinstance(getattr(props, "dtype", None), torch.dtype):
        _fail(origin, f"{key!r} has no tensor dtype")
    if not _is_size(getattr(entry, "size", None)):
        _fail(origin, f"{key!r} has no tensor size")
    chunks = getattr(entry, "chunks", None)
    if not isinstance(chunks, list):
        _fail(origin, f"{key!r} has no chunk list")
    for chunk in chunks:
        if not (isinstance(chunk, ChunkStorageMetadata) and _is_size(chunk.offsets) and _is_size(chunk.sizes)
                and len(chunk.offsets) == len(chunk.sizes) == len(entry.size)
                and all(o + s <= n for o, s, n in zip(chunk.offsets, chunk.sizes, entry.size))):
            _fail(origin, f"{key!r} has a chunk outside its tensor of size {list(entry.size)}")


def _check_storage(index: Any, info: Any, origin: str) -> None:
    if not isinstance(index, MetadataIndex) or not isinstance(index.fqn, str):
        _fail(origin, f"storage key {index!r} is not a MetadataIndex")
    if not isinstance(info, _StorageInfo):
        _fail(origin, f"storage of {index.fqn!r} is not a _StorageInfo")
    name = info.relative_path
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        _fail(origin, f"storage of {index.fqn!r} names {name!r}, not a file of the checkpoint")
    if not (isinstance(info.offset, int) and isinstance(info.length, int) and info.offset >= 0 and info.length >= 0):
        _fail(origin, f"storage of {index.fqn!r} has offset {info.offset!r} and length {info.length!r}")
    if getattr(info, "transform_descriptors", None):  # this package writes no stream transforms
        _fail(origin, f"storage of {index.fqn!r} asks for stream transforms {info.transform_descriptors!r}")


def validate(value: Any, origin: str) -> None:
    """Refuses anything but a Metadata of tensors stored in plain files of the checkpoint."""
    if not isinstance(value, Metadata):
        _fail(origin, f"it holds a {type(value).__name__}, not a Metadata")
    if not isinstance(value.state_dict_metadata, dict) or not isinstance(value.storage_data, dict):
        _fail(origin, "no state dict or storage tables")
    for key, entry in value.state_dict_metadata.items():
        if not isinstance(key, str):
            _fail(origin, f"state dict key {key!r} is not a string")
        if isinstance(entry, BytesStorageMetadata):
            raise CheckpointError(
                f"{origin}: {key!r} is a pickled byte item, which DCP would load with a full unpickler; "
                "dlrm_dist checkpoints store tensors only")
        if not isinstance(entry, TensorStorageMetadata):
            _fail(origin, f"{key!r} is a {type(entry).__name__}, not tensor metadata")
        _check_tensor(key, entry, origin)
    for index, info in value.storage_data.items():
        _check_storage(index, info, origin)
    planner = value.planner_data
    if planner is not None and not (isinstance(planner, dict) and all(
            isinstance(k, str) and isinstance(v, tuple) and all(isinstance(p, (str, int)) for p in v)
            for k, v in planner.items())):
        _fail(origin, "its key mappings are not tuples of names")
    if value.storage_meta is not None and not isinstance(value.storage_meta, StorageMeta):
        _fail(origin, f"storage_meta is a {type(value.storage_meta).__name__}")
