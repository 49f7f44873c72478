"""A zip directory entry whose size field was damaged must not make a reader allocate what it
claims: found by scripts/fuzz_readers.py (a flipped high byte of a central-directory size made
inspect, validate, ls and diff pass 512 MiB on a 1 KB scheduler.pt)."""
from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import pytest
import torch

from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats import open_checkpoint


def _with_member_size(path: Path, member_suffix: str, size: int) -> None:
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        name = bytes(data[at + 46: at + 46 + name_len])
        if name.endswith(member_suffix.encode()):
            struct.pack_into("<II", data, at + 20, size, size)   # compressed and uncompressed size
            path.write_bytes(bytes(data))
            return
        at += 4
    raise AssertionError(f"no directory entry ends with {member_suffix}")


@pytest.mark.parametrize("member", ["data.pkl", "byteorder"])
def test_a_member_size_larger_than_the_archive_is_damage_not_an_allocation(tmp_path: Path, member: str) -> None:
    path = tmp_path / "scheduler.pt"
    torch.save({"last_epoch": 3, "base_lrs": [0.1]}, path)
    _with_member_size(path, member, 0xFFFFFFF0)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptCheckpointError) as caught:
            open_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{member}: its zip directory entry says 4,294,967,280 bytes, more than the archive's" in str(caught.value)
    assert str(caught.value).startswith(f"{path}: ")
    assert peak < 64 << 20
