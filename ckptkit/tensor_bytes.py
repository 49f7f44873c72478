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
from typing import Any, BinaryIO

from ckptkit.checkpoint import ByteRange, StorageRef, TensorRef
from ckptkit.dtypes import DType
from ckptkit.errors import CorruptCheckpointError

CHUNK = 16 << 20   # a multiple of every itemsize, so chunks never split an element


def tensor_chunks(t: TensorRef, to: DType | None = None, chunk_size: int = CHUNK) -> Iterator[bytes]:
    """The elements of `t` in row-major order as bytes (cast to `to` when given)."""
    cast = to is not None and to != t.dtype
    if t.numel == 0:
        return
    if t.is_contiguous():
        size = t.dtype.itemsize
        chunks = t.storage.iter_chunks(chunk_size, t.storage_offset * size, t.nbytes)
        yield from (cast_bytes(c, t.dtype, to) for c in chunks) if cast else chunks
        return
    yield _gathered(t, to if cast else None)


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


def _frombuffer(raw: Any, dtype: DType) -> Any:
    import torch

    with warnings.catch_warnings():   # read-only bytes are fine: the tensor is never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(raw, dtype=getattr(torch, dtype.name))


def _as_bytes(tensor: Any) -> bytes:
    import torch

    flat = tensor.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def same_bytes(a: Iterable[bytes], b: Iterable[bytes]) -> bool:
    """Whether two chunk streams hold the same bytes, whatever their chunk boundaries."""
    ia, ib = iter(a), iter(b)
    buf_a, buf_b = b"", b""
    while True:
        if not buf_a:
            buf_a = next(ia, b"")
        if not buf_b:
            buf_b = next(ib, b"")
        if not buf_a or not buf_b:
            return not buf_a and not buf_b and next(ia, None) is None and next(ib, None) is None
        n = min(len(buf_a), len(buf_b))
        # bytes == bytes is one memcmp; memoryview comparison goes element by element (10x slower).
        if (buf_a if n == len(buf_a) else buf_a[:n]) != (buf_b if n == len(buf_b) else buf_b[:n]):
            return False
        buf_a, buf_b = buf_a[n:], buf_b[n:]


def tensor_range(t: TensorRef) -> ByteRange | None:
    """Where a contiguous tensor's own bytes lie in its file (None for views that stride)."""
    if not t.is_contiguous():
        return None
    where = t.storage.byte_range()
    start = t.storage_offset * t.dtype.itemsize
    if start + t.nbytes > where.length:
        return None
    return ByteRange(where.path, where.offset + start, t.nbytes)


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
    if t.numel and t.is_contiguous() and (to is None or to == t.dtype) and hasattr(os, "copy_file_range"):
        where = t.storage.byte_range()
        start = t.storage_offset * t.dtype.itemsize
        if start + t.nbytes <= where.length and _copy_range(where.path, where.offset + start, out, t.nbytes):
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


class DerivedStorage(StorageRef):
    """A storage to be written that is another one renamed and/or cast element-wise.

    `write_torch_zip` copies storages through `byte_range().length` and `iter_chunks()`; this
    one produces its bytes from `source` on the fly, so a cast never holds more than a chunk.
    """

    def __init__(self, source: StorageRef, key: str, dtype: DType | None = None) -> None:
        dtype = dtype or source.dtype
        super().__init__(key, dtype, source.numel, source.location, locate=self._derived_range,
                         stored_nbytes=source.numel * dtype.itemsize)
        self.source = source

    def _derived_range(self) -> ByteRange:
        where = self.source.byte_range()   # names the source file in errors; the length is ours
        return ByteRange(where.path, where.offset, self.numel * self.dtype.itemsize)

    def iter_chunks(self, chunk_size: int = CHUNK, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        if start != 0 or length not in (None, self.nbytes):
            raise NotImplementedError("a derived storage streams whole")
        if self.dtype == self.source.dtype:
            return self.source.iter_chunks(chunk_size)
        # Cast chunks of `chunk_size` output bytes: read that many source elements at a time.
        elements = max(1, chunk_size // self.dtype.itemsize)
        return storage_chunks(self.source, self.dtype, elements * self.source.dtype.itemsize)

    def read_bytes(self, start: int = 0, length: int | None = None) -> memoryview:
        data = b"".join(self.iter_chunks())
        length = len(data) - start if length is None else length
        return memoryview(data)[start: start + length]
