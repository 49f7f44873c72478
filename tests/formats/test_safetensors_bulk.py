"""Safetensors headers checked column by column (the fast path for 100,000-tensor shard folders)
give exactly what checking entry by entry gives: the same tensors, or the same one-line error."""
from __future__ import annotations

import json
import math
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import ckptkit.formats.safetensors_file as sf
from ckptkit.cli import main
from ckptkit.core.byte_source import FileBytes
from ckptkit.core.errors import CkptkitError, CorruptCheckpointError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors_file import entry_tensors, read_header_entries, read_safetensors_header

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "I64": torch.int64, "U8": torch.uint8}


def _write(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _described(tensors: dict) -> list[tuple]:
    return [(name, t.dtype.name, t.shape, t.stride, t.storage.numel, t.storage.stored_nbytes,
             t.storage.byte_range().offset, t.storage.byte_range().length) for name, t in tensors.items()]


def _entry_by_entry(path: Path) -> list[tuple]:
    header, _, start, size = read_header_entries(path)
    return _described(entry_tensors(path, header, start, size, data_len=size - start))


offsets = st.lists(st.integers(-2, 48), min_size=0, max_size=3)
entries = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "BF16", "I64", "U8", "X", 3]),
                                 "shape": st.lists(st.integers(-1, 3), max_size=3) | st.just("ab") | st.none(),
                                 "data_offsets": offsets | st.just([0, True]) | st.just([0.0, 4.0])})


@settings(max_examples=300, deadline=None)
@example({"w": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}})     # negative dims, positive product
@example({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, True]}})         # json's true is not 1
@example({"w": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}})
@example({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
          "b": {"dtype": "U8", "shape": [40], "data_offsets": [4, 44]}})            # ends past the file's 32 bytes
