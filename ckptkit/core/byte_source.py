"""The bytes of one file of a checkpoint, mapped once and owned by the checkpoint that reads it.

A format reader makes one `FileBytes` per file it reads and hands it to every `ByteRange` of
that file; the checkpoint's tensors then read through it (`Checkpoint.close()` unmaps it, and
so does dropping the checkpoint). There is no process-wide cache: two checkpoints opened on the
same file have a map each, a file replaced after it was opened keeps being read as it was
when opened (the map holds the old inode, which matches the index that was read), and a
long-lived process keeps no map of a checkpoint it no longer holds.
"""
from __future__ import annotations

import mmap
from pathlib import Path

from ckptkit.core.errors import CorruptCheckpointError

# Released ranges smaller than this are only counted, and the whole map is released each time
# they add up to it: one system call per small record (80,000 of them in a mixture-of-experts
# checkpoint) cost more than reading the record, and pages a released record shared with its
# neighbours were read in again. The pages it keeps mapped meanwhile stay under this.
RELEASE_BATCH_BYTES = 16 << 20


class FileBytes:
    """One read-only map of `path`, made when first asked for (reading an index needs none)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._empty = False
        self._unreleased = 0        # bytes of small ranges released since the map last was

    def view(self) -> memoryview:
        """The whole file, memory-mapped: the OS reads pages when they are touched."""
        if self._map is None and not self._empty:
            try:
                with open(self.path, "rb") as f:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:          # an empty file cannot be mapped
                self._empty = True
            except OSError as exc:
                raise CorruptCheckpointError(self.path, f"cannot be read: {exc.strerror or exc}") from None
        return memoryview(self._map) if self._map is not None else memoryview(b"")

    def release(self, offset: int, length: int) -> None:
        """Unmap the pages of `offset`..`offset + length` from this process (the OS page cache
        keeps them): mapped pages a process touched count in its RSS until unmapped, so
        streaming readers call this after each chunk and memory stays bounded."""
        m = self._map
        if m is None or length <= 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        if length < RELEASE_BATCH_BYTES:
            self._unreleased += length
            if self._unreleased < RELEASE_BATCH_BYTES:
                return
            offset, length = 0, len(m)
        self._unreleased = 0
        start = offset - offset % mmap.PAGESIZE
        end = min(len(m), offset + length)
        if end > start:
            m.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:         # a memoryview still points into it: the GC closes it later
                return
            self._map = None

    def __repr__(self) -> str:
        return f"FileBytes({str(self.path)!r}, {'mapped' if self._map is not None else 'not mapped'})"
