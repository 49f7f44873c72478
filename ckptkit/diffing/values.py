"""Comparing the values of two tensors, streaming: bounded memory whatever the tensor's size.

Equal bytes (same dtype, both contiguous) mean identical values without decoding anything, so
the bytes are compared first, chunk by chunk, straight from the mapped file. Only when they
differ (or the dtypes do) are elements decoded, with numpy (cheap to import, unlike torch),
upcast to float64 (complex128 for complex tensors), a chunk at a time. After each chunk the
mapped pages are released, so the process's RSS does not grow with the checkpoint.
numpy is imported inside the functions that use it: every CLI command imports this package,
and only a diff of values should pay for numpy.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ckptkit.core.checkpoint import ByteRange, TensorRef, release_mapped_pages
from ckptkit.core.dtypes import DType
from ckptkit.diffing.report import Tolerance, ValueStats

if TYPE_CHECKING:
    import numpy as np

COMPARE_CHUNK_BYTES = 16 << 20
DECODE_CHUNK_ELEMENTS = 1 << 20

# Element layouts numpy can read directly. Quantized storages, packed 4-bit floats and bit
# containers (torch has no arithmetic on them, not even a cast) are compared as raw integers.
_NUMPY_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "complex128": "<c16", "complex64": "<c8",
    "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1", "uint64": "<u8", "uint32": "<u4",
    "uint16": "<u2", "uint8": "u1", "bool": "?", "qint8": "i1", "quint8": "u1", "qint32": "<i4",
    "quint4x2": "u1", "quint2x4": "u1", "float4_e2m1fn_x2": "u1", "bits8": "u1", "bits16": "<u2",
    "bits1x8": "u1", "bits2x4": "u1", "bits4x2": "u1",
}


def compare_values(a: TensorRef, b: TensorRef, tol: Tolerance) -> ValueStats:
    """Compare two tensors with the same number of elements, in row-major element order."""
    if a.numel != b.numel:
        raise ValueError(f"cannot compare {a.describe()} with {b.describe()}: element counts differ")
    if a.dtype == b.dtype and a.is_contiguous() and b.is_contiguous() and bytes_equal(a, b):
        return ValueStats.identical(a.numel)
    acc = _Accumulator(tol)
    # Equal element counts: both sides decode to chunks of the same sizes.
    for xa, xb in zip(decoded_chunks(a), decoded_chunks(b), strict=True):
        acc.add(*_common_type(xa, xb))
    return acc.result(a.numel)


def bytes_equal(a: TensorRef, b: TensorRef) -> bool:
    """Whether two contiguous tensors of one dtype and element count hold the same bytes; stops
    at the first differing chunk."""
    if a.nbytes <= min(_SMALL_CHUNK, COMPARE_CHUNK_BYTES):     # one small chunk each (a mixture of experts)
        ra, rb = a.read_bytes(), b.read_bytes()
        same = _chunk_equal(ra, rb)
        _release_small(a, len(ra))
        _release_small(b, len(rb))
        return same
    chunks_a, chunks_b = _byte_chunks(a, COMPARE_CHUNK_BYTES), _byte_chunks(b, COMPARE_CHUNK_BYTES)
    for (ra, wa), (rb, wb) in zip(chunks_a, chunks_b, strict=True):
        same = _chunk_equal(ra, rb)
        release_mapped_pages(wa)
        release_mapped_pages(wb)
        if not same:
            return False
    return True


_SMALL_CHUNK = 64 << 10


def _chunk_equal(x: memoryview, y: memoryview) -> bool:
    if len(x) != len(y):
        return False
    if len(x) <= _SMALL_CHUNK:      # copied and compared by memcmp: a few us less than numpy's calls
        return bytes(x) == bytes(y)
    import numpy as np

    # Eight bytes at a time: numpy compares those at memory speed, a memoryview `==` does not.
    bulk = len(x) - len(x) % 8
    if not np.array_equal(np.frombuffer(x[:bulk], "<u8"), np.frombuffer(y[:bulk], "<u8")):
        return False
    return bytes(x[bulk:]) == bytes(y[bulk:])


def _release_small(t: TensorRef, length: int) -> None:
    """Count a small read for release (`FileBytes.release` releases small ranges together, so
    where in the storage the bytes lay does not matter, only how many were read)."""
    where = t.storage.found
    if where is not None and where.source is not None:
        where.source.release(where.offset, length)


def _byte_chunks(t: TensorRef, size: int) -> Iterator[tuple[memoryview, ByteRange]]:
    """The tensor's bytes in chunks of at most `size`, each with where it lies in the file."""
    raw = t.read_bytes()
    where = t.storage.byte_range()
    base = where.offset + t.element_span()[0] * t.dtype.itemsize
    for start in range(0, len(raw), size):
        chunk = raw[start: start + size]
        yield chunk, where.at(base + start, len(chunk))


