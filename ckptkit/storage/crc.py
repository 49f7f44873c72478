"""CRC-32 (the zip / zlib polynomial) of large files, on every core.

A resume checks a multi-GB checkpoint against its manifest before loading it; one thread of
``zlib.crc32`` runs at about 5-6 GB/s, so a 4 GB training state would cost the resume most
of a second before the first byte reaches the GPU. :func:`file_crc32` splits the file into
segments, lets one thread per core checksum each (zlib releases the GIL, and so does pread),
and joins the segment CRCs with :func:`crc32_combine` (zlib's ``crc32_combine``, which the
Python module does not expose): the result is the CRC-32 of the whole file, bit for bit.

No torch here: ``ls`` and ``validate`` use this.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

from ckptkit.core.errors import CorruptCheckpointError

_POLY = 0xEDB88320              # CRC-32, reflected
SEGMENT_MIN = 64 << 20          # below this one thread is as fast as several
_BUFFER = 4 << 20               # per thread: memory stays at threads x 4 MiB


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of ``A + B`` from ``crc1 = crc32(A)``, ``crc2 = crc32(B)`` and ``len(B)``.

    zlib's method: appending ``len2`` zero bytes to A is a linear map on its CRC, applied as
    GF(2) 32x32 matrices for 1, 2, 4, ... zero bytes, squared up the bits of ``len2``.
    """
    if len2 <= 0:
        return crc1
    odd = [_POLY] + [1 << n for n in range(31)]     # the operator for one zero bit
    even = _square(odd)                             # two zero bits
    odd = _square(even)                             # four zero bits
    while True:
        even = _square(odd)                         # first pass: one zero byte
        if len2 & 1:
            crc1 = _times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _square(even)
        if len2 & 1:
            crc1 = _times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _times(matrix: list[int], vector: int) -> int:
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


def range_crc32(fd: int, path: Path, offset: int, length: int, *, threads: int | None = None) -> int:
    """CRC-32 of ``length`` bytes of the open file ``fd`` from ``offset``, on up to ``threads``
    threads (default: one per core, at most 8). ``path`` only names the file in errors."""
    workers = max(1, min(threads or min(os.cpu_count() or 1, 8), length // SEGMENT_MIN))
    if workers == 1:
        return _segment_crc(fd, path, offset, length)
    from concurrent.futures import ThreadPoolExecutor  # here: `ls` and `inspect` never need threads

    size = -(-length // workers)
    segments = [(offset + start, min(size, length - start)) for start in range(0, length, size)]
    with ThreadPoolExecutor(workers, thread_name_prefix="ckptkit-crc") as pool:
        crcs = list(pool.map(lambda seg: _segment_crc(fd, path, *seg), segments))
    crc = crcs[0]
    for (_, seg_length), seg_crc in zip(segments[1:], crcs[1:], strict=True):
        crc = crc32_combine(crc, seg_crc, seg_length)
    return crc


def file_crc32(path: Path, *, threads: int | None = None) -> int:
    """CRC-32 of a whole file (see :func:`range_crc32`)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return range_crc32(fd, Path(path), 0, os.fstat(fd).st_size, threads=threads)
    finally:
        os.close(fd)


def _segment_crc(fd: int, path: Path, offset: int, length: int) -> int:
    # pread into one reused buffer: page-cache pages read this way never count towards this
    # process's resident set (a map of a 4 GB file would).
    buffer = bytearray(min(_BUFFER, max(length, 1)))
    view = memoryview(buffer)
    crc, done = 0, 0
    while done < length:
        n = os.preadv(fd, [view[: min(len(buffer), length - done)]], offset + done)
        if n == 0:
            raise CorruptCheckpointError(path, f"file ends at byte {offset + done}, inside the {length} bytes "
                                         f"from byte {offset} that were to be checksummed (truncated)")
        crc = zlib.crc32(view[:n], crc)
        done += n
    return crc
