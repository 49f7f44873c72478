"""The one in-memory view of a checkpoint that every command works on.

A format reader (``ckptkit.formats``) turns bytes on disk into a tree of plain values whose
tensor leaves are lazy `TensorRef`s; the family recogniser (``ckptkit.families``) finds the
model, optimizer, scheduler... in that tree and maps the family's progress counters to one
`Progress`. Nothing here reads tensor bytes until asked (`TensorRef.read_bytes`).
"""
from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from ckptkit.core.byte_source import FileBytes
from ckptkit.core.dtypes import DType, dtype_named
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.core.findings import Finding, Severity
from ckptkit.core.progress import Progress, ResumePrediction, ordinal

# Findings and progress have modules of their own; these names stay importable from here too, as
# the one module that describes a whole checkpoint.
__all__ = ["ByteRange", "Checkpoint", "Finding", "FormatDetails", "MemberFile", "Progress", "ResumePrediction",
           "Severity", "StorageRef", "TensorChunk", "TensorRef", "contiguous_stride", "iter_tensor_values",
           "iter_tensors", "make_tensor", "mapped_bytes", "ordinal", "release_mapped_pages"]


@dataclass(frozen=True)
class ByteRange:
    """Where a storage's bytes lie: `length` bytes of `path` starting at `offset`; `source`: the
    map of `path` owned by the checkpoint that found the range (None: mapped when read)."""

    path: Path
    offset: int
    length: int
    source: FileBytes | None = field(default=None, compare=False, repr=False)

    def at(self, offset: int, length: int) -> ByteRange:
        """Another range of the same file, read through the same map."""
        return ByteRange(self.path, offset, length, self.source)

    def mapped(self) -> memoryview:
        """The whole file through this range's map (a map of its own when it has none)."""
        if self.source is None:
            object.__setattr__(self, "source", FileBytes(self.path))   # frozen: the map is a cache
        assert self.source is not None
        return self.source.view()


class StorageRef:
    """One storage record of a checkpoint (a torch storage, or a safetensors tensor's bytes).

    Tensors that share a storage in the file share one StorageRef, so storage sharing
    (views, tied weights) survives reading. The byte position is resolved lazily because for
    zip archives it needs a read of the member's local header. Slots: a checkpoint of 100,000
    tensors holds 100,000 of these, and memory should follow the index, not a dict per record.
    """

    __slots__ = ("key", "dtype", "numel", "location", "stored_nbytes", "_locate", "_locate_key", "_range")

    def __init__(self, key: str, dtype: DType, numel: int, location: str,
                 locate: Callable[[], ByteRange] | None = None, stored_nbytes: int | None = None,
                 where: ByteRange | None = None, locate_key: Callable[[str], ByteRange] | None = None) -> None:
        """`locate`: finds the bytes when first asked; `where`: they are known already;
        `locate_key`: finds them from this record's key, one locator shared by every record of a
        file (a closure per record would cost ~130 bytes and two collector-tracked objects each)."""
        self.key = key
        self.dtype = dtype
        self.numel = numel                # elements declared by the pickle / header
        self.location = location          # device it was saved from: "cpu", "cuda:0"
        self.stored_nbytes = stored_nbytes  # bytes actually present in the file, when known
        self._locate = locate
        self._locate_key = locate_key
        self._range: ByteRange | None = where

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def shared_locator(self) -> Callable[[str], ByteRange] | None:
        """The locator shared by every record of its file (`locate_key`) that finds, or found,
        these bytes: a reader that knows a faster way for many records at once (`--deep`) asks
        its format."""
        return self._locate_key

    @property
    def found(self) -> ByteRange | None:
        """Where the bytes lie once found (or given to it); None while they have not been."""
        return self._range

    def byte_range(self) -> ByteRange:
        if self._range is None:
            if self._locate_key is not None:
                self._range = self._locate_key(self.key)
            else:
                assert self._locate is not None, "a StorageRef needs `locate`, `locate_key` or `where`"
                self._range = self._locate()
        return self._range

    def read_bytes(self, start: int = 0, length: int | None = None) -> memoryview:
        """The storage's bytes (or a slice of them), memory-mapped: pages are read on demand."""
        where = self.byte_range()
        length = where.length - start if length is None else length
        if start < 0 or start + length > where.length:
            raise CorruptCheckpointError(where.path, f"storage {self.key!r}: bytes {start}..{start + length} "
                                         f"lie outside its record of {where.length} bytes")
        if length == 0:
            return memoryview(b"")
        view = where.mapped()[where.offset + start: where.offset + start + length]
        if len(view) != length:
            raise CorruptCheckpointError(where.path, f"storage {self.key!r}: the file ends {length - len(view)} "
                                         "bytes before the storage's last byte: truncated")
        return view

    def iter_chunks(self, chunk_size: int = 16 << 20, start: int = 0,
                    length: int | None = None) -> Iterator[bytes]:
        """The storage's bytes (or `length` bytes from `start`) in chunks, read with pread: memory
        stays at one chunk, and (unlike mmap) pages read this way never count towards this
        process's resident set."""
        where = self.byte_range()
        length = where.length - start if length is None else length
        if start < 0 or start + length > where.length:
            raise CorruptCheckpointError(where.path, f"storage {self.key!r}: bytes {start}..{start + length} "
                                         f"lie outside its record of {where.length} bytes")
        fd = os.open(where.path, os.O_RDONLY)
        try:
            done = 0
            while done < length:
                want = min(chunk_size, length - done)
                chunk = os.pread(fd, want, where.offset + start + done)
                if len(chunk) != want:
                    raise CorruptCheckpointError(where.path, f"storage {self.key!r}: file ends inside its "
                                                 f"record (truncated)")
                yield chunk
                done += want
        finally:
            os.close(fd)

    def __repr__(self) -> str:
        return f"StorageRef({self.key!r}, {self.dtype.name}, numel={self.numel})"


