"""A zip directory entry whose size field was damaged must not make a reader allocate what it
claims: found by scripts/fuzz_readers.py (a flipped high byte of a central-directory size made
inspect, validate, ls and diff pass 512 MiB on a 1 KB scheduler.pt)."""
from __future__ import annotations

import shutil
import struct
import tracemalloc
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from ckptkit.cli import main
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats import open_checkpoint


def _with_member_size(path: Path, member_suffix: str, size: int, occurrence: int = 0) -> None:
    data = bytearray(path.read_bytes())
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        name = bytes(data[at + 46: at + 46 + name_len])
        if name.endswith(member_suffix.encode()):
            if occurrence == 0:
                struct.pack_into("<II", data, at + 20, size, size)   # compressed and uncompressed size
                path.write_bytes(bytes(data))
                return
            occurrence -= 1
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



def _diff_damaged_dcp(tmp_path: Path, occurrence: int) -> tuple[Path, Result, int]:
    """`diff` of the DCP fixture against a copy whose `__1_0.distcp` has one stored item's zip
    directory size damaged (a `.distcp` holds torch.save'd items, each a zip of its own)."""
    original = Path(__file__).parents[1] / "fixtures" / "dcp_two_ranks"
    damaged = tmp_path / "dcp_two_ranks"
    shutil.copytree(original, damaged)
    item = damaged / "__1_0.distcp"
    _with_member_size(item, "byteorder", 0xDA2C5F06, occurrence)
    before = item.read_bytes()
    tracemalloc.start()
    try:
        result = CliRunner().invoke(main, ["diff", str(original), str(damaged)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert item.read_bytes() == before
    return item, result, peak


def test_diff_stops_with_one_line_when_a_dcp_tensor_item_claims_more_than_its_archive(tmp_path: Path) -> None:
    """The fuzz campaign's case (--seed 103, mutant 963): the item holding tensor model.w."""
    item, result, peak = _diff_damaged_dcp(tmp_path, occurrence=1)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ckptkit: error: {item}: tensor 'model.w'")
    assert "its zip directory entry says 3,660,340,998 bytes, more than the archive's" in lines[0]
    assert peak < 64 << 20


def test_diff_names_a_side_it_could_not_read_whole_and_never_calls_it_equal(tmp_path: Path) -> None:
    """A damaged non-tensor item ('step') leaves B without its step: the diff must say that B
    could not be read, not merely that global_step went from 7 to nothing."""
    _, result, peak = _diff_damaged_dcp(tmp_path, occurrence=0)
    assert result.exit_code == 1, result.output
    assert "  B error dcp.unreadable-item: dcp_two_ranks/__1_0.distcp: item 'step' at bytes 0..1261" in result.output
    assert result.output.rstrip().endswith("B could not be read whole (see the errors above)")
    assert peak < 64 << 20
