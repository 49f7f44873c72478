"""A tensor's elements as contiguous bytes, streamed one tensor at a time, optionally cast.

Writers (safetensors, torch zip) and the read-back verification of conversions use the same
producer, so what is written and what it is compared against are made the same way. Contiguous
tensors are streamed straight from their storage record with pread (no mmap: those pages would
count towards this process's resident set); views and non-contiguous tensors are gathered with
``torch.as_strided`` on that one tensor's span. Casting is torch's own ``Tensor.to`` (round to
nearest even), applied chunk by chunk.
"""
from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ckptkit.core.checkpoint import ByteRange, StorageRef, TensorRef
from ckptkit.core.dtypes import DType
from ckptkit.core.errors import CorruptCheckpointError

if TYPE_CHECKING:   # torch is imported where bytes are converted, never on the path of `inspect`
    import torch

CHUNK = 16 << 20   # a multiple of every itemsize, so chunks never split an element


def tensor_chunks(t: TensorRef, to: DType | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """The elements of `t` in row-major order as bytes (cast to `to` when given)."""
    cast = to if to != t.dtype else None
    if t.numel == 0:
        return
    if t.is_contiguous():
        size = t.dtype.itemsize
        chunks = t.storage.iter_chunks(chunk_size, t.storage_offset * size, t.nbytes)
        yield from (cast_bytes(c, t.dtype, cast) for c in chunks) if cast is not None else chunks
        return
    yield _gathered(t, cast)


def storage_chunks(storage: StorageRef, to: DType | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """A whole storage record's bytes, cast element-wise to `to` when given."""
    chunks = storage.iter_chunks(chunk_size)
    if to is None or to == storage.dtype:
        yield from chunks
    else:
        yield from (cast_bytes(c, storage.dtype, to) for c in chunks)


def cast_bytes(raw: bytes, src: DType, dst: DType) -> bytes:
    """Elements of dtype `src` in `raw`, converted to `dst` by torch."""
    import torch

    if not raw:
        return b""
    return _as_bytes(_frombuffer(raw, src).to(getattr(torch, dst.name)))


def _gathered(t: TensorRef, to: DType | None) -> bytes:
    """One non-contiguous tensor made contiguous: its span is read, then strided through."""
    import torch

    lo, hi = t.element_span()
    size = t.dtype.itemsize
    span = bytearray()
    for chunk in t.storage.iter_chunks(CHUNK, lo * size, (hi - lo) * size):
        span += chunk
    flat = _frombuffer(span, t.dtype)
    view = torch.as_strided(flat, t.shape, t.stride, t.storage_offset - lo)
    if to is not None:
        view = view.to(getattr(torch, to.name))
    return _as_bytes(view)


def _frombuffer(raw: bytes | bytearray, dtype: DType) -> torch.Tensor:
    import torch

    with warnings.catch_warnings():   # read-only bytes are fine: the tensor is never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(raw, dtype=getattr(torch, dtype.name))


def _as_bytes(tensor: torch.Tensor) -> bytes:
    import torch

    flat = tensor.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def same_bytes(a: Iterable[bytes], b: Iterable[bytes]) -> bool:
    """Whether two chunk streams hold the same bytes, whatever their chunk boundaries."""
    ia, ib = _non_empty(a), _non_empty(b)
    buf_a, buf_b = b"", b""
    while True:
        buf_a = buf_a or next(ia, b"")
        buf_b = buf_b or next(ib, b"")
        if not buf_a or not buf_b:
            return not buf_a and not buf_b
        n = min(len(buf_a), len(buf_b))
        # bytes == bytes is one memcmp; memoryview comparison goes element by element (10x slower).
        if (buf_a if n == len(buf_a) else buf_a[:n]) != (buf_b if n == len(buf_b) else buf_b[:n]):
            return False
        buf_a, buf_b = buf_a[n:], buf_b[n:]


def _non_empty(chunks: Iterable[bytes]) -> Iterator[bytes]:
    return (c for c in chunks if c)


def tensor_range(t: TensorRef) -> ByteRange | None:
    """Where a contiguous tensor's own bytes lie in its file (None for views that stride, and
    for storages produced on the fly)."""
    if not t.is_contiguous() or not on_disk(t.storage):
        return None
    where = t.storage.byte_range()
    start = t.storage_offset * t.dtype.itemsize
    if start + t.nbytes > where.length:
        return None
    return where.at(where.offset + start, t.nbytes)


def same_ranges(a: ByteRange, b: ByteRange, chunk_size: int = 1 << 20) -> bool:
    """Whether two byte ranges of files hold the same bytes: read into two reused buffers
    (no allocation per chunk) and compared with memcmp, a cache-sized chunk at a time."""
    if a.length != b.length:
        return False
    buf_a, buf_b = bytearray(chunk_size), bytearray(chunk_size)
    fd_a, fd_b = os.open(a.path, os.O_RDONLY), os.open(b.path, os.O_RDONLY)
    try:
        done = 0
        while done < a.length:
            n = min(chunk_size, a.length - done)
            if n < chunk_size:
                buf_a, buf_b = bytearray(n), bytearray(n)
            if os.preadv(fd_a, [buf_a], a.offset + done) != n or os.preadv(fd_b, [buf_b], b.offset + done) != n:
                return False
            if buf_a != buf_b:
                return False
            done += n
        return True
    finally:
        os.close(fd_a)
        os.close(fd_b)


def write_tensor(out: BinaryIO, t: TensorRef, to: DType | None = None) -> int:
    """Write the elements of `t` (cast to `to`) at `out`'s position; returns the bytes written.

    A contiguous tensor that needs no cast is copied file to file inside the kernel
    (os.copy_file_range, as cp does): no byte passes through this process.
    """
    where = tensor_range(t) if t.numel and (to is None or to == t.dtype) else None
    if where is not None and hasattr(os, "copy_file_range") and _copy_range(where.path, where.offset, out, t.nbytes):
        return t.nbytes
    written = 0
    for chunk in tensor_chunks(t, to):
        out.write(chunk)
        written += len(chunk)
    return written


def _copy_range(path: Path, offset: int, out: BinaryIO, length: int) -> bool:
    """copy_file_range `length` bytes of `path` from `offset` to `out`; False if the kernel or
    filesystem cannot (then nothing was written and the caller streams instead)."""
    out.flush()
    dst = out.fileno()
    position = out.tell()
    src = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < length:
            try:
                n = os.copy_file_range(src, dst, length - done, offset + done, position + done)
            except OSError as exc:
                if done == 0 and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    return False
                raise
            if n == 0:
                raise CorruptCheckpointError(path, "file ends inside a tensor's record (truncated)")
            done += n
    finally:
        os.close(src)
    out.seek(position + length)
    return True


class ProducedStorage(StorageRef):
    """A storage to be written whose bytes are produced rather than lying in one place of a file:
    a storage renamed or cast, or a tensor assembled from chunks.

    `write_torch_zip` copies storages through `byte_range().length` and `iter_chunks()`; here
    `byte_range()` names the file the bytes come from and the length produced, and its offset
    means nothing: the bytes are only to be had from `iter_chunks()`, a chunk at a time.
    """

    def __init__(self, key: str, dtype: DType, numel: int, location: str, origin: Path) -> None:
        nbytes = numel * dtype.itemsize
        super().__init__(key, dtype, numel, location, locate=lambda: ByteRange(origin, 0, nbytes),
                         stored_nbytes=nbytes)

    def produce(self, chunk_size: int) -> Iterator[bytes]:
        raise NotImplementedError

    def iter_chunks(self, chunk_size: int = CHUNK, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        length = self.nbytes - start if length is None else length
        if start == 0 and length == self.nbytes:
            return self.produce(chunk_size)
        return _sliced(self.produce(chunk_size), start, length)

    def read_bytes(self, start: int = 0, length: int | None = None) -> memoryview:
        return memoryview(b"".join(self.iter_chunks(CHUNK, start, length)))


def _sliced(chunks: Iterator[bytes], start: int, length: int) -> Iterator[bytes]:
    position = 0
    for chunk in chunks:
        lo, hi = max(start - position, 0), min(start + length - position, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        position += len(chunk)
        if position >= start + length:
            return


def on_disk(storage: StorageRef) -> bool:
    """Whether `storage.byte_range()` is where its bytes really lie (not produced on the fly)."""
    return not isinstance(storage, ProducedStorage)


class DerivedStorage(ProducedStorage):
    """Another storage renamed (`key`) and/or cast element-wise to `dtype`, a chunk at a time.

    `elements`: the dtype the source's bytes hold, when the storage itself does not say it.
    torch saves the tensors of newer dtypes (float8, uint16...) on untyped byte storages, so
    such a storage's own dtype is uint8 and only its tensors know how to read the bytes: a cast
    must read float8 elements, not their bytes as uint8 numbers.
    """

    def __init__(self, source: StorageRef, key: str, dtype: DType | None = None,
                 elements: DType | None = None) -> None:
        self.elements = elements if dtype is not None and elements is not None else source.dtype
        numel = source.numel * source.dtype.itemsize // self.elements.itemsize
        super().__init__(key, dtype or source.dtype, numel, source.location, source.byte_range().path)
        self.source = source

    @property
    def casts(self) -> bool:
        return self.dtype != self.elements

    def produce(self, chunk_size: int) -> Iterator[bytes]:
        if not self.casts:
            return self.source.iter_chunks(chunk_size)
        # Cast chunks of `chunk_size` output bytes: read that many source elements at a time.
        elements = max(1, chunk_size // self.dtype.itemsize)
        return (cast_bytes(c, self.elements, self.dtype)
                for c in self.source.iter_chunks(elements * self.elements.itemsize))


class AssembledStorage(ProducedStorage):
    """One whole tensor put together from chunks saved separately (DCP shards), in row-major
    order. Chunks that split only the first dimension are streamed one after the other; other
    layouts are assembled in memory with torch, one tensor at a time."""

    def __init__(self, key: str, dtype: DType, shape: tuple[int, ...], origin: Path,
                 pieces: list[tuple[tuple[int, ...], TensorRef]]) -> None:
        numel = 1
        for d in shape:
            numel *= d
        super().__init__(key, dtype, numel, "cpu", origin)
        self.shape = shape
        self.pieces = sorted(pieces, key=lambda p: tuple(p[0]))
        for offsets, t in self.pieces:
            if len(offsets) != len(shape) or len(t.shape) != len(shape):
                raise CorruptCheckpointError(origin, f"tensor {key!r} has {len(shape)} dimensions but a chunk at "
                                             f"offsets {list(offsets)} has {len(t.shape)}")
        covered = sum(t.numel for _, t in self.pieces)
        if covered != numel:
            raise CorruptCheckpointError(origin, f"tensor {key!r}: its chunks hold {covered} of {numel} elements")

    def produce(self, chunk_size: int) -> Iterator[bytes]:
        if all(all(o == 0 for o in offsets[1:]) and t.shape[1:] == self.shape[1:] for offsets, t in self.pieces):
            for _, t in self.pieces:
                yield from tensor_chunks(t, None, chunk_size)
            return
        yield self._assembled()

    def _assembled(self) -> bytes:
        import torch

        whole = torch.empty(self.shape, dtype=getattr(torch, self.dtype.name))
        for offsets, t in self.pieces:
            # One offset per dimension (checked when the pieces were given).
            whole[tuple(slice(o, o + n) for o, n in zip(offsets, t.shape, strict=True))] = t.to_torch()
        return _as_bytes(whole)