def mapped_bytes(where: ByteRange) -> memoryview:
    """The bytes of a range of a file, memory-mapped (pages are read when touched)."""
    view = where.mapped()
    if where.offset < 0 or where.offset + where.length > len(view):
        raise CorruptCheckpointError(where.path, f"bytes {where.offset}..{where.offset + where.length} lie "
                                     f"past the end of the file ({len(view)} bytes): truncated")
    return view[where.offset: where.offset + where.length]


def release_mapped_pages(where: ByteRange) -> None:
    """Unmap the pages of `where` from this process (the OS page cache keeps them); see
    `FileBytes.release`. A later read of the same bytes simply maps them in again."""
    if where.source is not None:
        where.source.release(where.offset, where.length)


# One point of a history section: a number (a loss curve) or a per-step dict (a training log).
HistoryEntry = int | float | dict[str, Any]
# A section as the file holds it (a decoded pickle or JSON subtree, e.g. one optimizer's state
# dict or Lightning's list of them): its shape is the writer's, so code narrows it before use
# (views.sections.is_optimizer_state, isinstance).
Section = object

_SCALAR_FORMATS = {"float64": "d", "float32": "f", "float16": "e", "bfloat16": "H", "int64": "q",
                   "int32": "i", "int16": "h", "int8": "b", "uint8": "B", "bool": "?"}


