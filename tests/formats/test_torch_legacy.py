"""Legacy (pre-zip) torch.save files read back by ckptkit: structure, tensors, sharing, damage."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.core.errors import CkptkitError, CorruptCheckpointError
from ckptkit.formats import detect_format, open_checkpoint
from ckptkit.inspection import inspect_checkpoint
from tests.tensor_trees import assert_same_tree, checkpoint_trees, save_and_read


@settings(max_examples=150, deadline=None)
@given(checkpoint_trees())
def test_any_tree_saved_in_legacy_format_reads_back_with_same_structure_tensors_and_sharing(tree: object) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_and_read(tree, Path(tmp) / "tree.pt", legacy=True)
        assert ckpt.format == "torch-legacy"
        assert_same_tree(tree, ckpt.tree)


def _legacy_file(path: Path) -> Path:
    shared = torch.arange(64, dtype=torch.float32)
    torch.save({"model_state_dict": {"w": shared.reshape(8, 8), "w_t": shared.reshape(8, 8).t()},
                "epoch": 2, "bias": torch.ones(3, dtype=torch.float16)}, path,
               _use_new_zipfile_serialization=False)
    return path


def test_legacy_file_is_detected_by_its_magic_number_and_counts_its_storage_records(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path / "model_legacy.bin")
    assert detect_format(path).name == "torch-legacy"
    ckpt = open_checkpoint(path)
    assert ckpt.details.storage_records == 2 and ckpt.metadata == {}
    assert ckpt.model["w"].storage is ckpt.model["w_t"].storage
    assert ckpt.model["w_t"].stride == (1, 8)


def test_byte_range_points_at_the_storage_bytes_after_the_record_header(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path / "model.pt")
    bias = open_checkpoint(path).tree["bias"]
    where = bias.storage.byte_range()
    assert where.length == 6
    assert path.read_bytes()[where.offset - 8: where.offset] == (3).to_bytes(8, "little")
    assert bytes(bias.read_bytes()) == torch.ones(3, dtype=torch.float16).numpy().tobytes()


@pytest.mark.parametrize("cut", [20, 200, 400, -300, -1])
def test_truncated_legacy_file_gives_one_line_naming_the_problem(tmp_path: Path, cut: int) -> None:
    path = _legacy_file(tmp_path / "model.pt")
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(CorruptCheckpointError) as err:
        open_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "truncated" in message or "damaged" in message


def test_record_header_disagreeing_with_the_pickle_is_reported(tmp_path: Path) -> None:
    path = _legacy_file(tmp_path / "model.pt")
    ckpt = open_checkpoint(path)
    header_at = ckpt.tree["bias"].storage.byte_range().offset - 8
    data = bytearray(path.read_bytes())
    data[header_at: header_at + 8] = (2).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError,
                       match=r"storage record .\d+. holds 2 elements but the pickle declares 3: the file is damaged"):
        open_checkpoint(path)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(1, 255)), min_size=1, max_size=3))
def test_flipped_bytes_anywhere_in_a_legacy_file_give_a_reading_or_one_ckptkit_error(
        flips: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _legacy_file(Path(tmp) / "model.pt")
        data = bytearray(path.read_bytes())
        for at, mask in flips:
            data[at % len(data)] ^= mask
        path.write_bytes(bytes(data))
        try:
            report = inspect_checkpoint(path)
        except CkptkitError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        else:
            json.dumps(report.to_json())
