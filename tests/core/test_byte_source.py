"""FileBytes.release: small ranges are released together, large ones at once."""
from __future__ import annotations

import mmap
from pathlib import Path

import pytest

from ckptkit.core.byte_source import RELEASE_BATCH_BYTES, FileBytes


class _RecordingMap:
    """Stands in for the mmap: its length, and every madvise asked of it."""

    def __init__(self, size: int) -> None:
        self.size, self.calls = size, []

    def __len__(self) -> int:
        return self.size

    def madvise(self, option: int, start: int, length: int) -> None:
        self.calls.append((option, start, length))


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[FileBytes, _RecordingMap]:
    if not hasattr(mmap, "MADV_DONTNEED"):
        pytest.skip("no MADV_DONTNEED on this platform")
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * 16)
    source = FileBytes(path)
    fake = _RecordingMap(4 * RELEASE_BATCH_BYTES)
    source._map = fake      # type: ignore[assignment]
    return source, fake


def test_small_ranges_are_released_all_at_once_when_they_add_up_to_a_batch(
        recorded: tuple[FileBytes, _RecordingMap]) -> None:
    source, fake = recorded
    record = 4096
    count = RELEASE_BATCH_BYTES // record
    for i in range(count - 1):
        source.release(i * record, record)
    assert fake.calls == []
    source.release((count - 1) * record, record)
    assert fake.calls == [(mmap.MADV_DONTNEED, 0, 4 * RELEASE_BATCH_BYTES)]
    source.release(0, record)                    # counting starts again
    assert len(fake.calls) == 1


def test_a_large_range_is_released_at_once_page_aligned(recorded: tuple[FileBytes, _RecordingMap]) -> None:
    source, fake = recorded
    source.release(mmap.PAGESIZE + 10, RELEASE_BATCH_BYTES)
    assert fake.calls == [(mmap.MADV_DONTNEED, mmap.PAGESIZE, RELEASE_BATCH_BYTES + 10)]