@dataclass(slots=True)
class TensorRef:
    """A tensor as described by the checkpoint: dtype, shape, stride, where its bytes are.
    (Slots, as StorageRef's: one per tensor record.)"""

    dtype: DType
    shape: tuple[int, ...]
    stride: tuple[int, ...]          # one per dimension of `shape`: every reader checks that
    storage: StorageRef
    storage_offset: int = 0          # in elements
    requires_grad: bool = False
    is_parameter: bool = False
    subclass: str | None = None      # qualified name of a tensor subclass, if pickled as one
    # A DTensor's logical (global) shape: this tensor is the local part of it that the saving
    # rank held (equal to `shape` when nothing was sharded: one rank, or a replicated tensor).
    global_shape: tuple[int, ...] | None = None

    @property
    def is_shard(self) -> bool:
        """A DTensor's local part that is less than the whole (a sharded placement on >1 rank)."""
        return self.global_shape is not None and self.global_shape != self.shape

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def is_contiguous(self) -> bool:
        if self.numel == 0:          # as in torch: an empty tensor is contiguous whatever its strides
            return True
        expected = 1
        for size, stride in zip(reversed(self.shape), reversed(self.stride), strict=True):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def element_span(self) -> tuple[int, int]:
        """First and one-past-last storage element this tensor touches ((o, o) when empty)."""
        if self.numel == 0:
            return self.storage_offset, self.storage_offset
        last = self.storage_offset + sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=True))
        return self.storage_offset, last + 1

    def fits_storage(self) -> bool:
        if self.numel == 0:     # an empty view touches no element, whatever its offset
            return self.storage_offset >= 0
        if self.storage_offset == 0 and self.is_contiguous():   # the common case, without the span
            return self.nbytes <= self.storage.nbytes
        lo, hi = self.element_span()   # in this tensor's elements; an untyped storage counts bytes
        return lo >= 0 and hi * self.dtype.itemsize <= self.storage.nbytes

    def read_bytes(self) -> memoryview:
        """The raw bytes of the elements this tensor spans (its own bytes when contiguous)."""
        if self.numel == 0:     # its offset may lie past the end of an empty storage
            return memoryview(b"")
        lo, hi = self.element_span()
        size = self.dtype.itemsize
        return self.storage.read_bytes(lo * size, (hi - lo) * size)

    def scalar_value(self) -> float | int | bool | None:
        """The value of a one-element tensor (an optimizer's `step`), read without torch."""
        if self.numel != 1:
            return None
        fmt = _SCALAR_FORMATS.get(self.dtype.name)
        if fmt is None:
            return None
        # Its one element is storage element `storage_offset`, whatever the strides (every size
        # is 1): read straight, as an optimizer's 20,000 `step` tensors are, one after another.
        itemsize = self.dtype.itemsize
        raw = bytes(self.storage.read_bytes(self.storage_offset * itemsize, itemsize))
        value: float | int | bool      # what the formats in _SCALAR_FORMATS unpack to
        if self.dtype.name == "bfloat16":     # the high half of a float32
            value = struct.unpack("<f", b"\x00\x00" + raw)[0]
        else:
            value = struct.unpack("<" + fmt, raw)[0]
        return value

    def to_torch(self) -> Any:
        """A torch.Tensor with this tensor's values (a copy; imports torch)."""
        import torch

        tdtype = getattr(torch, self.dtype.name)
        lo, _ = self.element_span()
        raw = self.read_bytes()
        if len(raw) == 0:
            return torch.empty(self.shape, dtype=tdtype)
        flat = torch.frombuffer(bytearray(raw), dtype=tdtype)
        return torch.as_strided(flat, self.shape, self.stride, self.storage_offset - lo).clone()

    def describe(self) -> str:
        return f"{self.dtype.name}[{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class MemberFile:
    """One file of a folder checkpoint, and what it holds."""

    name: str                 # path relative to the folder, e.g. "optimizer.pt"
    size_bytes: int
    role: str                 # "model weights", "optimizer", "trainer state", ...
    format: str | None = None  # format ckptkit read it as; None when not read (unknown, unreadable)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size_bytes": self.size_bytes, "role": self.role, "format": self.format}


@dataclass(frozen=True)
class TensorChunk:
    """One stored piece of a tensor that is saved in chunks (torch.distributed.checkpoint)."""

    offsets: tuple[int, ...]   # where the chunk starts in the global tensor, per dimension
    sizes: tuple[int, ...]
    file: str                  # member file holding its bytes
    byte_offset: int           # where its stored item starts in that file
    length: int                # bytes of the stored item (a torch.save archive, or raw bytes)
    tensor: TensorRef | None = field(default=None, compare=False, repr=False)   # the chunk's values, lazily

    def to_json(self) -> dict[str, Any]:
        return {"offsets": list(self.offsets), "sizes": list(self.sizes), "file": self.file,
                "byte_offset": self.byte_offset, "length": self.length}


@dataclass
class FormatDetails:
    """What a format reader learned about how the file is laid out (not the file's own metadata).

    Typed fields rather than strings in `Checkpoint.metadata`: code that needs the zip archive's
    folder name asks `details.zip_prefix`, and `metadata` stays what the file itself says.
    """

    zip_prefix: str | None = None        # torch zip: the folder of <prefix>/data.pkl in the archive
    storage_records: int | None = None   # torch zip / legacy: storage records in the file
    dcp_version: str | None = None       # DCP: the version its .metadata records
    dcp_tensors: int | None = None       # DCP: entries with tensor chunks
    dcp_save_id: str | None = None       # DCP: the save id its storage_meta records, when any
    # torch zip saved under torch.serialization.skip_data(): the tensor bytes are left to a later
    # pass to write, and their records carry no CRC-32 (`zip_directory.skip_data_archive`)
    skip_data: bool = False

    def shown(self) -> dict[str, str]:
        """As `inspect` lists them under "Format metadata" (names kept from before they were typed)."""
        named = {"zip_prefix": self.zip_prefix, "storage_records": self.storage_records,
                 "dcp_version": self.dcp_version, "tensors": self.dcp_tensors, "save_id": self.dcp_save_id}
        if self.skip_data:
            named["tensor_bytes"] = "left to a later pass (torch.serialization.skip_data), without CRC-32s"
        return {k: str(v) for k, v in named.items() if v is not None}


