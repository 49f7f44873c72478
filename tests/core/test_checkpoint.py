"""TensorRef and StorageRef: spans, reads, maps of files that change."""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptkit.core.checkpoint import ByteRange, StorageRef, TensorRef, iter_tensor_values, iter_tensors
from ckptkit.core.dtypes import dtype_named
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats import open_checkpoint


def _storage(path: Path, offset: int, length: int, numel: int) -> StorageRef:
    return StorageRef("0", dtype_named("float32"), numel, "cpu", locate=lambda: ByteRange(path, offset, length))


def test_an_empty_view_past_the_end_of_an_empty_storage_fits_and_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    empty = TensorRef(dtype_named("float32"), (1, 0), (1, 1), _storage(path, 0, 0, 0), storage_offset=1)
    assert empty.fits_storage()
    assert bytes(empty.read_bytes()) == b""
    assert empty.to_torch().shape == (1, 0)


def test_a_view_reaching_past_its_storage_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(16))
    view = TensorRef(dtype_named("float32"), (2, 2), (2, 1), _storage(path, 0, 16, 4), storage_offset=1)
    assert not view.fits_storage()


def test_reading_a_storage_the_file_is_too_short_for_names_it_as_truncated(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(10))
    tensor = TensorRef(dtype_named("float32"), (4,), (1,), _storage(path, 2, 16, 4))
    with pytest.raises(CorruptCheckpointError, match="the file ends 8 bytes before the storage's last byte: truncated"):
        tensor.read_bytes()


def test_a_checkpoint_rewritten_in_place_is_read_from_its_new_bytes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint-recent.pth"
    torch.save({"w": torch.zeros(4)}, path)
    assert open_checkpoint(path).tree["w"].to_torch().tolist() == [0.0] * 4
    tmp = tmp_path / "tmp.pth"
    torch.save({"w": torch.ones(4)}, tmp)
    os.replace(tmp, path)
    assert open_checkpoint(path).tree["w"].to_torch().tolist() == [1.0] * 4


def test_scalar_value_reads_one_element_tensors_of_each_dtype(tmp_path: Path) -> None:
    path = tmp_path / "s.pt"
    values = {"f32": torch.tensor(3.0), "bf16": torch.tensor(2.5, dtype=torch.bfloat16),
              "i64": torch.tensor(-7), "b": torch.tensor(True), "one": torch.tensor([4.0])}
    torch.save(values, path)
    tree = open_checkpoint(path).tree
    assert {k: tree[k].scalar_value() for k in values} == {"f32": 3.0, "bf16": 2.5, "i64": -7, "b": True, "one": 4.0}


def test_tensor_paths_are_the_same_whether_a_dict_holds_only_tensors_or_also_other_values(tmp_path: Path) -> None:
    """A dict of tensors only is walked in one step; its paths and order match the general walk."""
    t = [TensorRef(dtype_named("float32"), (1,), (1,), _storage(tmp_path / "f", 0, 4, 1)) for _ in range(4)]
    tree = {"model": {"b.w": t[0], "a.w": t[1]}, "opt": {"state": {0: {"m": t[2]}}, "lr": 0.1}, "x": [t[3]],
            "flat": {"z": t[1]}}
    assert [(k, id(v)) for k, v in iter_tensors(tree)] == [
        ("model.b.w", id(t[0])), ("model.a.w", id(t[1])), ("opt.state.0.m", id(t[2])), ("x.0", id(t[3])),
        ("flat.z", id(t[1]))]
    assert [k for k, _ in iter_tensors({"b": t[0], "a": t[1]})] == ["b", "a"]
    assert [k for k, _ in iter_tensors({"b": t[0], 3: t[1]})] == ["b", "3"]


def test_a_storage_located_by_key_asks_the_shared_locator_once_with_its_own_key(tmp_path: Path) -> None:
    path = tmp_path / "records.bin"
    path.write_bytes(bytes(range(16)))
    asked: list[str] = []

    def locate(key: str) -> ByteRange:
        asked.append(key)
        return ByteRange(path, 4 * int(key), 4)

    first, third = (StorageRef(k, dtype_named("uint8"), 4, "cpu", locate_key=locate) for k in ("1", "3"))
    assert bytes(first.read_bytes()) == bytes([4, 5, 6, 7])
    assert bytes(third.read_bytes()) == bytes([12, 13, 14, 15])
    assert first.byte_range() == ByteRange(path, 4, 4)
    assert asked == ["1", "3"]


def _tensor_trees(tensors: list[TensorRef]) -> st.SearchStrategy[object]:
    """Trees of dicts (str and int keys, OrderedDicts), lists and tuples holding the given tensors
    and leaves; some dicts hold only tensors (walked in one step), some only leaves (skipped)."""
    leaves = st.sampled_from([None, 0, 1.5, "s", True]) | st.sampled_from(tensors)
    keys = st.sampled_from(["a", "b.c", "w", ""]) | st.integers(0, 3)
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(keys, inner, max_size=4), st.dictionaries(keys, inner, max_size=3).map(OrderedDict),
        st.dictionaries(st.sampled_from(["x", "y.z"]), st.sampled_from(tensors), min_size=1, max_size=3)),
        max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_tensors_without_their_paths_are_the_walks_tensors_in_its_order(data: st.DataObject) -> None:
    tensors = [TensorRef(dtype_named("float32"), (1,), (1,), _storage(Path("f"), 0, 4, 1)) for _ in range(3)]
    tree = data.draw(_tensor_trees(tensors))
    walked = list(iter_tensors(tree))
    assert [id(t) for t in iter_tensor_values(tree)] == [id(t) for _, t in walked]
    assert all(isinstance(t, TensorRef) for _, t in walked)
    assert len(walked) == _count_tensors(tree)


def _count_tensors(node: object) -> int:
    """The tensors of a tree, counted the plain recursive way."""
    if isinstance(node, TensorRef):
        return 1
    if isinstance(node, dict):
        return sum(_count_tensors(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return sum(_count_tensors(v) for v in node)
    return 0


def test_a_dict_of_names_only_is_skipped_and_its_neighbours_still_walked(tmp_path: Path) -> None:
    """A shard index's weight_map (100,000 names, no tensor) is passed over in one step."""
    t = TensorRef(dtype_named("float32"), (1,), (1,), _storage(tmp_path / "f", 0, 4, 1))
    tree = {"index.json": {"weight_map": {f"w.{i}": "model-1.safetensors" for i in range(5)}, "n": [1, (2, t)]},
            "shard": {"w.0": t}}
    assert [k for k, _ in iter_tensors(tree)] == ["index.json.n.1.1", "shard.w.0"]
    assert list(iter_tensor_values(tree)) == [t, t]