def decoded_chunks(t: TensorRef) -> Iterator[np.ndarray]:
    """The tensor's elements in row-major order, DECODE_CHUNK_ELEMENTS at a time, upcast."""
    import numpy as np

    if t.numel == 0:
        return
    if t.is_contiguous():
        step = DECODE_CHUNK_ELEMENTS * t.dtype.itemsize
        for raw, where in _byte_chunks(t, step):
            values = decode(raw, t.dtype)
            release_mapped_pages(where)
            yield values
        return
    # A view (strided) tensor: decode its span once; its size is bounded by its storage.
    lo, _ = t.element_span()
    span = decode(t.read_bytes(), t.dtype)
    strides = tuple(s * span.itemsize for s in t.stride)
    flat = np.lib.stride_tricks.as_strided(span[t.storage_offset - lo:], t.shape, strides).reshape(-1)
    for start in range(0, flat.size, DECODE_CHUNK_ELEMENTS):
        yield flat[start: start + DECODE_CHUNK_ELEMENTS]


def decode(raw: memoryview, dtype: DType) -> np.ndarray:
    """Raw little-endian elements as float64 (complex128 for complex dtypes)."""
    import numpy as np

    if dtype.name == "bfloat16":   # the high half of a float32
        return (np.frombuffer(raw, "<u2").astype("<u4") << 16).view("<f4").astype(np.float64)
    code = _NUMPY_DTYPES.get(dtype.name)
    if code is None:
        return _decode_with_torch(raw, dtype)
    values = np.frombuffer(raw, code)
    if values.dtype.kind in "iub":
        # Integers stay exact (an int64 above 2**53 would not survive float64); bools become 0/1.
        return values.astype(np.uint64 if values.dtype == np.uint64 else np.int64)
    return values.astype(np.complex128 if values.dtype.kind == "c" else np.float64)


def _decode_with_torch(raw: memoryview, dtype: DType) -> np.ndarray:
    # float8 and complex32 have no numpy dtype; torch (imported only here) does.
    import torch

    values = torch.frombuffer(bytearray(raw), dtype=getattr(torch, dtype.name))
    return values.to(torch.complex128 if values.is_complex() else torch.float64).numpy()


def _common_type(xa: np.ndarray, xb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    if xa.dtype == xb.dtype:
        return xa, xb
    if xa.dtype.kind == "c" or xb.dtype.kind == "c":
        return xa.astype(np.complex128), xb.astype(np.complex128)
    if xa.dtype == np.int64 and xb.dtype == np.int64:
        return xa, xb
    return xa.astype(np.float64), xb.astype(np.float64)


def _inexact(x: np.ndarray) -> np.ndarray:
    """Values for arithmetic: integers as float64, so differences and squares cannot overflow."""
    import numpy as np

    return x.astype(np.float64) if x.dtype.kind in "iub" else x


class _Accumulator:
    """Running max |a-b|, sums of squares and changed counts over chunks."""

    def __init__(self, tol: Tolerance) -> None:
        self.tol = tol
        self.max_abs = 0.0
        self.diff_sq = 0.0
        self.ref_sq = 0.0
        self.changed = 0

    def add(self, xa: np.ndarray, xb: np.ndarray) -> None:
        import numpy as np

        with np.errstate(invalid="ignore", over="ignore"):
            # Most elements of a changed tensor are often still equal: do the arithmetic on the
            # differing ones only.
            differ = np.flatnonzero(~((xa == xb) | (np.isnan(xa) & np.isnan(xb))))
            da, db = _inexact(xa[differ]), _inexact(xb[differ])
            diff = np.abs(da - db)
            diff[np.isnan(diff)] = np.inf     # NaN against a number: infinitely far
            # `not <=` rather than `>`: a NaN in B makes the bound NaN, and that must count as changed.
            # A zero bound means exact: these elements differ even where float64 rounds diff to 0.
            bound = self.tol.atol + self.tol.rtol * np.abs(db)
            close = (diff <= bound) & (bound > 0)
            self.changed += int(diff.size - np.count_nonzero(close))
            if diff.size:
                self.max_abs = max(self.max_abs, float(diff.max()))
            self.diff_sq += float(np.dot(diff, diff))
            self.ref_sq += _sum_of_squares(xa)

    def result(self, numel: int) -> ValueStats:
        if self.diff_sq == 0.0:
            rel = 0.0
        elif self.ref_sq == 0.0 or math.isinf(self.diff_sq):
            rel = math.inf
        else:
            rel = math.sqrt(self.diff_sq) / math.sqrt(self.ref_sq)
        return ValueStats(numel, False, self.max_abs, rel, self.changed, self.diff_sq, self.ref_sq)


def _sum_of_squares(x: np.ndarray) -> float:
    """||x||^2 over the finite elements (a dot product when all are finite, the usual case)."""
    import numpy as np

    x = _inexact(x)
    total = float(np.vdot(x, x).real)
    if math.isfinite(total):
        return total
    magnitude = np.abs(x)
    finite = magnitude[np.isfinite(magnitude)]
    return float(np.dot(finite, finite))