@dataclass
class Checkpoint:
    """A read checkpoint: the decoded tree plus its recognised parts.

    `tree` is everything the file(s) hold; the section fields point into it. For folder
    formats `tree` is a dict with one entry per member file.
    """

    path: Path
    format: str                      # on-disk format: "torch-zip", "torch-legacy", "safetensors", ...
    family: str                      # layout family: "recsys", "retrieval", "experiment", ...
    size_bytes: int
    tree: Any
    model: dict[str, TensorRef] = field(default_factory=dict)
    optimizer: Section = None
    scheduler: Section = None
    scaler: Section = None
    rng: Section = None
    config: Section = None
    metrics: dict[str, int | float] = field(default_factory=dict)     # scalars only (never a bool)
    histories: dict[str, list[HistoryEntry]] = field(default_factory=dict)   # loss curves, logs
    extra: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    findings: list[Finding] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)   # section -> key or member file it came from
    files: list[Path] = field(default_factory=list)         # every file the checkpoint consists of
    metadata: dict[str, str] = field(default_factory=dict)  # the file's own metadata (safetensors __metadata__)
    details: FormatDetails = field(default_factory=FormatDetails)   # how the reader found it laid out
    members: list[MemberFile] = field(default_factory=list)  # folder formats: every member file
    chunks: dict[str, list[TensorChunk]] = field(default_factory=dict)  # chunked tensors (DCP): key -> chunks

    def tensors(self) -> Iterator[tuple[str, TensorRef]]:
        """Every tensor in the checkpoint with its dotted key path, model and optimizer alike."""
        return iter_tensors(self.tree)

    def close(self) -> None:
        """Unmap the files this checkpoint's tensors were read through (dropping it does too)."""
        closed: set[int] = set()
        for _, tensor in self.tensors():
            where = tensor.storage._range
            if where is not None and where.source is not None and id(where.source) not in closed:
                closed.add(id(where.source))
                where.source.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_tensors(tree: Any, prefix: str = "") -> Iterator[tuple[str, TensorRef]]:
    """Every tensor below `tree` with its dotted key path, depth first in insertion order.

    Lazy, one run of tensors at a time (`_tensor_runs`) chained in C: a state dict's 100,000
    pairs are not passed on one by one through a Python frame (`list(...)` of it extends the list
    a run at a time).
    """
    return chain.from_iterable(_tensor_runs(tree, prefix))


def iter_tensor_values(tree: Any) -> Iterator[TensorRef]:
    """`iter_tensors` without the key paths: the same tensors in the same order, for a pass that
    needs a tensor's path only when it finds something (100,000 paths cost more than the pass)."""
    return chain.from_iterable(_tensor_runs(tree, "", paths=False))


# What a tree's tensors can hide in: anything else (strings, numbers...) is a leaf with no tensor.
_NODES = (TensorRef, dict, list, tuple)


def _tensor_runs(tree: Any, prefix: str, paths: bool = True) -> Iterator[Iterable[Any]]:
    """`iter_tensors`' pairs (`paths`; else the tensors alone), in runs: one per state dict of
    tensors, one per lone tensor.

    Iterative: a recursive generator pays every level's `yield from` for every tensor, which
    at 100,000 tensors four levels deep cost more than everything a check does with them.
    """
    stack: list[tuple[str, Any]] = [(prefix, tree)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, TensorRef):
            yield ((where, node),) if paths else (node,)
        elif isinstance(node, dict):
            kinds = set(map(type, node.values()))       # C-level: one pass, not one isinstance per value
            if kinds == {TensorRef} and set(map(type, node)) == {str}:
                # A state dict of tensors (a safetensors file, a shard): its paths made in C, not one by one.
                yield (zip(map(f"{where}.".__add__, node) if where else node, node.values(), strict=True) if paths
                       else node.values())
            elif any(issubclass(kind, _NODES) for kind in kinds):    # else only leaves (a shard index's names)
                items = [(f"{where}.{k}" if where else str(k), v) for k, v in node.items() if isinstance(v, _NODES)]
                stack.extend(reversed(items))
        elif isinstance(node, (list, tuple)):
            items = [(f"{where}.{i}" if where else str(i), v) for i, v in enumerate(node) if isinstance(v, _NODES)]
            stack.extend(reversed(items))


def make_tensor(dtype_name: str | DType, shape: tuple[int, ...], storage: StorageRef) -> TensorRef:
    """A contiguous tensor covering `storage` from element 0 (safetensors, DCP chunks)."""
    dtype = dtype_named(dtype_name) if isinstance(dtype_name, str) else dtype_name
    return TensorRef(dtype, tuple(shape), contiguous_stride(shape), storage)


def contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides, in elements, of a contiguous (row-major) tensor of `shape`."""
    stride: list[int] = []
    acc = 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))
