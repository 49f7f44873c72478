"""ckptkit.storage.crc: the CRC-32 of big files on several threads equals zlib's, bit for bit."""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.storage import crc


@given(a=st.binary(max_size=300), b=st.binary(max_size=300))
def test_combining_the_crcs_of_two_parts_gives_the_crc_of_their_concatenation(a: bytes, b: bytes) -> None:
    assert crc.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_combine_handles_parts_of_gigabytes_without_materialising_them() -> None:
    # crc32(zeros(n)) is known in closed form through combine itself; check against zlib for a
    # length whose bits exercise both the odd and the even squaring branches.
    n = (1 << 20) + 12345
    zeros = bytes(n)
    assert crc.crc32_combine(zlib.crc32(b"head"), zlib.crc32(zeros), n) == zlib.crc32(b"head" + zeros)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=4096), threads=st.integers(1, 5), offset=st.integers(0, 64))
def test_range_crc_on_several_threads_equals_zlib(tmp_path_factory: pytest.TempPathFactory, data: bytes,
                                                  threads: int, offset: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crc, "SEGMENT_MIN", 7)      # tiny segments, so small inputs split too
    monkeypatch.setattr(crc, "_BUFFER", 5)          # and each segment is read in many pieces
    path = tmp_path_factory.mktemp("crc") / "blob"
    path.write_bytes(os.urandom(offset) + data + b"tail")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert crc.range_crc32(fd, path, offset, len(data), threads=threads) == zlib.crc32(data)
    finally:
        os.close(fd)


def test_file_crc_of_a_file_bigger_than_one_segment_equals_zlib(tmp_path: Path) -> None:
    data = os.urandom(3 * crc.SEGMENT_MIN // 2 + 11)    # split over two threads for real
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert crc.file_crc32(path, threads=2) == zlib.crc32(data)


def test_a_range_past_the_end_of_the_file_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "short.pt"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(CorruptCheckpointError) as err:
            crc.range_crc32(fd, path, 50, 80)
    finally:
        os.close(fd)
    assert "short.pt" in str(err.value) and "truncated" in str(err.value) and "\n" not in str(err.value)