@given(st.dictionaries(st.text("abc.", min_size=1, max_size=4), entries | st.just([1, 2]), min_size=1, max_size=4))
def test_column_checks_accept_and_reject_exactly_what_entry_checks_do(header: dict[str, object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "m.safetensors", header, bytes(32))
        try:
            expected: list[tuple] | str = _entry_by_entry(path)
        except CorruptCheckpointError as exc:
            expected = str(exc)
        try:
            got: list[tuple] | str = _described(read_safetensors_header(path)[0])
        except CorruptCheckpointError as exc:
            got = str(exc)
        assert got == expected


def test_every_shard_of_a_big_folder_keeps_each_tensors_dtype_shape_and_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    weight_map: dict[str, str] = {}
    written: dict[str, torch.Tensor] = {}
    for s, code in enumerate(DTYPES):
        name = f"model-{s + 1:05d}-of-00004.safetensors"
        part = {f"layers.{s}.experts.{i}.w": torch.arange(i * (s + 1) + 1).to(DTYPES[code]) for i in range(300)}
        part[f"layers.{s}.scalar"] = torch.tensor(7).to(DTYPES[code])
        save_file(part, str(folder / name))
        weight_map.update(dict.fromkeys(part, name))
        written.update(part)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    ckpt = open_checkpoint(folder)
    assert list(ckpt.model) == list(weight_map) and not ckpt.findings
    for s in range(4):
        keys = [k for k in weight_map if k.startswith(f"layers.{s}.")]
        for key in (keys[0], keys[-1], keys[len(keys) // 2]):
            tensor, original = ckpt.model[key], written[key]
            assert (tensor.dtype.name, tensor.shape) == (str(original.dtype).removeprefix("torch."),
                                                        tuple(original.shape))
            assert tensor.storage.byte_range().length == original.numel() * original.element_size()
            assert torch.equal(tensor.to_torch(), original)


def test_a_shard_whose_header_lies_about_offsets_is_named_alone_and_in_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    save_file({f"w.{i}": torch.ones(4) for i in range(50)}, str(folder / "model-00001-of-00001.safetensors"))
    raw = (folder / "model-00001-of-00001.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["w.49"]["data_offsets"][1] += 4          # the last entry claims 4 bytes more than its shape needs
    lying = json.dumps(header, separators=(",", ":")).encode()
    assert len(lying) <= n
    lying += b" " * (n - len(lying))
    shard = folder / "model-00001-of-00001.safetensors"
    shard.write_bytes(raw[:8] + lying + raw[8 + n:])
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard.name for k in header if k != "__metadata__"}}))
    result = CliRunner().invoke(main, ["inspect", str(shard)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"ckptkit: error: {shard}: tensor 'w.49': float32[4] needs 16 bytes "
                                     "but its offsets span 20")
    ckpt = open_checkpoint(folder)
    assert [(f.code, f.where) for f in ckpt.findings] == [("folder.unreadable-member", f"shards/{shard.name}")]
    assert "tensor 'w.49': float32[4] needs 16 bytes but its offsets span 20" in ckpt.findings[0].message


@pytest.mark.parametrize("cut", [1, 16])
def test_a_shard_cut_short_names_its_last_tensor(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "m.safetensors"
    save_file({f"w.{i}": torch.ones(4) for i in range(20)}, str(path))
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(CkptkitError, match=r"tensor 'w\.\d+' ends at byte \d+ but the file has \d+: truncated"):
        open_checkpoint(path)


# Dims whose values multiply like ints but that json does not read as ints (2.0, true): a header
# that spells them so must still be refused entry by entry, even beside the same shape in ints.
dims = st.lists(st.sampled_from([0, 1, 2, 3, -1, 2.0, 1.0, True, False]), max_size=3)


@settings(max_examples=400, deadline=None)
@example([("F32", [2]), ("F32", [2.0])])        # one shape as ints and as floats
@example([("U8", [1]), ("U8", [True])])          # json's true equals 1
@example([("U8", [True]), ("U8", [1])])
@given(st.lists(st.tuples(st.sampled_from(["F32", "U8", "I64"]), dims), min_size=1, max_size=5))
def test_the_column_checks_give_the_entry_by_entry_reading_or_defer_to_it(
        specs: list[tuple[str, list[object]]]) -> None:
    """Offsets follow from each shape's value, so only the spelling of a number can be wrong: the
    column checks return exactly what entry-by-entry reading returns, or raise so that
    entry-by-entry reading decides (and names the tensor)."""
    header: dict[str, object] = {}
    end = 0
    for i, (code, shape) in enumerate(specs):
        n = int(math.prod(shape)) * {"F32": 4, "U8": 1, "I64": 8}[code]
        header[f"w.{i}"] = {"dtype": code, "shape": shape, "data_offsets": [end, end + n]}
        end += max(n, 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / "m.safetensors", header, bytes(end))
        try:
            expected: list[tuple] | None = _entry_by_entry(path)
        except CorruptCheckpointError:
            expected = None
        raw, start, size = sf._header_bytes(path, 0)
        entries = sf._parsed_header(path, raw)[0]
        try:
            got = _described(sf._checked_in_bulk(entries, start, size, path, FileBytes(path)))
        except (KeyError, TypeError, ValueError, AttributeError, sf._Damaged):
            return       # deferred: the entry-by-entry reading decides
        assert got == expected


def test_a_shape_spelled_in_floats_beside_the_same_shape_in_ints_is_named(tmp_path: Path) -> None:
    header = {"w.0": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
              "w.1": {"dtype": "U8", "shape": [2.0], "data_offsets": [2, 4]}}
    path = _write(tmp_path / "m.safetensors", header, bytes(4))
    with pytest.raises(CorruptCheckpointError, match=r"tensor 'w\.1': header entry is damaged"):
        read_safetensors_header(path)


def test_tensors_are_located_from_the_header_as_it_was_read_even_after_the_file_changes(tmp_path: Path) -> None:
    """The offsets come from the header read when the file was opened (kept as arrays, looked up
    when a tensor's bytes are first asked for), as they did when each tensor kept its own."""
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2), "b": torch.arange(3.0)}, str(path))
    expected = [(name, offset, length) for name, *_, offset, length in _entry_by_entry(path)]
    tensors, _ = read_safetensors_header(path)
    save_file({"b": torch.zeros(50), "a": torch.ones(7), "c": torch.ones(1)}, str(path))    # another header
    got = [(name, t.storage.byte_range().offset, t.storage.byte_range().length) for name, t in tensors.items()]
    assert got == expected and [length for *_, length in got] == [8, 12]


def test_the_model_follows_the_index_whether_or_not_it_lists_a_shards_keys_in_the_shards_order(
        tmp_path: Path) -> None:
    """A shard listed in its own order joins the model in one merge; one listed otherwise key by
    key: either way the model's keys are the index's, shard by shard, each with its own tensor."""
    folder = tmp_path / "shards"
    folder.mkdir()
    save_file({"a.0": torch.ones(1), "a.1": torch.ones(2)}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({"b.0": torch.ones(3), "b.1": torch.ones(4)}, str(folder / "model-00002-of-00002.safetensors"))
    weight_map = {"a.0": "model-00001-of-00002.safetensors", "a.1": "model-00001-of-00002.safetensors",
                  "b.1": "model-00002-of-00002.safetensors", "b.0": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    ckpt = open_checkpoint(folder)
    assert [(k, t.shape) for k, t in ckpt.model.items()] == [("a.0", (1,)), ("a.1", (2,)), ("b.1", (4,)),
                                                             ("b.0", (3,))]
    assert not ckpt.findings


def test_tensors_of_one_shape_share_one_shape_tuple(tmp_path: Path) -> None:
    """A shard of 10,000 tensors holds a few hundred shapes: one tuple each, not one per tensor."""
    path = tmp_path / "m.safetensors"
    save_file({**{f"w.{i}": torch.ones(2, 3) for i in range(5)}, "b": torch.ones(4)}, str(path))
    tensors, _ = read_safetensors_header(path)
    assert {k: t.shape for k, t in tensors.items()} == {**{f"w.{i}": (2, 3) for i in range(5)}, "b": (4,)}
    assert len({id(t.shape) for t in tensors.values()}) == 2
