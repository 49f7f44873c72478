"""ckptkit.storage.tensor_bytes: contiguous bytes of views, casts, chunk assembly, stream comparison."""
from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from ckptkit.core.dtypes import dtype_named
from ckptkit.core.errors import CorruptCheckpointError
from ckptkit.formats import open_checkpoint
from ckptkit.formats.safetensors_file import read_safetensors_header
from ckptkit.storage.tensor_bytes import AssembledStorage, DerivedStorage, same_bytes, tensor_chunks


def _refs(tmp_path: Path, tensors: dict[str, torch.Tensor]):
    save_file(tensors, tmp_path / "t.safetensors")
    return read_safetensors_header(tmp_path / "t.safetensors")[0]


def test_a_transposed_view_streams_as_its_contiguous_bytes(tmp_path: Path) -> None:
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"w_t": w.t(), "w": w}, tmp_path / "a.pt")
    ref = open_checkpoint(tmp_path / "a.pt").model["w_t"]
    assert not ref.is_contiguous()
    assert b"".join(tensor_chunks(ref)) == w.t().contiguous().numpy().tobytes()


def test_a_cast_in_small_chunks_equals_torchs_cast_of_the_whole(tmp_path: Path) -> None:
    x = torch.randn(1000)
    ref = _refs(tmp_path, {"x": x})["x"]
    got = b"".join(tensor_chunks(ref, dtype_named("bfloat16"), chunk_size=64))
    assert got == x.to(torch.bfloat16).view(torch.int16).numpy().tobytes()


def test_a_derived_storage_renames_and_casts_and_can_be_read_in_part(tmp_path: Path) -> None:
    x = torch.arange(10, dtype=torch.float64)
    ref = _refs(tmp_path, {"x": x})["x"]
    derived = DerivedStorage(ref.storage, "7", dtype_named("float32"))
    assert derived.key == "7" and derived.byte_range().length == 40
    assert bytes(derived.read_bytes(8, 12)) == x.float().numpy().tobytes()[8:20]


@pytest.mark.parametrize("split", ["rows", "columns"])
def test_chunks_are_assembled_into_the_whole_tensor(tmp_path: Path, split: str) -> None:
    whole = torch.arange(24, dtype=torch.int32).reshape(4, 6)
    if split == "rows":
        parts = {"a": whole[:1], "b": whole[1:]}
        offsets = {"a": (0, 0), "b": (1, 0)}
    else:
        parts = {"a": whole[:, :2].contiguous(), "b": whole[:, 2:].contiguous()}
        offsets = {"a": (0, 0), "b": (0, 2)}
    refs = _refs(tmp_path, parts)
    # given out of order on purpose: assembly sorts by offsets
    storage = AssembledStorage("w", dtype_named("int32"), (4, 6), tmp_path, [(offsets["b"], refs["b"]),
                                                                         (offsets["a"], refs["a"])])
    assert b"".join(storage.iter_chunks(8)) == whole.numpy().tobytes()


def test_chunks_that_do_not_cover_the_tensor_are_refused(tmp_path: Path) -> None:
    refs = _refs(tmp_path, {"a": torch.zeros(2, 3)})
    with pytest.raises(CorruptCheckpointError, match="its chunks hold 6 of 12 elements"):
        AssembledStorage("w", dtype_named("float32"), (4, 3), tmp_path, [((0, 0), refs["a"])])


def test_a_chunk_with_fewer_dimensions_than_its_tensor_is_refused(tmp_path: Path) -> None:
    refs = _refs(tmp_path, {"a": torch.zeros(12)})
    with pytest.raises(CorruptCheckpointError, match=r"'w' has 2 dimensions but a chunk at offsets \[0\] has 1"):
        AssembledStorage("w", dtype_named("float32"), (4, 3), tmp_path, [((0,), refs["a"])])


@given(data=st.binary(max_size=200), cuts_a=st.lists(st.integers(0, 200)), cuts_b=st.lists(st.integers(0, 200)),
       flip=st.one_of(st.none(), st.integers(0, 199)))
def test_same_bytes_ignores_chunk_boundaries_and_sees_any_flipped_byte(
        data: bytes, cuts_a: list[int], cuts_b: list[int], flip: int | None) -> None:
    def chunked(raw: bytes, cuts: list[int]) -> list[bytes]:
        edges = [0, *sorted(c for c in cuts if c < len(raw)), len(raw)]
        return [raw[lo:hi] for lo, hi in pairwise(edges)]

    other = data
    if flip is not None and flip < len(data):
        other = data[:flip] + bytes([data[flip] ^ 1]) + data[flip + 1:]
    assert same_bytes(chunked(data, cuts_a), chunked(other, cuts_b)) == (data == other)
    assert same_bytes([data], [data, b"x"]) is False
